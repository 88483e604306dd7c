//! TLS for the gateway: the certificate chain and private key from PEM files, checked when
//! `nimbus up` starts, and ALPN offering HTTP/2 then HTTP/1.1. rustls with the ring provider,
//! named here rather than installed process-wide, so nothing depends on which crypto features
//! other crates in the build turn on.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key nimbus cannot serve with: names the file and what is wrong with it.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider of every TLS connection nimbus makes or accepts (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocols the gateway offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A server configuration from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1). Fails, naming the file, when either cannot be read or parsed, or
/// when the key does not belong to the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key_der = private_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError(unusable(&e, cert, key)))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The certificates of a PEM file, in file order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: not a readable PEM certificate file: {e}", path.display())))?;
    if chain.is_empty() {
        let hint = if PrivateKeyDer::from_pem_slice(&bytes).is_ok() {
            " (it holds a private key: are the certificate and the key swapped?)"
        } else {
            ""
        };
        return Err(TlsError(format!(
            "{}: no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----){hint}",
            path.display()
        )));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let hint = if CertificateDer::from_pem_slice(&bytes).is_ok() {
            " (it holds a certificate: are the certificate and the key swapped?)"
        } else {
            ""
        };
        TlsError(format!(
            "{}: no private key in it ({e}); expected PEM (-----BEGIN PRIVATE KEY-----, or RSA / EC PRIVATE KEY){hint}",
            path.display()
        ))
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read the TLS {what} {}: {e}", path.display())))
}

/// Why rustls refused the pair, in terms of the files.
fn unusable(e: &rustls::Error, cert: &Path, key: &Path) -> String {
    let (cert, key) = (cert.display(), key.display());
    match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("the private key in {key} does not belong to the certificate in {cert}")
        }
        rustls::Error::InvalidCertificate(why) => {
            format!("{cert}: the first certificate is not a usable X.509 certificate ({why:?})")
        }
        rustls::Error::General(why) => format!("{key}: the private key cannot be used: {why}"),
        other => format!("cannot serve with {cert} and {key}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(cert: &Path, key: &Path) -> String {
        server_config(cert, key).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("nimbus-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let garbage = write(&dir, "garbage.pem", "not pem at all\n");
        let key = write(
            &dir,
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBuBYN3N6ZPn3rOQXqd5rLVIq3O6b1LqQH3ZzXQ9zg4w\n-----END PRIVATE KEY-----\n",
        );
        let bad_der = write(&dir, "bad-der.pem", "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n");

        let e = err(&missing, &key);
        assert!(e.contains("cannot read the TLS certificate") && e.contains("missing.pem"), "{e}");
        let e = err(&garbage, &key);
        assert!(e.contains("garbage.pem: no certificate in it"), "{e}");
        let e = err(&key, &key);
        assert!(e.contains("swapped"), "{e}");
        let e = err(&bad_der, &garbage);
        assert!(e.contains("garbage.pem: no private key"), "{e}");
        let e = err(&bad_der, &key);
        assert!(e.contains("bad-der.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
