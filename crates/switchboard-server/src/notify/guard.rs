//! Where notifications may go: only to public addresses, unless the operator allows
//! private ones (`ServerOptions::notify_allow_private`).
//!
//! Any API key holder sets the webhook, ntfy and push URLs, and the server then connects
//! to them (and `/v1/notify/test` says how that went): without this rule a key would be a
//! way to probe the server's own network (its loopback, a cloud metadata service, the
//! LAN). The rule is checked twice: when a URL is set (a clear 400), and at every
//! connection, after DNS resolution, by the resolver the notifications client uses, so
//! a name that resolves somewhere else later (DNS rebinding) is refused too, and the
//! client connects only to the addresses that were checked. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long a URL's name may take to resolve when it is set.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A target refused because it is not a public address. Says nothing about what is
/// there (no connection is ever attempted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0} is not a public address; notifications go only to public addresses unless the \
     server runs with --notify-allow-private"
)]
pub(crate) struct Refused(pub(crate) String);

/// Whether `ip` is an address on the public internet: not loopback, private,
/// link-local, shared (CGNAT), multicast, documentation, benchmarking or otherwise
/// reserved, in IPv4 or IPv6 (including IPv4 addresses carried in IPv6 ones).
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10, shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, IETF protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4, reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // 64:ff9b::/96 (NAT64) and ::/96 (IPv4-compatible) carry an IPv4 address.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) || s[..6] == [0; 6] {
        let [.., hi, lo] = s;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(v4);
    }
    // 2002::/16 (6to4) carries one in its second and third segments.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2]));
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7, unique local.
        || (s[0] & 0xfe00) == 0xfc00
        // fe80::/10, link-local; fec0::/10, the old site-local.
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // 2001:db8::/32, documentation.
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // 100::/64, discard-only.
        || (s[0] == 0x100 && s[1..4] == [0; 3]))
}

/// Whether a host name is one of the names that always mean this machine.
fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Checks a URL's host before it is stored: an address must be public, and so must
/// every address its name resolves to now. A name that does not resolve (yet) is
/// accepted; it is checked again at every connection.
pub(crate) async fn check_target(url: &url::Url) -> Result<(), Refused> {
    let port = url.port_or_known_default().unwrap_or(443);
    match url.host() {
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), url),
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), url),
        Some(url::Host::Domain(name)) => {
            if is_local_name(name) {
                return Err(Refused(format!("{name:?}")));
            }
            let resolved = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((name.to_owned(), port)),
            )
            .await;
            if let Ok(Ok(addrs)) = resolved {
                for addr in addrs {
                    if !is_public(addr.ip()) {
                        return Err(Refused(format!("{name:?}")));
                    }
                }
            }
            Ok(())
        }
        None => Err(Refused("a URL without a host".into())),
    }
}

/// Checks a URL whose host is an address literal (the resolver never sees those).
pub(crate) fn check_literal(url: &url::Url) -> Result<(), Refused> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), url),
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), url),
        Some(url::Host::Domain(name)) if is_local_name(name) => Err(Refused(format!("{name:?}"))),
        _ => Ok(()),
    }
}

fn check_ip(ip: IpAddr, url: &url::Url) -> Result<(), Refused> {
    if is_public(ip) {
        Ok(())
    } else {
        Err(Refused(url.host_str().unwrap_or_default().to_owned()))
    }
}

/// The resolver of the notifications client: the system's, keeping only public
/// addresses. A name with none left fails with [`Refused`], and the client connects only
/// to the addresses returned here, so what was checked is what is reached.
#[derive(Debug, Default)]
pub(crate) struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(resolve_public(host))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn resolve_public(host: String) -> Result<reqwest::dns::Addrs, BoxError> {
    if is_local_name(&host) {
        return Err(BoxError::from(Refused(format!("{host:?}"))));
    }
    let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
        .await?
        .filter(|a| is_public(a.ip()))
        .collect();
    if public.is_empty() {
        return Err(BoxError::from(Refused(format!("{host:?}"))));
    }
    Ok(Box::new(public.into_iter()))
}

/// The refusal somewhere in an error's chain of causes, if that is why it failed.
pub(crate) fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        // An `io::Error` wrapping another error reports that one's source, not itself.
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Refused>())
        {
            return Some(r);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[tokio::test]
    async fn local_names_and_private_literals_are_refused_when_set() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost:8080/x",
            "http://api.localhost/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://10.0.0.1/x",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert!(check_target(&parsed).await.is_err(), "{url} accepted");
            assert!(check_literal(&parsed).is_err(), "{url} accepted");
        }
        let public = url::Url::parse("https://93.184.216.34/hook").unwrap();
        assert_eq!(check_target(&public).await, Ok(()));
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicOnly.resolve(name).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e,
        };
        assert!(refusal(&*err).is_some(), "{err}");
    }
}
