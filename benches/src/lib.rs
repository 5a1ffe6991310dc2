//! Fixtures shared by the benchmarks: a realistic identity, connection and policy set.

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_core::config::{ConnectionConfig, ConnectionKind, UpstreamTls};
use gatehouse_core::identity::{Identity, IdentityKind};
use gatehouse_policy::PolicyEngine;

/// Statements typical of agents and ORMs.
pub const TYPICAL: &[(&str, &str)] = &[
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        "pgbench_update",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ),
    (
        "join",
        "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > now() - interval '1 day' ORDER BY o.id LIMIT 50",
    ),
    (
        "insert",
        "INSERT INTO events (kind, payload, created_at) VALUES ($1, $2, now()) RETURNING id",
    ),
    (
        "cte",
        "WITH recent AS (SELECT * FROM orders WHERE status = 'open') SELECT count(*), sum(total) FROM recent GROUP BY customer_id HAVING count(*) > 2",
    ),
];

pub fn connection() -> ConnectionConfig {
    ConnectionConfig {
        name: "proddb".into(),
        kind: ConnectionKind::Postgres,
        host: "db".into(),
        port: 5432,
        database: "app".into(),
        user: "gatehouse".into(),
        password: None,
        tls: UpstreamTls::Disable,
        ca_file: None,
        tags: BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            ("team".to_string(), "payments".to_string()),
        ]),
    }
}

pub fn identity() -> Identity {
    Identity {
        subject: "ci-bot".into(),
        issuer: "gatehouse".into(),
        display_name: "ci-bot".into(),
        kind: IdentityKind::Service,
        groups: vec!["agents".into(), "team-7".into()],
        token_id: "tok".into(),
        expires_at: None,
    }
}

/// The shipped examples plus `extra` generated policies (per-team rules on tags and relations).
pub fn engine(dir: &Path, extra: usize) -> PolicyEngine {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    for entry in std::fs::read_dir(&examples).expect("examples/policies") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
    }
    let mut generated = String::new();
    for i in 0..extra {
        generated.push_str(&format!(
            "@id(\"team-{i}-reads\")\npermit(principal in Gatehouse::Group::\"team-{i}\", action == Gatehouse::Action::\"read\", resource)\n\
             when {{ resource.hasTag(\"team\") && resource.getTag(\"team\") == \"team{i}\" && !context.relations.contains(\"secret.t{i}\") }};\n"
        ));
    }
    std::fs::write(dir.join("generated.cedar"), generated).expect("write");
    let policies =
        gatehouse_policy::load::load(&["*.cedar".to_string()], dir).expect("policies load");
    PolicyEngine::new(policies)
}
