//! Fetches an IdP's documents over HTTPS, with a deadline, a size cap and no redirects, so a
//! slow, huge or hostile endpoint costs at most one bounded request (tokens.md J20).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The largest discovery or JWKS document accepted.
pub const MAX_DOCUMENT_BYTES: u64 = 1 << 20;

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the document is not JSON of the expected shape: {message}")]
    Document { url: String, message: String },
}

/// A blocking HTTPS client for one issuer (run it on the blocking pool).
#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    /// An HTTPS-only client trusting `ca_file` when given, else the public WebPKI roots.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Fetcher, FetchError> {
        let roots = match ca_file {
            None => ureq::tls::RootCerts::WebPki,
            Some(path) => {
                let certs = read_certs(path)?;
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Fetcher { agent })
    }

    /// GETs `url` and parses the JSON body as `T`.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let body = self.get(url)?;
        serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    /// GETs `url`, refusing bodies over [`MAX_DOCUMENT_BYTES`].
    pub fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let http = |message: String| FetchError::Http {
            url: url.to_string(),
            message,
        };
        let mut resp = self
            .agent
            .get(url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_BYTES)
            .read_to_vec()
            .map_err(|e| http(e.to_string()))
    }

    /// POSTs a form and returns the status and JSON body (for the device flow, whose errors
    /// come as JSON with status 400).
    pub fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, serde_json::Value), FetchError> {
        let http = |message: String| FetchError::Http {
            url: url.to_string(),
            message,
        };
        let mut resp = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .send_form(form.iter().copied())
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_BYTES)
            .read_to_vec()
            .map_err(|e| http(e.to_string()))?;
        let json = serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        Ok((status, json))
    }
}

fn read_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, FetchError> {
    let fail = |message: String| FetchError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("it holds no PEM certificate".into()));
    }
    Ok(certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect())
}
