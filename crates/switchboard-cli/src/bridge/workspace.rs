//! Where a session's agent runs: git facts for the environment's registration, and the
//! per-session git worktrees of `--spawn worktree`.
//!
//! Worktrees live where Claude Code keeps its own, `<repo>/.claude/worktrees/<name>`,
//! named `bridge-<session>` on a branch `worktree-bridge-<session>`. When a session ends
//! its worktree is removed only if git agrees it is clean, and its branch only if it has
//! no commits of its own; otherwise both stay and the bridge says where.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::process::Command;

/// What the environment's registration says about the directory.
#[derive(Debug, Clone, Default)]
pub(crate) struct GitInfo {
    /// The current branch, if the directory is in a repository with one checked out.
    pub(crate) branch: Option<String>,
    /// The URL of the `origin` remote, if there is one.
    pub(crate) remote_url: Option<String>,
}

async fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run git")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!("git {} failed: {}", args.join(" "), stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl GitInfo {
    /// Reads the branch and remote of `dir`; nothing when it is not a repository.
    pub(crate) async fn read(dir: &Path) -> Self {
        let branch = git(dir, &["rev-parse", "--abbrev-ref", "HEAD"])
            .await
            .ok()
            .filter(|b| !b.is_empty() && b != "HEAD");
        let remote_url = git(dir, &["remote", "get-url", "origin"])
            .await
            .ok()
            .filter(|u| !u.is_empty());
        Self { branch, remote_url }
    }
}

/// The top directory of the repository `dir` is in.
pub(crate) fn git_toplevel(dir: &Path) -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .context("cannot run git")?;
    anyhow::ensure!(output.status.success(), "not a git repository");
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// A session's worktree.
#[derive(Debug, Clone)]
pub(crate) struct Worktree {
    /// The repository's top directory.
    toplevel: PathBuf,
    /// The worktree's directory.
    pub(crate) path: PathBuf,
    /// Its branch.
    branch: String,
}

/// What happened to a worktree when its session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cleanup {
    /// The worktree and its branch are gone.
    Removed,
    /// The worktree stays, because it has changes; the message says why.
    Kept(String),
}

impl Worktree {
    /// Creates (or reuses) the worktree of session `body` for the repository of `dir`,
    /// and returns it with the directory the agent starts in: the same place inside the
    /// worktree as `dir` is inside the repository.
    pub(crate) async fn create(dir: &Path, body: &str) -> anyhow::Result<(Self, PathBuf)> {
        let toplevel = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"]).await?);
        let name = format!("bridge-{body}");
        let path = toplevel.join(".claude").join("worktrees").join(&name);
        let branch = format!("worktree-{name}");
        if !path.exists() {
            let path_text = path.to_string_lossy().into_owned();
            let created = git(
                &toplevel,
                &["worktree", "add", "-b", &branch, &path_text, "HEAD"],
            )
            .await;
            if let Err(first) = created {
                // The branch may be left from an earlier run of the same session.
                git(&toplevel, &["worktree", "add", &path_text, &branch])
                    .await
                    .map_err(|_| first)
                    .context("could not create the session's git worktree")?;
            }
        }
        let relative = dir.strip_prefix(&toplevel).unwrap_or(Path::new(""));
        let cwd = path.join(relative);
        let cwd = if cwd.is_dir() { cwd } else { path.clone() };
        Ok((
            Self {
                toplevel,
                path,
                branch,
            },
            cwd,
        ))
    }

    /// Removes the worktree if it is clean, and its branch if it has nothing of its own.
    pub(crate) async fn remove(&self) -> Cleanup {
        let path_text = self.path.to_string_lossy().into_owned();
        if let Err(e) = git(&self.toplevel, &["worktree", "remove", &path_text]).await {
            return Cleanup::Kept(format!(
                "kept its worktree at {} ({}); remove it with `git worktree remove --force {}`",
                self.path.display(),
                first_line(&e.to_string()),
                self.path.display()
            ));
        }
        // `-d` refuses a branch with commits that HEAD does not have, which keeps the
        // session's work.
        if git(&self.toplevel, &["branch", "-d", &self.branch])
            .await
            .is_err()
        {
            return Cleanup::Kept(format!(
                "removed its worktree; its commits are on branch {}",
                self.branch
            ));
        }
        Cleanup::Removed
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
