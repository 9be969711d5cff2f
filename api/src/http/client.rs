//! The client address a request is attributed to (rate limits, login throttling, the access log):
//! the TCP peer, or, when the peer is one of `MOVIESTORE_TRUSTED_PROXIES`, the right-most address
//! of `X-Forwarded-For` that is not itself a trusted proxy (the entries left of it were written
//! by the client and prove nothing). IPv6 clients count per /64, the block one subscriber gets,
//! so an attacker cannot take a fresh counter with each of its 2^64 addresses.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;

use crate::config::proxies::{canonical, mask, TrustedProxies};

/// The client a request is attributed to, left in the request's extensions by [`attribute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// What limits and throttles count by: the address, or for IPv6 its /64.
    pub fn key(&self) -> IpAddr {
        match self.0 {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask(u128::from(v6), 64))),
            v4 => v4,
        }
    }
}

impl fmt::Display for ClientAddr {
    /// The counting key: `203.0.113.7`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key() {
            IpAddr::V6(block) => write!(f, "{block}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = || parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let found = parts.extensions.get::<ClientAddr>().copied();
        Ok(found.unwrap_or_else(|| ClientAddr(canonical(peer().unwrap_or(IpAddr::from([0, 0, 0, 0]))))))
    }
}

/// Step: attributes the request to its client once, for every step and handler after it.
pub fn attribute(trusted: &TrustedProxies, request: &mut Request) {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(peer) = peer {
        let client = ClientAddr(trusted.attribute(peer, request.headers()));
        request.extensions_mut().insert(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = ClientAddr(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientAddr(ip("2001:db8:1:2:ffff:1:2:3"));
        let other = ClientAddr(ip("2001:db8:1:3::1"));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), other.key());
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(ClientAddr(ip("203.0.113.7")).to_string(), "203.0.113.7");
    }
}
