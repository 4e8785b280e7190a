//! [`BackendKey`]: the stable bytes that name a backend to the hashing pickers.

use std::borrow::Cow;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

/// The stable bytes that identify a backend to the consistent-hashing pickers.
///
/// Hashing pickers place a backend by hashing these bytes (with the crate's stable
/// hash, never std's per-process keyed one), so two balancers that share no state but
/// hold the same set build the same tables and map every key the same way, whatever
/// order they learnt the backends in. The bytes must therefore depend on the backend's
/// identity alone — not on anything that differs between processes (a pointer, a
/// connection handle, an insertion index).
///
/// Provided encodings, fixed for the life of the crate (changing one would remap keys
/// on upgrade):
///
/// - strings and byte strings: their bytes;
/// - socket and IP addresses: their `Display` text (`10.0.0.1:8080`, `[::1]:443`), so an
///   address held as a `SocketAddr` and the same address held as a string agree;
/// - integers: big-endian bytes of the value as a `u64` (`u128` keeps 16 bytes), so the
///   byte order of two ids is their numeric order (what [`Jump`](crate::Jump) sorts by).
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use tower_lb::pick::hash::BackendKey;
///
/// fn bytes(k: &impl BackendKey) -> Vec<u8> {
///     let mut out = Vec::new();
///     k.write_key(&mut out);
///     out
/// }
/// let addr: SocketAddr = "10.0.0.1:8080".parse().unwrap();
/// assert_eq!(bytes(&addr), bytes(&"10.0.0.1:8080"));
/// assert_eq!(bytes(&7u64), [0, 0, 0, 0, 0, 0, 0, 7]);
/// ```
pub trait BackendKey {
    /// Appends this backend's identifying bytes to `out`.
    fn write_key(&self, out: &mut Vec<u8>);
}

impl BackendKey for str {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl BackendKey for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl BackendKey for Cow<'_, str> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl BackendKey for [u8] {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl BackendKey for Vec<u8> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<T: BackendKey + ?Sized> BackendKey for &T {
    fn write_key(&self, out: &mut Vec<u8>) {
        (**self).write_key(out);
    }
}

impl<T: BackendKey + ?Sized> BackendKey for Box<T> {
    fn write_key(&self, out: &mut Vec<u8>) {
        (**self).write_key(out);
    }
}

impl<T: BackendKey + ?Sized> BackendKey for Arc<T> {
    fn write_key(&self, out: &mut Vec<u8>) {
        (**self).write_key(out);
    }
}

/// Writes the `Display` text of an address (writing to a `Vec` cannot fail).
macro_rules! display_key {
    ($($t:ty),*) => {$(
        impl BackendKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

display_key!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    IpAddr,
    Ipv4Addr,
    Ipv6Addr
);

/// Writes the value as a big-endian `u64`.
macro_rules! integer_key {
    ($($t:ty),*) => {$(
        impl BackendKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&(*self as u64).to_be_bytes());
            }
        }
    )*};
}

integer_key!(u8, u16, u32, u64, usize);

impl BackendKey for u128 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

/// The URI's text, as it would be sent.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl BackendKey for http::Uri {
    fn write_key(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "{self}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(k: &(impl BackendKey + ?Sized)) -> Vec<u8> {
        let mut out = Vec::new();
        k.write_key(&mut out);
        out
    }

    #[test]
    fn encodings_are_fixed() {
        assert_eq!(bytes("a:1"), b"a:1");
        assert_eq!(bytes(&String::from("a:1")), b"a:1");
        assert_eq!(bytes(&Arc::<str>::from("a:1")), b"a:1");
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(bytes(&v6), b"[2001:db8::1]:443");
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(bytes(&v4), b"10.0.0.1");
        assert_eq!(bytes(&258u16), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(bytes(&258u64), bytes(&258usize));
        assert_eq!(bytes(&1u128).len(), 16);
        assert!(bytes(&1u64) < bytes(&256u64));
    }
}
