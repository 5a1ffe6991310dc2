//! `gatehouse login`: the OAuth 2.0 device flow against one of the gateway's OIDC issuers, and
//! the stored token later CLI calls use when no `--token` is given.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use gatehouse_oidc::device::DeviceLogin;
use serde_json::Value;

use crate::cli::ApiArgs;
use crate::client::ApiClient;

/// The file, in the CLI's config directory, holding one token per gateway URL (mode 0600).
const CREDENTIALS_FILE: &str = "credentials.json";

/// Runs the device flow and stores the token for `api.url`.
pub fn login(
    api: &ApiArgs,
    issuer_name: &str,
    ca_file: Option<PathBuf>,
    print: bool,
) -> anyhow::Result<ExitCode> {
    let issuers = ApiClient::anonymous(api).get("/api/v1/identity/issuers")?;
    let list = issuers["issuers"].as_array().cloned().unwrap_or_default();
    let Some(issuer) = list.iter().find(|i| i["name"] == issuer_name) else {
        let names: Vec<&str> = list.iter().filter_map(|i| i["name"].as_str()).collect();
        bail!(
            "the gateway has no issuer named \"{issuer_name}\"; it trusts: {}",
            if names.is_empty() {
                "none (configure [[identity.oidc]])".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let field = |k: &str| issuer[k].as_str().unwrap_or_default().to_string();
    let flow = DeviceLogin::start(
        &field("issuer"),
        &field("client_id"),
        &field("audience"),
        ca_file.as_deref(),
    )
    .with_context(|| format!("cannot start a login with {}", field("issuer")))?;
    let auth = &flow.authorization;
    eprintln!(
        "To log in, open {} and enter the code {}",
        auth.verification_uri_complete
            .as_deref()
            .unwrap_or(&auth.verification_uri),
        auth.user_code
    );
    let token = flow.finish(|elapsed| {
        eprint!(
            "\r{} waiting for approval ({}s)",
            ['|', '/', '-', '\\'][(elapsed.as_secs() % 4) as usize],
            elapsed.as_secs()
        );
        let _ = std::io::stderr().flush();
    });
    eprintln!();
    let token = token?;

    let who = ApiClient::with_token(api, token.clone())
        .get("/api/v1/whoami")
        .context("the gateway did not accept the new token")?;
    store_token(&api.url, &token)?;
    eprintln!(
        "Logged in as {} ({}) with groups {}; the token is stored for {}",
        who["display_name"].as_str().unwrap_or("?"),
        who["subject"].as_str().unwrap_or("?"),
        who["groups"],
        api.url
    );
    if print {
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The token stored by `gatehouse login` for `url`, if any.
pub fn stored_token(url: &str) -> Option<String> {
    let text = std::fs::read_to_string(config_dir().ok()?.join(CREDENTIALS_FILE)).ok()?;
    let map: BTreeMap<String, Value> = serde_json::from_str(&text).ok()?;
    map.get(url)?["token"].as_str().map(str::to_string)
}

fn store_token(url: &str, token: &str) -> anyhow::Result<()> {
    let dir = config_dir()?;
    gatehouse_core::fsutil::create_private_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(CREDENTIALS_FILE);
    let mut map: BTreeMap<String, Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    map.insert(url.to_string(), serde_json::json!({ "token": token }));
    let text = serde_json::to_string_pretty(&map)?;
    gatehouse_core::fsutil::write_private(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `$GATEHOUSE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/gatehouse`, else `~/.config/gatehouse`.
fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GATEHOUSE_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("gatehouse"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config").join("gatehouse"))
        .ok_or_else(|| anyhow!("no home directory: set GATEHOUSE_CONFIG_DIR"))
}
