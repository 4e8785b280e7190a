//! The HTTP probe: `GET` a path over HTTP/1.1; a 2xx or 3xx status is healthy.
//!
//! The probe opens a TCP connection, sends one request with `Connection: close`, reads
//! the status line and drops the connection without reading the body: a health check
//! needs the status and nothing else, so this needs no HTTP client stack (the `http`
//! crate only validates the path and parses the status).
//!
//! Source: HAProxy's `option httpchk` (2xx and 3xx are up), Envoy's HTTP health checker.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::probe::{Probe, ProbeFuture};
use crate::error::{ConfigError, ProbeError};

/// The longest status line read, in bytes.
const MAX_STATUS_LINE: usize = 1024;

/// An HTTP/1.1 `GET` probe. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use tower_lb::health::HttpProbe;
///
/// let probe = HttpProbe::new("/healthz")?.host("api.internal")?;
/// # let _ = probe;
/// assert!(HttpProbe::new("no-slash").is_err());
/// # Ok::<(), tower_lb::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HttpProbe {
    path: Arc<str>,
    host: Option<Arc<str>>,
}

impl HttpProbe {
    /// Probes `path` (a path and query starting with `/`).
    pub fn new(path: &str) -> Result<Self, ConfigError> {
        let valid = path.starts_with('/')
            && http::uri::PathAndQuery::from_str(path).is_ok()
            && !path.contains(['\r', '\n', ' ']);
        if !valid {
            return Err(ConfigError::ProbePath { path: path.into() });
        }
        Ok(HttpProbe {
            path: path.into(),
            host: None,
        })
    }

    /// The `Host` header to send (default: the backend's address as displayed).
    pub fn host(mut self, host: &str) -> Result<Self, ConfigError> {
        if http::uri::Authority::from_str(host).is_err() {
            return Err(ConfigError::ProbeHost { host: host.into() });
        }
        self.host = Some(host.into());
        Ok(self)
    }
}

impl<A> Probe<A> for HttpProbe
where
    A: tokio::net::ToSocketAddrs + fmt::Display + Clone + Send + Sync + 'static,
{
    fn probe(&self, addr: &A) -> ProbeFuture {
        let host = self.host.clone().unwrap_or_else(|| addr.to_string().into());
        Box::pin(get(addr.clone(), host, Arc::clone(&self.path)))
    }
}

impl HttpProbe {
    /// A probe of the backend at `authority` (`host:port`), plain HTTP.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn probe_authority(&self, authority: String) -> ProbeFuture {
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| authority.clone().into());
        Box::pin(get(authority, host, Arc::clone(&self.path)))
    }
}

/// `GET path` with `Host: host` over a fresh connection to `addr`; healthy on 2xx/3xx.
async fn get<A: tokio::net::ToSocketAddrs>(
    addr: A,
    host: Arc<str>,
    path: Arc<str>,
) -> Result<(), ProbeError> {
    if http::uri::Authority::from_str(&host).is_err() {
        return Err(ProbeError::new(format!(
            "{host:?} is not a valid Host header; set one with HttpProbe::host"
        )));
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tower-lb-probe\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        match stream.read(&mut buf[len..]).await? {
            0 => break,
            n => len += n,
        }
    }
    let status = parse_status(&buf[..len])?;
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::new(format!("GET {path}: status {status}")))
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &[u8]) -> Result<http::StatusCode, ProbeError> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with(b"HTTP/1.") {
        return Err(ProbeError::new("not an HTTP/1.x response"));
    }
    http::StatusCode::from_bytes(code.get(..3).unwrap_or(code))
        .map_err(|_| ProbeError::new("malformed HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n").unwrap(), 204);
        assert_eq!(parse_status(b"HTTP/1.0 302 Found\r\n").unwrap(), 302);
        assert_eq!(parse_status(b"HTTP/1.1 503\r\n").unwrap(), 503);
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 2x0 What\r\n").is_err());
        assert!(parse_status(b"").is_err());
    }

    #[test]
    fn paths_and_hosts_are_validated() {
        assert!(HttpProbe::new("/health?full=1").is_ok());
        assert!(HttpProbe::new("/a b").is_err());
        assert!(HttpProbe::new("/a\r\nX: y").is_err());
        assert!(HttpProbe::new("/").unwrap().host("bad host").is_err());
    }
}
