//! `switchboard pair`: a single-use link (and QR code) that signs a phone's browser in to
//! the web UI without typing a key.

use std::io::IsTerminal as _;

use clap::Args;

use crate::remote::RemoteArgs;

/// Flags of `switchboard pair`.
#[derive(Debug, Args)]
pub(crate) struct PairArgs {
    /// Open this session once signed in (its id, either costume).
    #[arg(long, value_name = "SESSION")]
    session: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(crate) async fn run(args: PairArgs) -> anyhow::Result<()> {
    let client = args.remote.sessions_client()?;
    let next = match &args.session {
        Some(id) => match switchboard_proto::SessionId::parse(id) {
            Some(id) => Some(format!("/s/{}", id.compat())),
            None => anyhow::bail!("{id:?} is not a session id (session_… or cse_…)"),
        },
        None => None,
    };
    let link = client
        .create_pairing(next.as_deref())
        .await
        .map_err(|e| args.remote.explain(e, "a pairing link"))?;
    if std::io::stdout().is_terminal() {
        if let Some(code) = crate::bridge::display::qr(&link) {
            println!("{code}");
        }
        println!("Open this link (or scan the code) on the device to sign in; it works once, for 10 minutes:");
    }
    println!("{link}");
    Ok(())
}
