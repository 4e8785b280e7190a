//! TLS termination with rustls (the `ring` provider: no cmake needed): the server
//! configuration, from PEM files or from a self-signed certificate (rcgen), and the
//! handshake. The handshake has its own time-out, [`HANDSHAKE_TIMEOUT`]: the client
//! time-outs of `serve.rs` start once it is done.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower_lb::balance::BoxError;

use super::LOG_TARGET;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A rustls server configuration (ring provider), HTTP/1.1 over ALPN.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Which of the two PEM files a [`from_pem_files`] error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The certificate chain.
    Cert,
    /// The private key (also when it does not match the certificate).
    Key,
}

/// The server configuration of a certificate chain and its private key, read from PEM
/// files; an error says which file is at fault, and why.
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, (PemFile, String)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| (PemFile::Cert, e.to_string()))?;
    if certs.is_empty() {
        return Err((PemFile::Cert, "no certificate in the file".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| (PemFile::Key, e.to_string()))?;
    server_config(certs, private).map_err(|e| (PemFile::Key, e.to_string()))
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (rcgen, ring backend):
/// the server configuration, the certificate's DER and PEM.
pub fn self_signed() -> Result<(Arc<ServerConfig>, CertificateDer<'static>, String), BoxError> {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = server_config(vec![der.clone()], key)?;
    Ok((config, der, cert.pem()))
}

/// The server side of the handshake with `peer`, within [`HANDSHAKE_TIMEOUT`]; `None`
/// (logged at debug level) when it fails or takes too long.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(target: LOG_TARGET, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(target: LOG_TARGET, %peer, "TLS handshake timed out");
            None
        }
    }
}
