//! TLS around the gateway: the certificate `nimbus up` serves with (the files given, or the
//! development certificate of `--tls-self-signed`, made or reused in `DATA_DIR/tls/`), and the
//! certificates the CLI trusts when the server speaks HTTPS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use chrono::Datelike;
use nimbus_gateway::tls::{certificates, provider, server_config};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::RootCertStore;

/// The development certificate and its key, under the data dir.
pub const CERT_FILE: &str = "tls/cert.pem";
pub const KEY_FILE: &str = "tls/key.pem";

/// The names the development certificate is valid for.
const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// How long a development certificate is valid; one valid for less than `RENEW_BEFORE` more is
/// made anew at start.
const DEV_VALID_DAYS: i64 = 365;
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// How `nimbus up` serves: which certificate and key, if any.
pub enum Serving<'a> {
    Plain,
    Files { cert: &'a Path, key: &'a Path },
    SelfSigned,
}

/// The gateway's TLS configuration, checked before anything else starts: an unreadable or
/// unusable certificate or key is an error naming the file.
pub fn server(serving: Serving<'_>, data_dir: &Path) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (cert, key) = match serving {
        Serving::Plain => return Ok(None),
        Serving::Files { cert, key } => (cert.to_owned(), key.to_owned()),
        Serving::SelfSigned => dev_certificate(data_dir)?,
    };
    Ok(Some(server_config(&cert, &key)?))
}

/// `DATA_DIR/tls/cert.pem` and `key.pem` (mode 0600): reused while they serve every development
/// name for at least another day, made anew otherwise (missing, expired, damaged).
fn dev_certificate(data_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE));
    match still_good(&cert, &key) {
        Ok(()) => return Ok((cert, key)),
        Err(why) if cert.exists() || key.exists() => {
            tracing::warn!("making a new development certificate in {}: {why:#}", cert.display());
        }
        Err(_) => {}
    }
    let dir = cert.parent().ok_or_else(|| anyhow!("{} has no parent directory", cert.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert_pem, key_pem) = make_dev_certificate()?;
    crate::files::write_private(&key, &key_pem)?;
    crate::files::write_file(&cert, &cert_pem, 0o644)?;
    Ok((cert, key))
}

/// Whether the pair serves: readable, the key belongs to the certificate, and a client trusting
/// the certificate accepts it for every development name, now and a day from now.
fn still_good(cert: &Path, key: &Path) -> Result<()> {
    server_config(cert, key)?;
    let leaf = certificates(cert)?.into_iter().next().ok_or_else(|| anyhow!("no certificate"))?;
    let mut roots = RootCertStore::empty();
    roots.add(leaf.clone()).context("the certificate cannot be its own trust anchor")?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    for at in [now, now + RENEW_BEFORE] {
        for name in DEV_NAMES {
            let server_name = ServerName::try_from(name)?;
            verifier.verify_server_cert(&leaf, &[], &server_name, &[], UnixTime::since_unix_epoch(at)).with_context(
                || {
                    format!(
                        "not valid for {name} until {}",
                        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + at)
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// A self-signed ECDSA P-256 certificate for the development names, valid from yesterday for
/// [`DEV_VALID_DAYS`]: (certificate PEM, private key PEM).
fn make_dev_certificate() -> Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(DEV_NAMES.map(String::from).to_vec())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "nimbus development certificate");
    let today = chrono::Utc::now().date_naive();
    let day = |d: chrono::NaiveDate| {
        rcgen::date_time_ymd(d.year(), u8::try_from(d.month()).unwrap_or(1), u8::try_from(d.day()).unwrap_or(1))
    };
    params.not_before = day(today - chrono::Days::new(1));
    params.not_after = day(today + chrono::Days::new(DEV_VALID_DAYS.unsigned_abs()));
    let key = rcgen::KeyPair::generate().context("cannot make a key for the development certificate")?;
    let cert = params.self_signed(&key).context("cannot make the development certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whom the CLI trusts when the server speaks HTTPS: the certificates in `ca_cert` alone when
/// given (`--ca-cert`, `NIMBUS_CA_CERT`); otherwise the public web's roots (Mozilla's list)
/// and `dev_cert`, the development certificate of a server found through its data dir.
/// Verification is never turned off.
pub fn client_config(ca_cert: Option<&Path>, dev_cert: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => add_all(&mut roots, path)?,
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = dev_cert {
                add_all(&mut roots, path)?;
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn add_all(roots: &mut RootCertStore, path: &Path) -> Result<()> {
    for cert in certificates(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: a certificate in it cannot be trusted as a CA", path.display()))?;
    }
    Ok(())
}

/// Whether `e` (or what caused it) is a TLS failure, such as a certificate the CLI does not
/// trust. io::Error hides its inner error from `source()`, so it is unwrapped by hand.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if is_tls_error(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn the_development_certificate_is_made_once_and_serves_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = dev_certificate(dir.path()).unwrap();
        still_good(&cert, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let first = std::fs::read(&cert).unwrap();
        dev_certificate(dir.path()).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first, "a good certificate is reused");
        std::fs::write(&cert, "damaged").unwrap();
        dev_certificate(dir.path()).unwrap();
        still_good(&cert, &key).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first);
    }

    #[test]
    fn an_expired_development_certificate_is_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(DEV_NAMES.map(String::from).to_vec()).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let expired = params.self_signed(&key).unwrap().pem();
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), &expired).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), key.serialize_pem()).unwrap();
        let e = still_good(&dir.path().join(CERT_FILE), &dir.path().join(KEY_FILE)).unwrap_err();
        assert!(format!("{e:#}").contains("not valid for localhost"), "{e:#}");

        let (cert, key) = dev_certificate(dir.path()).unwrap();
        assert_ne!(std::fs::read_to_string(&cert).unwrap(), expired);
        still_good(&cert, &key).unwrap();
    }

    #[test]
    fn a_ca_file_replaces_the_default_roots() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = dev_certificate(dir.path()).unwrap();
        client_config(Some(&cert), None).unwrap();
        client_config(None, Some(&cert)).unwrap();
        let e = client_config(Some(&dir.path().join("nope.pem")), None).unwrap_err();
        assert!(format!("{e:#}").contains("nope.pem"), "{e:#}");
    }
}
