//! `http_proxy` terminates TLS, with a self-signed certificate or one from files.

use super::*;

#[tokio::test]
async fn http_proxy_terminates_tls_with_a_self_signed_certificate() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(2).await?;
        let proxy =
            HttpProxy::start(&["--tls-self-signed"], &backends.iter().collect::<Vec<_>>()).await?;
        let (der, pem) = proxy
            .settings
            .self_signed
            .clone()
            .ok_or("no certificate generated")?;
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der)?;
        let trusting = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(trusting));
        let tcp = TcpStream::connect(proxy.addr).await?;
        let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = connector.connect(server_name.clone(), tcp).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let response = sender
            .send_request(
                Request::get("/over-tls")
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())?,
            )
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        let name = response.headers()["x-backend"].to_str()?.to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        assert_eq!(String::from_utf8(body.to_vec())?.trim(), name);
        // Plain HTTP to the backend, which was told the client's protocol.
        let backend = backends
            .iter()
            .find(|b| b.name() == name)
            .ok_or("unknown backend")?;
        let seen = backend.last_headers().ok_or("the backend saw no request")?;
        assert_eq!(seen["x-forwarded-proto"], "https");

        // A client that does not trust the certificate gets no connection.
        let stranger = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tcp = TcpStream::connect(proxy.addr).await?;
        let refused = tokio_rustls::TlsConnector::from(Arc::new(stranger))
            .connect(server_name, tcp)
            .await;
        assert!(refused.is_err());
        proxy.shutdown().await
    })
    .await
}

/// `GET /` over TLS to the proxy at `addr`, trusting `cert` for `localhost`.
async fn tls_get(
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
) -> Result<Answer, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    Answer::read(response).await
}

#[tokio::test]
async fn http_proxy_terminates_tls_with_a_certificate_from_files() -> Result<(), Error> {
    bounded(async {
        let backends = http_backends(1).await?;
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let dir = std::env::temp_dir().join(format!("tower-lb-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key_pair.serialize_pem())?;
        let options = [
            "--tls-cert",
            cert_path.to_str().ok_or("path")?,
            "--tls-key",
            key_path.to_str().ok_or("path")?,
        ];
        let proxy = HttpProxy::start(&options, &[&backends[0]]).await;
        std::fs::remove_dir_all(&dir)?;
        let proxy = proxy?;
        let answer = tls_get(proxy.addr, cert.der().clone()).await?;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.trim(), "a");
        proxy.shutdown().await
    })
    .await
}
