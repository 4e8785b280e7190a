//! Layer 4 keys: the peer's address.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;

use super::{AffinityKey, hash_key};
use crate::error::ConfigError;

/// Anything that knows the address of the peer it came from: an accepted connection,
/// the `(stream, addr)` pair `accept` returns, a request that recorded it.
///
/// Implement it for your own connection type (a tokio `TcpStream` wrapper, a QUIC
/// connection) to use [`PeerIpKey`] and [`PeerAddrKey`] on it.
pub trait PeerAddr {
    /// The peer's socket address, if known.
    fn peer_addr(&self) -> Option<SocketAddr>;
}

impl PeerAddr for SocketAddr {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(*self)
    }
}

/// Asks the operating system (one `getpeername` call per key); prefer keeping the
/// address `accept` returned, as `(TcpStream, SocketAddr)`.
impl PeerAddr for TcpStream {
    fn peer_addr(&self) -> Option<SocketAddr> {
        TcpStream::peer_addr(self).ok()
    }
}

/// The pair `TcpListener::accept` (std or tokio) returns: the connection and its peer.
impl<T> PeerAddr for (T, SocketAddr) {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(self.1)
    }
}

impl<T: PeerAddr + ?Sized> PeerAddr for &T {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        (**self).peer_addr()
    }
}

impl<T: PeerAddr + ?Sized> PeerAddr for Box<T> {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        (**self).peer_addr()
    }
}

impl<T: PeerAddr + ?Sized> PeerAddr for Arc<T> {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        (**self).peer_addr()
    }
}

/// An HTTP request whose extensions carry the peer's [`SocketAddr`] (insert it when you
/// accept the connection: `req.extensions_mut().insert(peer)`).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<B> PeerAddr for http::Request<B> {
    #[inline]
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.extensions().get::<SocketAddr>().copied()
    }
}

/// The address as 4 bytes (IPv4, including IPv4-mapped IPv6) or 16 bytes (IPv6), with
/// the bits past the prefix cleared.
#[inline]
fn masked(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; canonicalise so the
    // same client maps the same whichever listener it reached.
    let (len, prefix) = match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (4, v4_prefix)
        }
        IpAddr::V6(v6) => {
            out.copy_from_slice(&v6.octets());
            (16, v6_prefix)
        }
    };
    let prefix = usize::from(prefix);
    for (i, byte) in out.iter_mut().enumerate().take(len) {
        let keep = prefix.saturating_sub(i * 8).min(8);
        // keep = 0..=8 high bits of this byte survive.
        *byte &= !(0xFFu16 >> keep) as u8;
    }
    (out, len)
}

/// The peer's IP address (or a prefix of it) as the key: source-IP affinity, as
/// HAProxy's `balance source` and NGINX's `ip_hash`.
///
/// The port is ignored, so every connection of a client lands on the same backend.
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) are keyed as their IPv4 address.
/// [`with_prefix`](Self::with_prefix) keys by network instead: `/24` keeps clients of
/// one IPv4 subnet together (NGINX's `ip_hash` uses /24), `/64` follows an IPv6 client
/// across its privacy addresses.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::affinity::{AffinityKey, PeerIpKey};
///
/// let a: SocketAddr = "192.0.2.7:1000".parse()?;
/// let b: SocketAddr = "192.0.2.99:2000".parse()?;
/// assert_ne!(PeerIpKey::new().key(&a), PeerIpKey::new().key(&b));
///
/// let subnet = PeerIpKey::with_prefix(24, 64)?;
/// assert_eq!(subnet.key(&a), subnet.key(&b));
/// assert!(PeerIpKey::with_prefix(33, 64).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIpKey {
    v4_prefix: u8,
    v6_prefix: u8,
}

impl PeerIpKey {
    /// Keys by the whole IP address.
    pub const fn new() -> Self {
        PeerIpKey {
            v4_prefix: 32,
            v6_prefix: 128,
        }
    }

