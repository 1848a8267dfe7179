//! A session's log, for everyone: the one path in ([`append`]) and the one way out
//! ([`follow`]).
//!
//! Every message of a session, whichever way it travels, is appended here: vetted
//! (permission answers), stored (the store gives it its sequence number), then
//! published on the session's channel in sequence order. Every reader (viewer socket,
//! v1 worker socket, v2 worker event stream) is a [`Follower`]: backlog from the store,
//! then the live channel, with lag recovery, the worker's delivery cursor and batching.
//! The transports only encode batches into frames; they never see the store.

mod append;
mod follow;
mod hub;

pub(crate) mod cluster;
pub(crate) use append::{append, Accepted, Incoming, Status, Vetting};
pub(crate) use follow::{follow, Audience, Batch, End, Follower};
pub(crate) use hub::{with_sequence, Hub};

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The transports and handlers (`http/`, `ws/`, `sse.rs`) never touch the store or
    /// the hub: every read of a session's log goes through a `Follower`, every write
    /// through `append`, everything else through an `AppState` method.
    #[test]
    fn transports_and_handlers_never_name_the_store_or_the_hub() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("sse.rs")];
        for dir in ["http", "ws"] {
            for entry in std::fs::read_dir(src.join(dir)).expect("source directory") {
                let path = entry.expect("directory entry").path();
                if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 5, "found only {files:?}");
        let forbidden = [
            ".store()",
            "_store()",
            "dyn Store",
            "switchboard_store::Store",
            ".hub()",
            "EventQuery",
            "crate::log::hub",
        ];
        let mut found = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("source file");
            for (n, line) in text.lines().enumerate() {
                for word in forbidden {
                    if line.contains(word) {
                        found.push(format!("{}:{}: {word}", file.display(), n + 1));
                    }
                }
            }
        }
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}
