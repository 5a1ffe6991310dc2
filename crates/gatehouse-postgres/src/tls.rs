//! TLS to upstream servers.

use std::sync::Arc;

use gatehouse_core::config::{ConnectionConfig, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why an upstream TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read CA file {0}")]
    CaFile(String),
    #[error("CA file {0} holds no certificate")]
    NoCertificate(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client TLS config for a connection: verify-full checks the chain against `ca_file` and
/// the host name; require encrypts without verifying (as libpq's `sslmode=require`).
pub fn upstream_client_config(c: &ConnectionConfig) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match c.tls {
        UpstreamTls::VerifyFull => {
            let path = c
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(
                c.ca_file.as_deref().unwrap_or(std::path::Path::new("")),
            )
            .map_err(|_| UpstreamTlsError::CaFile(path.clone()))?;
            for cert in certs {
                let cert = cert.map_err(|_| UpstreamTlsError::CaFile(path.clone()))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(UpstreamTlsError::NoCertificate(path));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        UpstreamTls::Require | UpstreamTls::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks handshake signatures: encryption without
/// authentication, for `tls = "require"` only.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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