    /// Keys by the first `v4` bits of IPv4 addresses and `v6` bits of IPv6 ones; fails
    /// when a prefix is longer than its address.
    pub const fn with_prefix(v4: u8, v6: u8) -> Result<Self, ConfigError> {
        if v4 > 32 {
            return Err(ConfigError::PrefixLength { bits: v4, max: 32 });
        }
        if v6 > 128 {
            return Err(ConfigError::PrefixLength { bits: v6, max: 128 });
        }
        Ok(PeerIpKey {
            v4_prefix: v4,
            v6_prefix: v6,
        })
    }

    /// The hash of `ip` under this key's prefixes.
    #[inline]
    pub fn hash_ip(&self, ip: IpAddr) -> u64 {
        let (bytes, len) = masked(ip, self.v4_prefix, self.v6_prefix);
        hash_key(&bytes[..len])
    }
}

impl Default for PeerIpKey {
    fn default() -> Self {
        PeerIpKey::new()
    }
}

impl<Req: PeerAddr + ?Sized> AffinityKey<Req> for PeerIpKey {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        req.peer_addr().map(|addr| self.hash_ip(addr.ip()))
    }
}

/// The peer's IP address *and port* as the key: one backend per connection source,
/// for protocols where each client port is its own session (a NAT gateway's flows).
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::affinity::{AffinityKey, PeerAddrKey};
///
/// let a: SocketAddr = "192.0.2.7:1000".parse()?;
/// let b: SocketAddr = "192.0.2.7:1001".parse()?;
/// assert_ne!(PeerAddrKey::new().key(&a), PeerAddrKey::new().key(&b));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerAddrKey {
    _private: (),
}

impl PeerAddrKey {
    /// Keys by address and port.
    pub const fn new() -> Self {
        PeerAddrKey { _private: () }
    }

    /// The hash of `addr`: its canonical IP bytes followed by the port, big-endian.
    #[inline]
    pub fn hash_addr(&self, addr: SocketAddr) -> u64 {
        let (ip, len) = masked(addr.ip(), 32, 128);
        // `len` is 4 or 16, so every range below is in bounds.
        let mut buf = [0u8; 18];
        buf[..len].copy_from_slice(&ip[..len]);
        buf[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
        hash_key(&buf[..len + 2])
    }
}

impl<Req: PeerAddr + ?Sized> AffinityKey<Req> for PeerAddrKey {
    #[inline]
    fn key(&self, req: &Req) -> Option<u64> {
        req.peer_addr().map(|addr| self.hash_addr(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn prefixes_mask_the_right_bits() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 255));
        assert_eq!(masked(ip, 32, 128).0[..4], [192, 0, 2, 255]);
        assert_eq!(masked(ip, 24, 128).0[..4], [192, 0, 2, 0]);
        assert_eq!(masked(ip, 20, 128).0[..4], [192, 0, 0, 0]);
        assert_eq!(masked(ip, 23, 128).0[..4], [192, 0, 2, 0]);
        assert_eq!(masked(ip, 31, 128).0[..4], [192, 0, 2, 254]);
        assert_eq!(masked(ip, 0, 128).0[..4], [0, 0, 0, 0]);
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let (b, len) = masked(v6, 32, 64);
        assert_eq!(len, 16);
        assert_eq!(
            b,
            [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn mapped_ipv4_keys_as_ipv4() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        let key = PeerIpKey::new();
        assert_eq!(key.hash_ip(v4), key.hash_ip(mapped));
        assert_ne!(
            key.hash_ip(v4),
            key.hash_ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }

    #[test]
    fn hashes_are_pinned() {
        // The stable bytes of 192.0.2.7 and of 192.0.2.7:443, hashed by XXH3-64.
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(PeerIpKey::new().hash_ip(ip), hash_key(&[192, 0, 2, 7]));
        let addr = SocketAddr::new(ip, 443);
        assert_eq!(
            PeerAddrKey::new().hash_addr(addr),
            hash_key(&[192, 0, 2, 7, 0x01, 0xBB])
        );
    }
}
