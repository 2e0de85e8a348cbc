//! Source IP allowlists: CIDR blocks (IPv4 or IPv6); an empty list allows every address.

use std::net::IpAddr;

/// One CIDR block, e.g. `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        let cidr = Self { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "{text:?} has host bits set; the block is {}/{prefix}",
                cidr.masked(network)
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        addr.is_ipv4() == self.network.is_ipv4() && self.masked(addr) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Whether `addr` may call a source with `allowlist` (empty: anyone).
pub fn allowed(allowlist: &[Cidr], addr: IpAddr) -> bool {
    allowlist.is_empty() || allowlist.iter().any(|c| c.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_contain_their_addresses_only() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(allowed(&[], "8.8.8.8".parse().unwrap()));
        assert!(!allowed(&[one], "8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn malformed_blocks_are_refused_with_a_reason() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "not-an-ip",
            "10.0.0.0/x",
            "::/129",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }
}
