//! TLS for PostgreSQL connections over rustls, with libpq's `sslmode` names.
//!
//! tokio-postgres itself knows only disable / prefer / require; verify-ca and verify-full are
//! `require` plus certificate checks done here: verify-ca checks the chain against the root
//! certificates, verify-full also the host name. `prefer` encrypts without checking the
//! certificate, and so does `require` when no root certificate is given; given one, `require`
//! checks the chain as verify-ca does, as libpq does.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
pub use tokio_postgres_rustls::MakeRustlsConnect as Connector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SslMode, String> {
        match s.trim() {
            "disable" => Ok(SslMode::Disable),
            "prefer" | "allow" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "sslmode {other:?} is not one of disable, allow (read as prefer), prefer, require, \
                 verify-ca, verify-full"
            )),
        }
    }
}

impl SslMode {
    /// What tokio-postgres is told: whether TLS is off, tried, or required.
    pub fn transport(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// The TLS part of the connection settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// PEM file of the root certificates the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // A client sends a key share for its first group only. PostgreSQL accepts only the curve in
    // `ssl_ecdh_curve`, prime256v1 by default, so leading with X25519 (rustls' default) makes
    // every handshake a HelloRetryRequest: a second ClientHello, another round trip and a key
    // made for nothing. P-256 goes first; the other groups stay on offer.
    provider
        .kx_groups
        .sort_by_key(|g| g.name() != rustls::NamedGroup::secp256r1);
    Arc::new(provider)
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        format!(
            "cannot read the root certificate file {}: {e}",
            path.display()
        )
    })?;
    for cert in certs {
        let cert =
            cert.map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("{} holds a certificate rustls rejects: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(store)
}

/// The connector for `settings`; errors name what to fix.
pub fn connector(settings: &TlsSettings) -> Result<Connector, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    // libpq's rule, kept for deployments that set a root certificate with `require`: the
    // certificate is then checked against it, as with verify-ca.
    let mode = match (settings.mode, &settings.root_cert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(EncryptOnly(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = settings.root_cert.as_deref().ok_or_else(|| {
                "sslmode verify-ca and verify-full need the server's root certificate: set sslrootcert= in DATABASE_URL or DB_SSLROOTCERT".to_string()
            })?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(path)?), provider)
                    .build()
                    .map_err(|e| format!("cannot set up certificate checks: {e}"))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Connector::new(config))
}

/// `require` / `prefer`: encrypted, the certificate not checked (handshake signatures still are).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_key_share_is_the_curve_postgresql_accepts_by_default() {
        let groups: Vec<_> = provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups.first(), Some(&rustls::NamedGroup::secp256r1));
        assert!(
            groups.contains(&rustls::NamedGroup::X25519),
            "the other groups stay on offer: {groups:?}"
        );
    }

    #[test]
    fn sslmodes_parse_and_map_to_the_transport() {
        assert_eq!("verify-full".parse::<SslMode>(), Ok(SslMode::VerifyFull));
        assert_eq!(
            "verify-ca".parse::<SslMode>().map(SslMode::transport),
            Ok(PgSslMode::Require)
        );
        assert_eq!(
            "disable".parse::<SslMode>().map(SslMode::transport),
            Ok(PgSslMode::Disable)
        );
        assert!("always".parse::<SslMode>().is_err());
    }

    #[test]
    fn verification_needs_a_readable_root_certificate() {
        let no_root = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: None,
        };
        assert!(connector(&no_root)
            .err()
            .unwrap_or_default()
            .contains("sslrootcert"));
        let missing = TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some("/nonexistent/root.crt".into()),
        };
        assert!(connector(&missing)
            .err()
            .unwrap_or_default()
            .contains("/nonexistent/root.crt"));
        assert!(connector(&TlsSettings::default()).is_ok());
    }
}
