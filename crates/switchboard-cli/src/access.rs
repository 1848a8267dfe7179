//! `switchboard devices|policy|audit|share`: who may do what (issue 16), managed directly in
//! the store, at the server (the server need not run; a running one closes a revoked
//! device's connections within seconds). The same operations are on the API for an
//! `admin` credential (`/v1/devices`, `/v1/policy*`, `/v1/audit`,
//! `/v1/sessions/{id}/shares`).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use switchboard_server::admin::{self, Actor, NewRule, SettingsUpdate};
use switchboard_store::{ArcStore, AuditQuery};

use crate::StoreArgs;

/// The owner a command acts for, and where the store is.
#[derive(Debug, Clone, Args)]
pub(crate) struct OwnerArgs {
    /// The owner whose devices, rules or log these are.
    #[arg(long, default_value = "default")]
    owner: String,
    #[command(flatten)]
    store: StoreArgs,
}

impl OwnerArgs {
    async fn open(&self) -> anyhow::Result<(ArcStore, String)> {
        let store = crate::token::open(&self.store).await?;
        let owner = store
            .ensure_owner(&self.owner, crate::serve::now_ms_pub())
            .await
            .context("failed to find the owner")?;
        Ok((store, owner.id))
    }
}

/// Subcommands of `switchboard devices`.
#[derive(Debug, Subcommand)]
pub(crate) enum DevicesCommand {
    /// List the owner's API keys and signed-in browsers, with their role and last use.
    List {
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Rename a key or browser.
    Rename {
        /// Its id (from `devices list`).
        id: String,
        /// The new name.
        name: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Change what a key or browser may do (viewer, approver, driver, admin).
    Role {
        /// Its id (from `devices list`).
        id: String,
        /// The new role.
        #[arg(value_parser = crate::token::parse_role)]
        role: switchboard_store::Role,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Revoke a key or browser: its requests get 401 at once and a running server
    /// closes its connections within seconds; the others are left alone.
    Revoke {
        /// Its id (from `devices list`).
        id: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

pub(crate) async fn devices(cmd: DevicesCommand) -> anyhow::Result<()> {
    let now = crate::serve::now_ms_pub();
    match cmd {
        DevicesCommand::List { owner } => {
            let (store, owner_id) = owner.open().await?;
            println!("ID\tKIND\tROLE\tNAME\tLAST USED\tADDRESS");
            for d in admin::devices(store.as_ref(), &owner_id, now).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    d.id,
                    d.kind,
                    d.role,
                    d.name,
                    d.last_used_at.as_deref().unwrap_or("never"),
                    d.last_address.as_deref().unwrap_or("-"),
                );
            }
        }
        DevicesCommand::Rename { id, name, owner } => {
            let (store, owner_id) = owner.open().await?;
            admin::rename(store.as_ref(), &owner_id, &id, &name, &Actor::cli(), now).await?;
            println!("Renamed {id} to {name:?}");
        }
        DevicesCommand::Role { id, role, owner } => {
            let (store, owner_id) = owner.open().await?;
            admin::set_role(store.as_ref(), &owner_id, &id, role, &Actor::cli(), now).await?;
            println!("{id} is now {}", role.as_str());
        }
        DevicesCommand::Revoke { id, owner } => {
            let (store, owner_id) = owner.open().await?;
            admin::revoke(store.as_ref(), &owner_id, &id, &Actor::cli(), now).await?;
            println!("Revoked {id}");
        }
    }
    Ok(())
}

/// Subcommands of `switchboard policy`.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Add a rule: the first rule that matches a permission request answers it.
    Add {
        /// The tool (`Bash`, `Read`, `Edit`, `WebFetch`…; `*` for any).
        tool: String,
        /// allow, deny or ask.
        decision: String,
        /// A command prefix (Bash), a path glob (file tools: `*`, `**`, `?`) or a domain
        /// (WebFetch).
        #[arg(long)]
        pattern: Option<String>,
        /// Only for this session.
        #[arg(long)]
        session: Option<String>,
        /// Only for sessions on this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Put it before every other rule (else after them).
        #[arg(long)]
        first: bool,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// List the rules in order, the default and the timeout.
    List {
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Remove a rule.
    Remove {
        /// Its id (`rule_…`, from `policy list`).
        id: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Set the answer when no rule matches (ask, as without rules, unless set) and how
    /// long a request waits for a person before it gets it (`deny` when it is `ask`).
    Default {
        /// allow, deny or ask.
        decision: String,
        /// Seconds; without it, a request waits for a person for ever.
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// Show what the rules (and, with TOOL and DECISION, a rule not yet added) would have
    /// answered to each of a session's past permission requests. Nothing is stored.
    Test {
        /// The session (`session_…` or `cse_…`).
        session: String,
        /// A rule to try first: its tool.
        tool: Option<String>,
        /// …and its decision.
        decision: Option<String>,
        /// …and its pattern.
        #[arg(long)]
        pattern: Option<String>,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

pub(crate) async fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    let now = crate::serve::now_ms_pub();
    match cmd {
        PolicyCommand::Add {
            tool,
            decision,
            pattern,
            session,
            environment,
            first,
            owner,
        } => {
            let (store, owner_id) = owner.open().await?;
            let rule = NewRule {
                tool,
                pattern,
                decision,
                environment_id: environment,
                session_id: session,
                first,
            };
            let added =
                admin::add_rule(store.as_ref(), &owner_id, &rule, &Actor::cli(), now).await?;
            println!("Added {}", added.id);
        }
        PolicyCommand::List { owner } => {
            let (store, owner_id) = owner.open().await?;
            let view = admin::policy_view(store.as_ref(), &owner_id).await?;
            println!("ID\tTOOL\tPATTERN\tDECISION\tSCOPE");
            for rule in view["rules"].as_array().into_iter().flatten() {
                let scope = rule["session_id"]
                    .as_str()
                    .or(rule["environment_id"].as_str())
                    .unwrap_or("all");
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    rule["id"].as_str().unwrap_or(""),
                    rule["tool"].as_str().unwrap_or(""),
                    rule["pattern"].as_str().unwrap_or("-"),
                    rule["decision"].as_str().unwrap_or(""),
                    scope
                );
            }
            let timeout = view["timeout_seconds"]
                .as_i64()
                .map_or("none".to_string(), |s| format!("{s} s"));
            println!(
                "default: {}; timeout: {timeout}",
                view["default"].as_str().unwrap_or("ask")
            );
        }
        PolicyCommand::Remove { id, owner } => {
            let (store, owner_id) = owner.open().await?;
            admin::remove_rule(store.as_ref(), &owner_id, &id, &Actor::cli(), now).await?;
            println!("Removed {id}");
        }
        PolicyCommand::Default {
            decision,
            timeout,
            owner,
        } => {
            let (store, owner_id) = owner.open().await?;
            let update = SettingsUpdate {
                default: decision,
                timeout_seconds: timeout,
            };
            admin::set_settings(store.as_ref(), &owner_id, &update, &Actor::cli(), now).await?;
            println!("Default set");
        }
        PolicyCommand::Test {
            session,
            tool,
            decision,
            pattern,
            owner,
        } => {
            let (store, owner_id) = owner.open().await?;
            let candidate = match (tool, decision) {
                (Some(tool), Some(decision)) => Some(NewRule {
                    tool,
                    pattern,
                    decision,
                    ..NewRule::default()
                }),
                (None, None) => None,
                _ => anyhow::bail!("a rule to try needs both a TOOL and a DECISION"),
            };
            let rows =
                admin::dry_run(store.as_ref(), &owner_id, &session, candidate.as_ref()).await?;
            println!("REQUEST\tTOOL\tWOULD\tRULE\tWAS\tINPUT");
            for row in rows {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    row.request_id,
                    row.tool,
                    row.would,
                    row.rule_id.as_deref().unwrap_or("default"),
                    row.was.as_deref().unwrap_or("-"),
                    row.input
                );
            }
        }
    }
    Ok(())
}

/// Flags of `switchboard audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only this session's entries.
    #[arg(long)]
    session: Option<String>,
    /// Only entries since then: an RFC 3339 time or an age (`15m`, `2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Print JSON lines instead of columns.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    owner: OwnerArgs,
}

pub(crate) async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let now = crate::serve::now_ms_pub();
    let (store, owner_id) = args.owner.open().await?;
    let since = args
        .since
        .as_deref()
        .map(|raw| admin::parse_since(raw, now))
        .transpose()?;
    let entries = admin::audit_page(
        store.as_ref(),
        &owner_id,
        AuditQuery {
            session_id: args.session,
            since,
            before_id: None,
            limit: args.limit,
        },
    )
    .await?;
    for e in entries {
        if args.json {
            println!("{}", serde_json::to_string(&e)?);
            continue;
        }
        let who = e
            .credential_name
            .clone()
            .or(e.credential_id.clone())
            .or_else(|| e.detail["by"].as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into());
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            e.at,
            e.action,
            who,
            e.address.as_deref().unwrap_or("-"),
            e.session_id.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    Ok(())
}

/// Subcommands of `switchboard share`.
#[derive(Debug, Subcommand)]
pub(crate) enum ShareCommand {
    /// Share one of the owner's sessions with another owner at a role (viewer,
    /// approver, driver, admin), or change the role; their keys and browsers reach it
    /// with at most that role.
    Add {
        /// The session (`session_…` or `cse_…`).
        session: String,
        /// The other owner's name (as in `token create --owner NAME`).
        with: String,
        /// The most they may do with it.
        #[arg(long, value_parser = crate::token::parse_role)]
        role: switchboard_store::Role,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// List the owners a session is shared with.
    List {
        /// The session.
        session: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// End a share: a running server closes that owner's connections to the session
    /// within seconds.
    Remove {
        /// The session.
        session: String,
        /// The other owner's name.
        with: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

pub(crate) async fn share(cmd: ShareCommand) -> anyhow::Result<()> {
    let now = crate::serve::now_ms_pub();
    match cmd {
        ShareCommand::Add {
            session,
            with,
            role,
            owner,
        } => {
            let (store, owner_id) = owner.open().await?;
            let share = admin::share(
                store.as_ref(),
                &owner_id,
                &session,
                &with,
                role,
                &Actor::cli(),
                now,
            )
            .await?;
            println!(
                "Shared {session} with {} as {}",
                share.owner_name,
                share.role.as_str()
            );
        }
        ShareCommand::List { session, owner } => {
            let (store, owner_id) = owner.open().await?;
            println!("OWNER\tROLE\tSHARED AT");
            for s in admin::shares(store.as_ref(), &owner_id, &session).await? {
                println!("{}\t{}\t{}", s.owner, s.role, s.shared_at);
            }
        }
        ShareCommand::Remove {
            session,
            with,
            owner,
        } => {
            let (store, owner_id) = owner.open().await?;
            admin::unshare(
                store.as_ref(),
                &owner_id,
                &session,
                &with,
                &Actor::cli(),
                now,
            )
            .await?;
            println!("{session} is no longer shared with {with}");
        }
    }
    Ok(())
}
