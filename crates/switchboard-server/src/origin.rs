//! Where a request came from: the client's address, whether the client spoke https, and
//! the host it addressed. One place decides it, from the connection and, only when the
//! TCP peer is a trusted reverse proxy, from `Forwarded` / `X-Forwarded-*`.
//!
//! The accept loop computes a [`RequestOrigin`] for every request and runs the request
//! inside [`RequestOrigin::scope`], so [`current`] answers anywhere in the handler's
//! future (the cookie's `Secure` flag, the URLs `AppState::public_url` builds) without
//! threading it through every call.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};
use ipnet::IpNet;

/// The origin of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestOrigin {
    /// The client's address: the TCP peer's, or the one a trusted proxy forwarded.
    pub(crate) client: SocketAddr,
    /// True when the client reached us over TLS (ours, or a trusted proxy's).
    pub(crate) https: bool,
    /// `host[:port]` the client addressed, as a trusted proxy reports it.
    pub(crate) forwarded_host: Option<String>,
}

tokio::task_local! {
    static ORIGIN: RequestOrigin;
}

/// The origin of the request being handled, when there is one (not in background tasks
/// or tests that call the router without a socket).
pub(crate) fn current() -> Option<RequestOrigin> {
    ORIGIN.try_with(Clone::clone).ok()
}

/// Normalizes IPv4-mapped IPv6 addresses so `::ffff:10.0.0.1` matches `10.0.0.0/8`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// True when `ip` is in one of the trusted ranges.
pub(crate) fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// Parses a `--trusted-proxy` value: a CIDR range or a single address.
pub fn parse_trusted_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a CIDR range like 10.0.0.0/8"))
}

impl RequestOrigin {
    /// The origin of a request that arrived from `peer` (over TLS when `tls`).
    pub(crate) fn of(peer: SocketAddr, tls: bool, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        let direct = Self {
            client: peer,
            https: tls,
            forwarded_host: None,
        };
        if !is_trusted(peer.ip(), trusted) {
            return direct;
        }
        let forwarded = forwarded(headers, trusted);
        let hops = x_forwarded_for(headers);
        let client_ip = forwarded
            .as_ref()
            .and_then(|f| f.client)
            .or_else(|| client_of(&hops, trusted));
        let proto = forwarded
            .as_ref()
            .and_then(|f| f.proto.clone())
            .or_else(|| last_value(headers, "x-forwarded-proto"));
        let host = forwarded
            .as_ref()
            .and_then(|f| f.host.clone())
            .or_else(|| last_value(headers, "x-forwarded-host"))
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .filter(|h| is_host(h));
        Self {
            client: client_ip.map_or(peer, |ip| SocketAddr::new(ip, 0)),
            https: match proto {
                Some(p) => p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("wss"),
                None => tls,
            },
            forwarded_host: host,
        }
    }

    /// Runs `f` with this origin as [`current`].
    pub(crate) async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        ORIGIN.scope(self, f).await
    }
}

/// `host[:port]` with nothing a URL could be bent by.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

/// The last (the nearest proxy's) value of a comma-separated header: a client can
/// only write values before the ones its proxies add.
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let v = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = v.rsplit(',').next()?.trim();
    (!last.is_empty()).then(|| last.to_owned())
}

