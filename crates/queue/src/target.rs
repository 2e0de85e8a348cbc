//! Which delivery targets are allowed: the SSRF rules. A webhook URL must not reach loopback,
//! private (RFC 1918), CGNAT, link-local (including cloud metadata at 169.254.169.254),
//! multicast, unspecified, documentation or IPv6 ULA / link-local / site-local addresses, nor
//! IPv4 addresses wrapped in IPv6 (mapped, IPv4-compatible ::/96, NAT64, 6to4) nor Teredo,
//! unless HOOKRELAY_ALLOW_PRIVATE_TARGETS is set. Checked when a webhook is saved and again, on
//! the resolved address, before each attempt (DNS may change in between).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why an address may not be a delivery target, or `None` when it may. The reason names the
/// rule ("a loopback address"), never the address itself: messages built from it are shown to
/// whoever saved the URL, and must not tell them what an internal name resolves to.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v6(v6: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return forbidden_v4(v4).or(Some("an IPv4-mapped IPv6 address"));
    }
    let seg = v6.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if v6.is_loopback() {
        Some("a loopback address")
    } else if v6.is_unspecified() {
        Some("an unspecified address")
    } else if seg[..6] == [0; 6] {
        // IPv4-compatible (::a.b.c.d, deprecated by RFC 4291): some stacks still route it to the
        // embedded IPv4 address, so the whole ::/96 is refused, whatever that address is.
        Some("an IPv4-compatible IPv6 address (::/96)")
    } else if v6.is_multicast() {
        Some("a multicast address")
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some("a unique local (private) IPv6 address")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if seg[0] & 0xffc0 == 0xfec0 {
        Some("a site-local IPv6 address (fec0::/10)")
    } else if seg[0] == 0x64 && seg[1] == 0xff9b {
        // NAT64 well-known prefix: the embedded IPv4 address decides.
        forbidden_v4(embedded(seg[6], seg[7]))
    } else if seg[0] == 0x2002 {
        // 6to4 relays forward to the IPv4 address in bits 16..48.
        forbidden_v4(embedded(seg[1], seg[2]))
            .map(|_| "a 6to4 address (2002::/16) embedding a refused IPv4 address")
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        Some("a documentation address")
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo hides the client's IPv4 address (XOR-obfuscated) and reaches it through a
        // relay: there is no way to tell where it lands, so all of it is refused.
        Some("a Teredo address (2001::/32)")
    } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("a cloud metadata address")
    } else {
        None
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private (RFC 1918) address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT (RFC 6598) address")
    } else if ip.is_multicast() || a >= 240 || ip.is_broadcast() {
        Some("a multicast or reserved address")
    } else if a == 0 {
        Some("an unspecified address (0.0.0.0/8)")
    } else if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113)
    {
        Some("a documentation address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a benchmarking (RFC 2544) address")
    } else if (a, b, c) == (192, 0, 0) {
        Some("an IETF protocol assignments address")
    } else {
        None
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("the host {host} does not resolve")]
    Unresolvable { host: String },
    /// Deliberately without the address: the rule is enough to act on, and the address would
    /// tell a tenant what an internal name resolves to.
    #[error("refused: the host resolves to {reason}")]
    Forbidden { host: String, reason: &'static str },
}

/// Resolves `host:port` and checks every address; the addresses are returned so the connection
/// goes to exactly what was checked.
pub async fn resolve_allowed(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host_for_lookup.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        let lookup = tokio::net::lookup_host((host_for_lookup, port));
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => Vec::new(),
        }
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable {
            host: host.to_owned(),
        });
    }
    if !allow_private {
        for addr in &addrs {
            if let Some(reason) = forbidden_reason(addr.ip()) {
                return Err(TargetError::Forbidden {
                    host: host.to_owned(),
                    reason,
                });
            }
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "fd00:ec2::254",
        ] {
            assert!(
                forbidden_reason(ip.parse().unwrap()).is_some(),
                "{ip} must be refused"
            );
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_that_wrap_or_hide_an_ipv4_address_are_refused_by_rule() {
        for (ip, rule) in [
            // IPv4-compatible, whatever the embedded address (::/96, RFC 4291 deprecated).
            ("::7f00:1", "an IPv4-compatible IPv6 address (::/96)"),
            ("::127.0.0.1", "an IPv4-compatible IPv6 address (::/96)"),
            ("::a9fe:a9fe", "an IPv4-compatible IPv6 address (::/96)"),
            ("::808:808", "an IPv4-compatible IPv6 address (::/96)"),
            // 6to4 embedding loopback, RFC 1918 and the metadata address.
            (
                "2002:7f00:1::",
                "a 6to4 address (2002::/16) embedding a refused IPv4 address",
            ),
            (
                "2002:c0a8:101::1",
                "a 6to4 address (2002::/16) embedding a refused IPv4 address",
            ),
            (
                "2002:a9fe:a9fe:1:2:3:4:5",
                "a 6to4 address (2002::/16) embedding a refused IPv4 address",
            ),
            // Teredo, all of it: the client address is obfuscated.
            ("2001::1", "a Teredo address (2001::/32)"),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "a Teredo address (2001::/32)",
            ),
            ("fec0::1", "a site-local IPv6 address (fec0::/10)"),
            ("feff:ffff::1", "a site-local IPv6 address (fec0::/10)"),
        ] {
            assert_eq!(
                forbidden_reason(ip.parse().unwrap()),
                Some(rule),
                "{ip} must be refused as {rule}"
            );
        }
        // Neighbours of those ranges stay allowed: a 6to4 address of a public IPv4 address,
        // addresses just outside Teredo's /32 and site-local's /10, and a global address whose
        // low bits look like an IPv4 address.
        for ip in [
            "2002:808:808::1",
            "2001:1::1",
            "2001:4860:4860::8888",
            "fe7f::1",
            "2606:4700::7f00:1",
        ] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn refusals_name_the_rule_not_the_address() {
        let err = resolve_allowed("localhost", 80, false).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("refused: the host resolves to a loopback address"),
            "{text}"
        );
        assert!(
            !text.contains("127.0.0.1") && !text.contains("::1"),
            "{text}"
        );
        let err = resolve_allowed("[::7f00:1]", 443, false).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused: the host resolves to an IPv4-compatible IPv6 address (::/96)"
        );
    }

    #[tokio::test]
    async fn resolution_checks_every_address() {
        let err = resolve_allowed("localhost", 80, false).await.unwrap_err();
        assert!(matches!(err, TargetError::Forbidden { .. }), "{err}");
        assert!(resolve_allowed("localhost", 80, true).await.is_ok());
        assert!(matches!(
            resolve_allowed("[::1]", 80, false).await,
            Err(TargetError::Forbidden { .. })
        ));
        assert!(matches!(
            resolve_allowed("no-such-host.invalid", 80, false).await,
            Err(TargetError::Unresolvable { .. })
        ));
    }
}
