//! `switchboard token`: API keys, made directly in the store (the server need not run).

use anyhow::Context as _;
use clap::Subcommand;

use crate::StoreArgs;

/// Subcommands of `switchboard token`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an API key and print it (only this once).
    Create {
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// The owner the key acts as; owners never see each other's sessions.
        #[arg(long, default_value = "default")]
        owner: String,
        /// What the key may do: viewer (reads sessions), approver (also answers
        /// permission requests and interrupts), driver (also sends prompts, changes model
        /// and mode, creates and archives sessions) or admin (also manages keys, devices
        /// and policy).
        #[arg(long, default_value = "admin", value_parser = parse_role)]
        role: switchboard_store::Role,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List API keys (ids and labels; keys themselves are never stored).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an API key, by id or by name: requests with it get 401 at once, and a
    /// running server closes the connections opened with it within seconds.
    Revoke {
        /// The key's id (from `token list`) or its name.
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start signing worker tokens with a new key (running servers pick it up within a
    /// minute).
    RotateSigningKey {
        /// Also stop accepting tokens signed by older keys (their workers must fetch new
        /// credentials); by default they stay valid until they expire.
        #[arg(long)]
        retire_previous: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub(crate) async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            owner,
            role,
            store,
        } => {
            if name.trim().is_empty() {
                anyhow::bail!("--name must not be empty");
            }
            let store = open(&store).await?;
            let now = crate::serve::now_ms_pub();
            let owner_row = store
                .ensure_owner(&owner, now)
                .await
                .context("failed to find the owner")?;
            let (key, _) = switchboard_server::admin::create_key(
                store.as_ref(),
                &owner_row.id,
                &name,
                role,
                &switchboard_server::admin::Actor::cli(),
                now,
            )
            .await
            .context("failed to store the new key")?;
            eprintln!(
                "Created API key {name:?} ({}) for owner {owner:?}. It is shown only this once:",
                role.as_str()
            );
            println!("{key}");
        }
        TokenCommand::RotateSigningKey {
            retire_previous,
            store,
        } => {
            let store = open(&store).await?;
            let key = switchboard_server::jwt::rotate(
                store.as_ref(),
                retire_previous,
                crate::serve::now_ms_pub(),
            )
            .await
            .context("failed to store the new signing key")?;
            let retired = if retire_previous {
                "; older keys are retired"
            } else {
                ""
            };
            println!("New signing key {}{retired}", key.id);
        }
        TokenCommand::Revoke { key, store } => {
            let store = open(&store).await?;
            let keys = store.api_keys().await?;
            let by_id: Vec<_> = keys.iter().filter(|k| k.id == key).collect();
            let matches = if by_id.is_empty() {
                keys.iter()
                    .filter(|k| k.name == key && k.revoked_at.is_none())
                    .collect()
            } else {
                by_id
            };
            let found = match matches.as_slice() {
                [] => anyhow::bail!(
                    "no API key with the id or name {key:?} (see `switchboard token list`)"
                ),
                [one] => *one,
                several => anyhow::bail!(
                    "{} API keys are named {key:?}; revoke one by its id: {}",
                    several.len(),
                    several
                        .iter()
                        .map(|k| k.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            if store
                .consume_credential(&found.id, crate::serve::now_ms_pub())
                .await
                .context("failed to revoke the key")?
            {
                switchboard_server::admin::record(
                    store.as_ref(),
                    &found.owner_id,
                    &switchboard_server::admin::Actor::cli(),
                    "key.revoke",
                    None,
                    serde_json::json!({"credential": found.id, "name": found.name,
                                       "kind": "api_key"}),
                    crate::serve::now_ms_pub(),
                )
                .await;
                println!("Revoked API key {} ({:?})", found.id, found.name);
            } else {
                println!(
                    "API key {} ({:?}) was already revoked",
                    found.id, found.name
                );
            }
        }
        TokenCommand::List { store } => {
            let store = open(&store).await?;
            for key in store.api_keys().await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{}\t{}\t{}", key.id, key.name, key.role.as_str(), state);
            }
        }
    }
    Ok(())
}

/// Parses a role named on the command line.
pub(crate) fn parse_role(raw: &str) -> Result<switchboard_store::Role, String> {
    switchboard_store::Role::parse(raw.trim())
        .ok_or_else(|| format!("unknown role {raw:?}: expected viewer, approver, driver or admin"))
}

pub(crate) async fn open(args: &StoreArgs) -> anyhow::Result<switchboard_store::ArcStore> {
    let url = args.database_url()?;
    switchboard_store::open(&url).await.with_context(|| {
        format!(
            "failed to open the store at {}",
            switchboard_store::redact_url(&url)
        )
    })
}
