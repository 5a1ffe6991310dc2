//! Policy loading for `serve`, hot reload, and the `gatehouse policy` commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use gatehouse_core::config::Config;
use gatehouse_core::identity::{GATEHOUSE_ISSUER, Identity, IdentityKind};
use gatehouse_core::pipeline::Verdict;
use gatehouse_policy::{PolicyEngine, PolicySource, RequestFacts};
use serde_json::json;

use crate::cli::Format;

/// Loads the configured policies or says exactly why not.
pub fn load(config: &Config) -> anyhow::Result<gatehouse_policy::Policies> {
    gatehouse_policy::load::load(&config.policy.files, &config.policy.base)
        .context("cannot load the policies")
}

/// What the policy files look like now: changes when a file is added, removed or touched.
fn fingerprint(config: &Config) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut all = Vec::new();
    for pattern in &config.policy.files {
        let full = config.policy.base.join(pattern);
        if let Ok(paths) = glob::glob(&full.to_string_lossy()) {
            for path in paths.flatten() {
                let meta = std::fs::metadata(&path).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                all.push((path, modified, meta.map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    all.sort();
    all
}

/// Reloads policies when their files change or on SIGHUP. An invalid new set is logged and
/// the running one kept.
pub async fn watch(
    config: Arc<Config>,
    engine: Arc<PolicyEngine>,
    audit: gatehouse_audit::AuditLog,
) {
    if config.policy.files.is_empty() {
        return;
    }
    let mut seen = fingerprint(&config);
    let mut tick = tokio::time::interval(config.policy.reload_interval);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        #[cfg(not(unix))]
        let forced = {
            tick.tick().await;
            false
        };
        let now = fingerprint(&config);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match gatehouse_policy::load::load(&config.policy.files, &config.policy.base) {
            Ok(policies) => {
                let count = policies.set.policies().count();
                let ids: Vec<String> = policies
                    .set
                    .policies()
                    .map(|p| p.id().to_string())
                    .collect();
                engine.replace(policies);
                tracing::info!(policies = count, "policies reloaded");
                audit.append_detached(gatehouse_audit::Event::new(
                    "policy.reloaded",
                    None,
                    serde_json::json!({ "policies": ids }),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload failed; keeping the policies in force")
            }
        }
    }
}

pub fn check(config: &Config) -> anyhow::Result<ExitCode> {
    match gatehouse_policy::load::load(&config.policy.files, &config.policy.base) {
        Ok(p) => {
            match &p.source {
                PolicySource::Default => println!(
                    "no policy files configured: only members of group \"admin\" may connect or run anything"
                ),
                PolicySource::Files(files) => println!(
                    "OK: {} policies from {} file(s) match the Gatehouse schema",
                    p.set.policies().count(),
                    files.len()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Who `explain` evaluates as: `--as NAME` (a service account) or `--as group:NAME`.
pub fn identity_for(as_whom: &str, groups: &[String]) -> Identity {
    let mut groups = groups.to_vec();
    let subject = match as_whom.strip_prefix("group:") {
        Some(g) => {
            groups.push(g.to_string());
            format!("member-of-{g}")
        }
        None => as_whom.to_string(),
    };
    Identity {
        display_name: subject.clone(),
        subject,
        issuer: GATEHOUSE_ISSUER.into(),
        kind: IdentityKind::Service,
        groups,
        token_id: "explain".into(),
        expires_at: None,
    }
}

pub fn explain(
    config: &Config,
    as_whom: &str,
    groups: &[String],
    connection: &str,
    sql: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let engine = PolicyEngine::new(load(config)?);
    let Some(conn) = config.connection(connection) else {
        anyhow::bail!(
            "no connection named \"{connection}\" in {}",
            config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    };
    let identity = identity_for(as_whom, groups);
    let classification = gatehouse_pgsql::classify(sql);
    let facts = RequestFacts {
        identity: &identity,
        connection: conn,
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        protocol: "postgres",
        grants: &[],
    };
    let evaluation = engine.decide(&facts, &classification);
    let (decision, detail) = match &evaluation.verdict {
        Verdict::Allow => ("allow", json!(null)),
        Verdict::Deny(d) => ("deny", json!({ "policy": d.policy, "reason": d.reason })),
        Verdict::Review(r) => (
            "review",
            json!({ "policy": r.policy, "approvers": r.approvers, "approvals": r.approvals }),
        ),
    };
    let out = json!({
        "decision": decision,
        "principal": identity.principal(),
        "groups": identity.groups,
        "connection": conn.name,
        "classification": classification,
        "action": evaluation.action,
        "policies": evaluation.policies,
        "detail": detail,
    });
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "principal       {} (groups: {})",
            identity.principal(),
            identity.groups.join(",")
        );
        println!("connection      {}", conn.name);
        match &classification {
            gatehouse_core::classify::Classification::Refused { reason } => {
                println!("classification  refused: {reason}")
            }
            gatehouse_core::classify::Classification::Statements { statements } => {
                for s in statements {
                    println!(
                        "statement       {} ({}) relations=[{}] functions=[{}]",
                        s.command,
                        s.kind.action(),
                        s.relations.join(","),
                        s.functions.join(",")
                    );
                }
            }
        }
        println!("decision        {decision}");
        if !detail.is_null() {
            println!("detail          {detail}");
        }
        println!("policies        {}", evaluation.policies.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
