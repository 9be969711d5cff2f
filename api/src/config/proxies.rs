//! `MOVIESTORE_TRUSTED_PROXIES`: the reverse proxies whose `X-Forwarded-For` is believed, and
//! the rule that attributes a request to its client through them.

use std::fmt;
use std::net::IpAddr;

use axum::http::HeaderMap;

/// A block of addresses, `ADDR/PREFIX` (a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `addr` lies in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, canonical(addr)) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                mask(u128::from(u32::from(addr)) << 96, self.prefix) == u128::from(u32::from(net)) << 96
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => mask(u128::from(addr), self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an address or ADDR/PREFIX"))?;
        let addr = canonical(addr);
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0..={bits}"))?,
        };
        let network = match addr {
            IpAddr::V4(v4) => {
                let masked = (mask(u128::from(u32::from(v4)) << 96, prefix) >> 96) as u32;
                IpAddr::V4(masked.into())
            }
            IpAddr::V6(v6) => IpAddr::V6(mask(u128::from(v6), prefix).into()),
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Keeps the top `prefix` bits of a 128-bit address (IPv4 shifted into the top 32).
pub(crate) fn mask(bits: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 one; any other address as it is.
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of CIDRs; empty means none.
    fn from_str(list: &str) -> Result<Self, String> {
        let blocks: Result<Vec<Cidr>, String> =
            list.split(',').filter(|part| !part.trim().is_empty()).map(str::parse).collect();
        blocks.map(Self)
    }
}

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs; empty means none.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.parse()
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(addr))
    }

    /// The address a request from `peer` with these headers is attributed to.
    pub fn attribute(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            // An entry that is not an address was not written by a proxy of ours: the last
            // address a trusted proxy vouched for is as far as the chain can be followed.
            let Ok(addr) = hop.parse::<IpAddr>().map(canonical) else { break };
            client = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_normalise_and_contain() {
        let block: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(block.to_string(), "10.0.0.0/8");
        assert!(block.contains(ip("10.255.0.1")) && !block.contains(ip("11.0.0.1")));
        assert!(block.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped counts as IPv4");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let one: Cidr = "192.0.2.1".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.1/32");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "2001:db8::/129", "nonsense", "10.0.0.0/x", "/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::default());
        assert_eq!(TrustedProxies::parse(" 10.0.0.0/8 , ::1 ").unwrap().0.len(), 2);
    }

    #[test]
    fn only_a_trusted_peer_is_believed_and_only_as_far_as_trusted_hops_go() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let spoof = forwarded(&["1.1.1.1"]);
        assert_eq!(trusted.attribute(ip("203.0.113.9"), &spoof), ip("203.0.113.9"), "an untrusted peer");
        let chain = forwarded(&["6.6.6.6, 198.51.100.4", "10.0.0.2"]);
        assert_eq!(trusted.attribute(ip("10.0.0.1"), &chain), ip("198.51.100.4"), "right-most untrusted");
        assert_eq!(trusted.attribute(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"), "no header");
        let garbage = forwarded(&["198.51.100.4, junk, 10.0.0.3"]);
        assert_eq!(trusted.attribute(ip("10.0.0.1"), &garbage), ip("10.0.0.3"), "stops at garbage");
        let all_trusted = forwarded(&["10.0.0.5, 10.0.0.6"]);
        assert_eq!(trusted.attribute(ip("10.0.0.1"), &all_trusted), ip("10.0.0.5"));
        assert_eq!(TrustedProxies::default().attribute(ip("10.0.0.1"), &chain), ip("10.0.0.1"));
    }
}
