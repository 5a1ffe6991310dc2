//! The OAuth 2.0 device authorization grant (RFC 8628) as a client, for `gatehouse login`: a
//! person approves the login in a browser on any device, and the CLI receives a token it can
//! present to the gateway. Blocking; the CLI has no runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::cache::{RefreshError, discover};
use crate::fetch::{FetchError, Fetcher};

/// The grant type of RFC 8628 section 3.4.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Why a device login did not produce a token.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Discovery(#[from] RefreshError),
    #[error(
        "the identity provider does not offer the device flow (no device_authorization_endpoint)"
    )]
    Unsupported,
    #[error("the identity provider refused the login request: {0}")]
    Refused(String),
    #[error("the login was denied at the identity provider")]
    Denied,
    #[error("the code expired before the login was approved; run `gatehouse login` again")]
    Expired,
    #[error("the identity provider returned no token meant for this gateway (audience {0})")]
    NoSuitableToken(String),
}

/// What the person must do to approve the login.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default = "default_interval")]
    pub interval: u64,
}

fn default_interval() -> u64 {
    5
}

/// A device login in progress against one issuer.
pub struct DeviceLogin {
    fetcher: Fetcher,
    token_endpoint: String,
    client_id: String,
    audience: String,
    pub authorization: DeviceAuthorization,
}

impl DeviceLogin {
    /// Discovers the issuer's endpoints and asks for a device code.
    pub fn start(
        issuer: &str,
        client_id: &str,
        audience: &str,
        ca_file: Option<&Path>,
    ) -> Result<DeviceLogin, DeviceError> {
        let fetcher = Fetcher::new(ca_file, Duration::from_secs(15))?;
        let doc = discover(&fetcher, issuer)?;
        let device_endpoint = doc
            .device_authorization_endpoint
            .ok_or(DeviceError::Unsupported)?;
        let token_endpoint = doc.token_endpoint.ok_or(DeviceError::Unsupported)?;
        let (status, body) = fetcher.post_form(
            &device_endpoint,
            &[("client_id", client_id), ("scope", "openid profile email")],
        )?;
        if status != 200 {
            return Err(DeviceError::Refused(error_text(&body)));
        }
        let authorization: DeviceAuthorization = serde_json::from_value(body).map_err(|e| {
            DeviceError::Fetch(FetchError::Document {
                url: device_endpoint.clone(),
                message: e.to_string(),
            })
        })?;
        Ok(DeviceLogin {
            fetcher,
            token_endpoint,
            client_id: client_id.to_string(),
            audience: audience.to_string(),
            authorization,
        })
    }

    /// Polls the token endpoint until the login is approved, denied or expires; `waiting`
    /// is called between polls with the time spent so far.
    pub fn finish(&self, mut waiting: impl FnMut(Duration)) -> Result<String, DeviceError> {
        let started = Instant::now();
        let deadline = Duration::from_secs(self.authorization.expires_in.min(3600));
        let mut interval = Duration::from_secs(self.authorization.interval.clamp(1, 60));
        loop {
            if started.elapsed() >= deadline {
                return Err(DeviceError::Expired);
            }
            let (status, body) = self.fetcher.post_form(
                &self.token_endpoint,
                &[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", &self.authorization.device_code),
                    ("client_id", &self.client_id),
                ],
            )?;
            if status == 200 {
                return self.pick_token(&body);
            }
            match body["error"].as_str() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += Duration::from_secs(5),
                Some("access_denied") => return Err(DeviceError::Denied),
                Some("expired_token") => return Err(DeviceError::Expired),
                _ => return Err(DeviceError::Refused(error_text(&body))),
            }
            waiting(started.elapsed());
            std::thread::sleep(interval);
        }
    }

    /// The token to present to the gateway: the one (access or ID token) that is a JWT for
    /// the gateway's audience.
    fn pick_token(&self, body: &Value) -> Result<String, DeviceError> {
        ["access_token", "id_token"]
            .iter()
            .filter_map(|k| body[k].as_str())
            .find(|t| names_audience(t, &self.audience))
            .map(str::to_string)
            .ok_or_else(|| DeviceError::NoSuitableToken(self.audience.clone()))
    }
}

/// Whether a JWT's (unverified) `aud` names `audience`; the gateway verifies it properly.
fn names_audience(token: &str, audience: &str) -> bool {
    let Ok(t) = crate::verify::split(token) else {
        return false;
    };
    match t.claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a == audience),
        _ => false,
    }
}

fn error_text(body: &Value) -> String {
    let code = body["error"].as_str().unwrap_or("unknown_error");
    match body["error_description"].as_str() {
        Some(d) => format!("{code}: {d}"),
        None => code.to_string(),
    }
}
