//! Masking what looks like a secret in the one line of a tool's input a notification
//! shows. A command line often carries one (`curl -H "Authorization: Bearer …"`,
//! `mysql --password=…`, `GITHUB_TOKEN=… gh …`), and notifications leave the server
//! for a push service, an ntfy server or a webhook. This is a best effort over the
//! shapes secrets usually take; the whole input is only ever shown on the session's
//! page, to the signed-in owner.
//!
//! One forward scan over whitespace-separated words; no pattern can backtrack.

/// What replaces a secret.
pub(crate) const MASK: &str = "***";

/// Flags whose next word is a secret (`--token X`).
const SECRET_FLAGS: [&str; 12] = [
    "--token",
    "--password",
    "--passwd",
    "--pass",
    "--secret",
    "--api-key",
    "--apikey",
    "--auth",
    "--auth-token",
    "--access-token",
    "--client-secret",
    "--private-key",
];

/// Words in a `key=value` (or `--key=value`, `KEY=value`) key that make the value a
/// secret.
const SECRET_KEYS: [&str; 8] = [
    "password",
    "passwd",
    "token",
    "secret",
    "apikey",
    "api_key",
    "api-key",
    "credential",
];

/// Prefixes of well-known credential formats.
const SECRET_PREFIXES: [&str; 14] = [
    "sk-",
    "sk_live_",
    "rk_live_",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "akia",
    "sbk_",
    "whsec_",
];

/// `text` with what looks like a secret replaced by [`MASK`], and whether anything was.
pub(crate) fn redact(text: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut masked = false;
    // How many of the next words are secrets (after `--token`, `Authorization:`…).
    let mut hide_next = 0u8;
    let mut rest = text;
    while !rest.is_empty() {
        let space = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..space]);
        rest = &rest[space..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        if word.is_empty() {
            continue;
        }
        let (open, bare, close) = unquote(word);
        let lower = bare.to_ascii_lowercase();
        if hide_next > 0 {
            hide_next -= 1;
            // `Authorization: Bearer X` hides the scheme's credential, not the scheme.
            if matches!(lower.as_str(), "bearer" | "basic" | "token" | "digest") {
                out.push_str(word);
                hide_next = 1;
                continue;
            }
            out.push_str(open);
            out.push_str(MASK);
            out.push_str(close);
            masked = true;
            continue;
        }
        if SECRET_FLAGS.contains(&lower.as_str()) {
            out.push_str(word);
            hide_next = 1;
            continue;
        }
        if lower.ends_with("authorization:")
            || lower == "bearer"
            || lower.ends_with("x-api-key:")
            || lower.ends_with("cookie:")
        {
            out.push_str(word);
            hide_next = 1;
            continue;
        }
        // `key=secret` assignments, and a password in a URL (both, in one word).
        let assigned = assignments(bare);
        let hidden = userinfo(assigned.as_deref().unwrap_or(bare)).or(assigned);
        if let Some(hidden) = hidden {
            out.push_str(open);
            out.push_str(&hidden);
            out.push_str(close);
            masked = true;
            continue;
        }
        if SECRET_PREFIXES.iter().any(|p| lower.starts_with(p)) && bare.len() >= 12 {
            out.push_str(open);
            out.push_str(MASK);
            out.push_str(close);
            masked = true;
            continue;
        }
        out.push_str(word);
    }
    (out, masked)
}

/// A word without the quotes around it: `(opening, inside, closing)`.
fn unquote(word: &str) -> (&str, &str, &str) {
    let open = word.len() - word.trim_start_matches(['"', '\'', '`']).len();
    let inner = &word[open..];
    let close = inner.len() - inner.trim_end_matches(['"', '\'', '`', ';', ',']).len();
    (
        &word[..open],
        &inner[..inner.len() - close],
        &inner[inner.len() - close..],
    )
}

/// A word of `key=value` assignments (`TOKEN=x`, `--password=x`, a URL's
/// `?access_token=x&…`) with the values of secret-named keys masked; `None` when none is.
fn assignments(word: &str) -> Option<String> {
    if !word.contains('=') {
        return None;
    }
    let mut out = String::with_capacity(word.len());
    let mut changed = false;
    for (i, part) in word.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if let Some((key, value)) = part.split_once('=') {
            let name = key.rsplit(['?', '/', ':']).next().unwrap_or(key);
            let name = name.to_ascii_lowercase();
            if !value.is_empty() && SECRET_KEYS.iter().any(|k| name.contains(k)) {
                out.push_str(key);
                out.push('=');
                out.push_str(MASK);
                changed = true;
                continue;
            }
        }
        out.push_str(part);
    }
    changed.then_some(out)
}

/// A URL with a password in it (`https://user:pass@host/…`), with the password masked.
fn userinfo(word: &str) -> Option<String> {
    let (scheme, rest) = word.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let (user, password) = rest[..at].split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{user}:{MASK}{}", &rest[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_command_lines_are_masked() {
        for (input, expected) in [
            (
                "curl -H 'Authorization: Bearer abc.def.ghi' https://api.example.com",
                "curl -H 'Authorization: Bearer ***' https://api.example.com",
            ),
            (
                "gh auth login --token ghp_0123456789abcdef",
                "gh auth login --token ***",
            ),
            ("mysql --password=hunter2 db", "mysql --password=*** db"),
            (
                "GITHUB_TOKEN=abc123 gh release create",
                "GITHUB_TOKEN=*** gh release create",
            ),
            (
                "export OPENAI_API_KEY=sk-proj-aaaaaaaaaaaaaaaa",
                "export OPENAI_API_KEY=***",
            ),
            (
                "echo sk-ant-api03-aaaaaaaaaaaa > key.txt",
                "echo *** > key.txt",
            ),
            (
                "git clone https://bob:s3cret@git.example.com/x.git",
                "git clone https://bob:***@git.example.com/x.git",
            ),
            (
                "psql \"password=pw host=db\"",
                "psql \"password=*** host=db\"",
            ),
            (
                "curl https://api.example.com/v1?access_token=abc&page=2",
                "curl https://api.example.com/v1?access_token=***&page=2",
            ),
            (
                "curl https://u:pw@h.example?token=t",
                "curl https://u:***@h.example?token=***",
            ),
            (
                "curl -u x --header \"x-api-key: k-123\" u",
                "curl -u x --header \"x-api-key: ***\" u",
            ),
        ] {
            let (got, masked) = redact(input);
            assert_eq!(got, expected, "{input}");
            assert!(masked, "{input}");
        }
    }

    #[test]
    fn ordinary_commands_are_left_alone() {
        for input in [
            "cargo test -p switchboard-server --test it notify",
            "npm run build && git status",
            "ls -la /tmp  # two spaces",
            "grep -rn token src/",
            "sk-short",
            "git commit --author=bob -m 'PWD=/tmp'",
        ] {
            assert_eq!(redact(input), (input.to_owned(), false));
        }
    }
}
