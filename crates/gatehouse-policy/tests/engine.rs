//! The engine with the shipped example policies.

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_core::classify::{Classification, Statement, StatementKind};
use gatehouse_core::config::{ConnectionConfig, ConnectionKind, UpstreamTls};
use gatehouse_core::identity::{Identity, IdentityKind};
use gatehouse_core::pipeline::Verdict;
use gatehouse_policy::{Evaluation, PolicyEngine, RequestFacts, load::load};

fn examples() -> PolicyEngine {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    PolicyEngine::new(load(&["policies/*.cedar".to_string()], &base).unwrap())
}

fn connection(env: &str) -> ConnectionConfig {
    ConnectionConfig {
        name: format!("db-{env}"),
        kind: ConnectionKind::Postgres,
        host: "h".into(),
        port: 5432,
        database: "d".into(),
        user: "u".into(),
        password: None,
        tls: UpstreamTls::Disable,
        ca_file: None,
        tags: BTreeMap::from([("env".to_string(), env.to_string())]),
    }
}

fn who(groups: &[&str]) -> Identity {
    Identity {
        subject: "bot".into(),
        issuer: "gatehouse".into(),
        display_name: "bot".into(),
        kind: IdentityKind::Service,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        token_id: "t".into(),
        expires_at: None,
    }
}

fn statement(kind: StatementKind) -> Classification {
    Classification::Statements {
        statements: vec![Statement {
            command: "X".into(),
            kind,
            relations: vec!["public.t".into()],
            functions: vec![],
            prepares: None,
            executes: None,
        }],
    }
}

fn decide(engine: &PolicyEngine, groups: &[&str], env: &str, c: &Classification) -> Evaluation {
    let identity = who(groups);
    let conn = connection(env);
    let facts = RequestFacts {
        identity: &identity,
        connection: &conn,
        client_ip: [127, 0, 0, 1].into(),
        protocol: "postgres",
        grants: &[],
    };
    engine.decide(&facts, c)
}

#[test]
fn agents_read_everywhere_and_write_outside_prod() {
    let e = examples();
    assert_eq!(
        decide(&e, &["agents"], "prod", &statement(StatementKind::Read)).verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&e, &["agents"], "dev", &statement(StatementKind::Write)).verdict,
        Verdict::Allow
    );
    let ev = decide(&e, &["agents"], "dev", &statement(StatementKind::Read));
    assert_eq!(ev.policies, vec!["agents-read"]);
}

#[test]
fn writes_in_prod_need_a_dba_approval() {
    let e = examples();
    let ev = decide(&e, &["agents"], "prod", &statement(StatementKind::Write));
    let Verdict::Review(review) = ev.verdict else {
        panic!("{ev:?}")
    };
    assert_eq!(review.policy, "prod-writes-need-dba-approval");
    assert_eq!(review.approvers, vec!["dba"]);
    assert_eq!(review.approvals, 1);
    assert_eq!(
        review.timeout, None,
        "no @timeout: the configured default applies"
    );
}

#[test]
fn forbids_name_the_deciding_policy() {
    let e = examples();
    let ev = decide(&e, &["dba"], "prod", &statement(StatementKind::Ddl));
    let Verdict::Deny(d) = ev.verdict else {
        panic!("{ev:?}")
    };
    assert_eq!(d.policy, "no-ddl-in-prod");
    let ev = decide(&e, &["dba"], "dev", &statement(StatementKind::Admin));
    let Verdict::Deny(d) = ev.verdict else {
        panic!("{ev:?}")
    };
    assert_eq!(d.policy, "no-admin");
    // Nothing permits exec for agents: the default deny says so.
    let ev = decide(&e, &["agents"], "dev", &statement(StatementKind::Exec));
    let Verdict::Deny(d) = ev.verdict else {
        panic!("{ev:?}")
    };
    assert_eq!(d.policy, gatehouse_policy::NO_PERMIT);
    assert!(d.reason.contains("exec"), "{}", d.reason);
}

#[test]
fn one_denied_statement_denies_the_whole_command() {
    let e = examples();
    let c = Classification::Statements {
        statements: vec![
            Statement {
                command: "SELECT".into(),
                kind: StatementKind::Read,
                relations: vec![],
                functions: vec![],
                prepares: None,
                executes: None,
            },
            Statement {
                command: "DROP".into(),
                kind: StatementKind::Ddl,
                relations: vec![],
                functions: vec![],
                prepares: None,
                executes: None,
            },
        ],
    };
    assert!(matches!(
        decide(&e, &["agents", "dba"], "prod", &c).verdict,
        Verdict::Deny(_)
    ));
    let refused = Classification::refused("cannot be parsed");
    let ev = decide(&e, &["dba"], "dev", &refused);
    let Verdict::Deny(d) = ev.verdict else {
        panic!()
    };
    assert_eq!(d.policy, "gatehouse.classifier");
}

