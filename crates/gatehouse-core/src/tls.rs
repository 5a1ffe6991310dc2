//! Client-facing TLS material: the operator's certificate, or a self-signed one generated in
//! the data directory on first start so that TLS works out of the box.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the server TLS config from `cert`/`key`, or from a self-signed pair kept in
/// `data_dir/tls/` (generated when missing). `alpn` lists the protocols to offer.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => ensure_self_signed(data_dir)?,
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|_| TlsError::Pem {
            path: cert_path.clone(),
            what: "certificate",
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem {
            path: cert_path.clone(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::Pem {
        path: key_path.clone(),
        what: "private key",
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Returns the paths of the self-signed pair, generating it when absent.
pub fn ensure_self_signed(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("gateway.crt");
    let key_path = dir.join("gateway.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    crate::fsutil::write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|source| TlsError::Write {
            path: key_path.clone(),
            source,
        })?;
    std::fs::write(&cert_path, certified.cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.clone(),
        source,
    })?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_self_signed_pair_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::ensure_self_signed(dir.path()).unwrap();
        let pem = std::fs::read(&first.0).unwrap();
        let second = super::ensure_self_signed(dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(pem, std::fs::read(&second.0).unwrap());
        super::server_config(None, None, dir.path(), &[b"postgresql"]).unwrap();
    }
}