/// Every address in `X-Forwarded-For`, in order (client first, nearest proxy last).
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// The client among forwarded hops: walking from the nearest hop outwards, the first
/// address that is not itself a trusted proxy (anything further left was written by
/// someone we cannot vouch for). All trusted: the leftmost.
fn client_of(hops: &[Option<IpAddr>], trusted: &[IpNet]) -> Option<IpAddr> {
    let mut client = None;
    for hop in hops.iter().rev() {
        let ip = (*hop)?;
        client = Some(ip);
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// Where [`client_of`] stops: the index of the client's hop, if the walk gets there.
fn client_index(hops: &[Option<IpAddr>], trusted: &[IpNet]) -> Option<usize> {
    let mut at = None;
    for (i, hop) in hops.iter().enumerate().rev() {
        let ip = (*hop)?;
        at = Some(i);
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    at
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:5678`,
/// `"[::1]:5678"`; `unknown` and obfuscated names are `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// What an RFC 7239 `Forwarded` header says about the client.
#[derive(Debug, Default)]
struct Forwarded {
    client: Option<IpAddr>,
    proto: Option<String>,
    host: Option<String>,
}

/// Reads `Forwarded`: the element of the client (the same walk as [`client_of`]) gives
/// its address, `proto` and `host`.
fn forwarded(headers: &HeaderMap, trusted: &[IpNet]) -> Option<Forwarded> {
    let mut elements: Vec<Vec<(String, String)>> = Vec::new();
    for value in headers.get_all(header::FORWARDED) {
        let value = value.to_str().ok()?;
        for element in value.split(',') {
            let pairs = element
                .split(';')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((
                        k.trim().to_ascii_lowercase(),
                        v.trim().trim_matches('"').to_owned(),
                    ))
                })
                .collect();
            elements.push(pairs);
        }
    }
    if elements.is_empty() {
        return None;
    }
    let get = |e: &Vec<(String, String)>, key: &str| {
        e.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let hops: Vec<Option<IpAddr>> = elements
        .iter()
        .map(|e| get(e, "for").and_then(|v| parse_node(&v)))
        .collect();
    // The client's element is the one the first trusted proxy wrote: its proto and host
    // are what the client asked for. Elements before it are the client's own writing.
    let at = client_index(&hops, trusted);
    let element = at.and_then(|i| elements.get(i));
    Some(Forwarded {
        client: client_of(&hops, trusted),
        proto: element.and_then(|e| get(e, "proto")),
        host: element.and_then(|e| get(e, "host")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| parse_trusted_proxy(s).unwrap())
            .collect()
    }

    const PROXY: &str = "10.0.0.2:40000";

    #[test]
    fn an_untrusted_peer_is_taken_at_its_word_only_for_its_own_address() {
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let o = RequestOrigin::of(
            PROXY.parse().unwrap(),
            false,
            &h,
            &nets(&["192.168.0.0/16"]),
        );
        assert_eq!(o.client, PROXY.parse().unwrap());
        assert!(!o.https);
        assert_eq!(o.forwarded_host, None);
    }

    #[test]
    fn a_trusted_proxy_names_the_client_its_scheme_and_host() {
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.1"),
            ("x-forwarded-host", "relay.example:8443"),
        ]);
        let o = RequestOrigin::of(PROXY.parse().unwrap(), false, &h, &nets(&["10.0.0.0/8"]));
        // 10.0.0.1 is a trusted hop; 203.0.113.9 is the first address nobody trusted
        // wrote, and 198.51.100.7 may be a lie of the client's.
        assert_eq!(o.client.ip(), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert!(o.https);
        assert_eq!(o.forwarded_host.as_deref(), Some("relay.example:8443"));
    }

    #[test]
    fn what_a_client_writes_before_its_proxys_values_is_not_believed() {
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.1;proto=http;host=evil.example, for=198.51.100.7;proto=https;host=relay.example",
            ),
            ("x-forwarded-host", "evil.example, relay.example"),
        ]);
        let o = RequestOrigin::of(PROXY.parse().unwrap(), false, &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(o.client.ip(), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert!(o.https);
        assert_eq!(o.forwarded_host.as_deref(), Some("relay.example"));

        let h = headers(&[("x-forwarded-host", "evil.example, relay.example")]);
        let o = RequestOrigin::of(PROXY.parse().unwrap(), false, &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(o.forwarded_host.as_deref(), Some("relay.example"));
    }

    #[test]
    fn forwarded_wins_and_ipv6_and_mapped_addresses_parse() {
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::5]:4711\";proto=https;host=relay.example, for=10.1.1.1",
            ),
            ("x-forwarded-proto", "http"),
        ]);
        let peer: SocketAddr = "[::ffff:10.0.0.2]:5000".parse().unwrap();
        let o = RequestOrigin::of(peer, false, &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(o.client.ip(), "2001:db8::5".parse::<IpAddr>().unwrap());
        assert!(o.https);
        assert_eq!(o.forwarded_host.as_deref(), Some("relay.example"));
    }

    #[test]
    fn a_host_that_could_bend_a_url_is_dropped_and_tls_stands_without_a_proto() {
        let h = headers(&[("x-forwarded-host", "a.example/evil?x=")]);
        let o = RequestOrigin::of(PROXY.parse().unwrap(), true, &h, &nets(&["10.0.0.2"]));
        assert_eq!(o.forwarded_host, None);
        assert!(o.https);
        assert!(parse_trusted_proxy("nonsense").is_err());
    }
}
