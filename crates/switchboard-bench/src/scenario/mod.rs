//! The scenarios, one module each; every one is bounded in count and in time.

pub(crate) mod dispatch;
pub(crate) mod fanout;
pub(crate) mod hop;
pub(crate) mod knee;
pub(crate) mod sessions;

/// A scenario, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scenario {
    /// Hop latency, one message at a time, both ways.
    Hop,
    /// One worker to K viewers.
    Fanout,
    /// S concurrent sessions at one event per second each (or one each way).
    Sessions,
    /// The highest offered event rate held, raised step by step (not in the default set).
    Knee,
    /// Session creation to the waiting poll's answer.
    Dispatch,
}
