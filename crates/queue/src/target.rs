//! Which delivery targets are allowed: the SSRF rules. A webhook URL must not reach loopback,
//! private (RFC 1918), CGNAT, link-local (including cloud metadata at 169.254.169.254),
//! multicast, unspecified, documentation or IPv6 ULA / link-local addresses, nor IPv4 addresses
//! wrapped in IPv6, unless HOOKRELAY_ALLOW_PRIVATE_TARGETS is set. Checked when a webhook is
//! saved and again, on the resolved address, before each attempt (DNS may change in between).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why an address may not be a delivery target, or `None` when it may.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4).or(Some("an IPv4-mapped IPv6 address"));
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("a unique local (private) IPv6 address")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64 well-known prefix: the embedded IPv4 address decides.
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                forbidden_v4(v4)
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("documentation")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private (RFC 1918)")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT (RFC 6598)")
    } else if ip.is_multicast() || a >= 240 || ip.is_broadcast() {
        Some("multicast or reserved")
    } else if a == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113)
    {
        Some("documentation")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking (RFC 2544)")
    } else if (a, b, c) == (192, 0, 0) {
        Some("IETF protocol assignments")
    } else {
        None
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("the host {host} does not resolve")]
    Unresolvable { host: String },
    #[error("the host {host} resolves to {ip}, which is {reason}; such targets are refused")]
    Forbidden {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
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
                    ip: addr.ip(),
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
