//! A small client for the gateway's REST API.

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::cli::ApiArgs;

pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// A client with `--token`/`GATEHOUSE_TOKEN`, else the token `gatehouse login` stored.
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = args
            .token
            .clone()
            .or_else(|| crate::login::stored_token(&args.url))
            .ok_or_else(|| {
                anyhow!("no token: set GATEHOUSE_TOKEN, pass --token, or run `gatehouse login` (the first start writes an admin token to <data_dir>/admin.token)")
            })?;
        Ok(Self::with_token(args, token))
    }

    /// A client that presents `token`.
    pub fn with_token(args: &ApiArgs, token: String) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        ApiClient {
            base: args.url.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    /// A client for the few endpoints that need no token.
    pub fn anonymous(args: &ApiArgs) -> Self {
        Self::with_token(args, String::new())
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(resp)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(resp)
    }

    /// POSTs and returns the status with the body, for endpoints whose 2xx and 403 answers
    /// both carry meaning; other failures are errors as usual.
    pub fn post_status(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        let mut resp = resp.with_context(|| format!("cannot reach the gateway at {} (is `gatehouse serve` running? is GATEHOUSE_URL right?)", self.base))?;
        let status = resp.status().as_u16();
        let value: Value = resp.body_mut().read_json().with_context(|| {
            format!("the gateway answered {status} with a body that is not JSON")
        })?;
        if status == 403 || (200..300).contains(&status) {
            return Ok((status, value));
        }
        let message = value["error"]["message"].as_str().unwrap_or("no message");
        bail!("{message} (HTTP {status})");
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(resp)
    }

    fn finish(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut resp = resp.with_context(|| format!("cannot reach the gateway at {} (is `gatehouse serve` running? is GATEHOUSE_URL right?)", self.base))?;
        let status = resp.status();
        let body: Value = resp.body_mut().read_json().with_context(|| {
            format!("the gateway answered {status} with a body that is not JSON")
        })?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(body)
    }
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