#[test]
fn without_policy_files_only_admins_may_act() {
    let e = PolicyEngine::new(load(&[], Path::new(".")).unwrap());
    assert!(matches!(
        decide(&e, &["agents"], "dev", &statement(StatementKind::Read)).verdict,
        Verdict::Deny(_)
    ));
    assert_eq!(
        decide(&e, &["admin"], "dev", &statement(StatementKind::Admin)).verdict,
        Verdict::Allow
    );
    let identity = who(&["agents"]);
    let conn = connection("dev");
    let facts = RequestFacts {
        identity: &identity,
        connection: &conn,
        client_ip: [127, 0, 0, 1].into(),
        protocol: "postgres",
        grants: &[],
    };
    assert!(matches!(e.decide_connect(&facts).verdict, Verdict::Deny(_)));
}

#[test]
fn bad_files_are_rejected_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let load_one = |name: &str| {
        load(&[name.to_string()], dir.path())
            .err()
            .expect("must fail")
            .to_string()
    };

    write(
        "syntax.cedar",
        "permit(principal, action, resource) when { ;",
    );
    assert!(load_one("syntax.cedar").contains("syntax.cedar"));

    write(
        "schema.cedar",
        "permit(principal, action == Gatehouse::Action::\"read\", resource) when { context.no_such_field };",
    );
    assert!(
        load_one("schema.cedar").contains("schema"),
        "{}",
        load_one("schema.cedar")
    );

    write(
        "action.cedar",
        "permit(principal, action == Gatehouse::Action::\"fly\", resource);",
    );
    assert!(load_one("action.cedar").contains("schema"));

    assert!(load_one("missing-*.cedar").contains("matches no file"));

    for (name, annotation, expected) in [
        ("n.cedar", "@approvals(\"two\")", "@approvals"),
        ("z.cedar", "@approvals(\"0\")", "@approvals"),
        ("t.cedar", "@timeout(\"soon\")", "@timeout"),
        ("g.cedar", "@approvers(\" , \")", "@approvers"),
    ] {
        write(
            name,
            &format!(
                "@id(\"typo\") {annotation} permit(principal, action, resource) when {{ context.approved }};"
            ),
        );
        let message = load_one(name);
        assert!(
            message.contains(expected) && message.contains("typo"),
            "{message}"
        );
    }

    write(
        "a.cedar",
        "@id(\"same\") permit(principal, action, resource);",
    );
    write(
        "b.cedar",
        "@id(\"same\") permit(principal, action, resource);",
    );
    assert!(load(&["*.cedar".to_string()], dir.path()).is_err());
}

/// A session remembers its decisions by every input of the request: the same statement shape
/// gets the same answer, and a change of grant or relation is decided afresh.
#[test]
fn a_sessions_remembered_decisions_follow_its_grants_and_relations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"
@id("read-all")
permit(principal, action == Gatehouse::Action::"read", resource);
@id("write-with-grant")
permit(principal, action == Gatehouse::Action::"write", resource)
  when { context.grants.contains("write-window") };
@id("no-secrets")
forbid(principal, action in [Gatehouse::Action::"read", Gatehouse::Action::"write"], resource)
  when { context.relations.contains("public.secrets") };
"#,
    )
    .unwrap();
    let engine = PolicyEngine::new(load(&["p.cedar".to_string()], dir.path()).unwrap());
    let identity = who(&["agents"]);
    let conn = connection("dev");
    let cache = engine.session_cache(&identity, &conn);
    let on = |relation: &str, kind: StatementKind, grants: &[String]| {
        let facts = RequestFacts {
            identity: &identity,
            connection: &conn,
            client_ip: [127, 0, 0, 1].into(),
            protocol: "postgres",
            grants,
        };
        let c = Classification::Statements {
            statements: vec![Statement {
                command: "X".into(),
                kind,
                relations: vec![relation.into()],
                functions: vec![],
                prepares: None,
                executes: None,
            }],
        };
        engine.decide_cached(&cache, &facts, &c).verdict
    };
    let none: Vec<String> = Vec::new();
    let granted = vec!["write-window".to_string()];
    for _ in 0..2 {
        assert_eq!(on("public.t", StatementKind::Read, &none), Verdict::Allow);
        assert!(matches!(
            on("public.secrets", StatementKind::Read, &none),
            Verdict::Deny(d) if d.policy == "no-secrets"
        ));
        assert!(matches!(
            on("public.t", StatementKind::Write, &none),
            Verdict::Deny(_)
        ));
        assert_eq!(
            on("public.t", StatementKind::Write, &granted),
            Verdict::Allow
        );
        assert!(matches!(
            on("public.t", StatementKind::Write, &none),
            Verdict::Deny(_)
        ));
    }
}
