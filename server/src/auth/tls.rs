//! TLS with rustls: the acceptor `--tls-cert` and `--tls-key` make, which
//! [`crate::wire_guard::serve`] hands to pgwire's `SSLRequest` negotiation (docs "55.2.10. SSL
//! Session Encryption"): with it a client's `SSLRequest` is answered `S` and a TLS handshake
//! follows (`sslmode=require`, `verify-full`); without it, `N`, as before.

use std::path::Path;
use std::sync::Arc;

use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;

/// The TLS acceptor of a PEM certificate chain and private key (PKCS#8, PKCS#1 or SEC1), with
/// rustls' safe defaults (TLS 1.2 and 1.3) and the `postgresql` ALPN protocol.
///
/// Errors: a file that cannot be read or holds no certificate / key, or a key that does not
/// match the certificate; one line naming the file.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("the TLS certificate {} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("invalid TLS certificate or key: {e}"))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
