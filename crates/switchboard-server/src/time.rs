//! Wall-clock helpers: the store keeps milliseconds, the wire wants ISO 8601.

use switchboard_store::Millis;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> Millis {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as Millis
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC.
pub(crate) fn iso(ms: Millis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
