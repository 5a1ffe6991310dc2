//! Just-in-time grants end to end: requested with the CLI, approved like a review, seen by
//! policy as context.grants in a session that is already open, and lost at expiry or
//! revocation without reconnecting.

mod common;

use std::time::Duration;

use common::{APP_PASSWORD, Gateway, GatewayOptions, cluster, connect};

const POLICY: &str = r#"
@id("agents-basic")
permit(principal in Gatehouse::Group::"agents",
       action in [Gatehouse::Action::"connect", Gatehouse::Action::"read",
                  Gatehouse::Action::"transaction", Gatehouse::Action::"session"],
       resource);

@id("writes-with-a-grant")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"write", resource)
when { context.grants.contains("write") };
"#;

const GRANTS: &str = r#"
[[grants]]
name = "write"
approvers = ["dba"]
approvals = 1
max_duration = "1h"
connections = ["appdb"]
"#;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_elevates_a_live_session_until_it_expires_or_is_revoked() {
    cluster().psql_direct(
        "app",
        APP_PASSWORD,
        "appdb",
        "DROP TABLE IF EXISTS jit_t; CREATE TABLE jit_t (id int)",
    );
    let gw = Gateway::start_with(GatewayOptions {
        policies: vec![("jit.cedar".into(), POLICY.into())],
        extra_sections: GRANTS.into(),
        ..Default::default()
    });
    let agent = gw.token("agent", &["agents"]);
    let dba = gw.token("dba-1", &["dba"]);
    let session = connect(&gw, "appdb", &agent).await;
    let write = "INSERT INTO jit_t VALUES (1)";
    let denied = |r: Result<u64, tokio_postgres::Error>| {
        let e = r.expect_err("the write should be refused");
        assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{e}");
    };
    denied(session.execute(write, &[]).await);

    // Bad requests say what is wrong.
    for (args, expected) in [
        (
            vec!["appdb", "--grant", "root", "--for", "5m"],
            "no grant named \"root\"",
        ),
        (
            vec!["appdb", "--grant", "write", "--for", "2h"],
            "at most 1h",
        ),
        (
            vec!["proddb", "--grant", "write", "--for", "5m"],
            "cannot be requested for connection \"proddb\"",
        ),
    ] {
        let mut all = vec!["access", "request"];
        all.extend(args);
        all.extend(["--reason", "test"]);
        let out = gw.cli_as(&agent, &all);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }

    // A short grant: requested, not self-approvable, approved by a dba.
    let out = gw.cli_as(
        &agent,
        &[
            "access",
            "request",
            "appdb",
            "--grant",
            "write",
            "--for",
            "3s",
            "--reason",
            "hotfix OPS-7",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    denied(session.execute(write, &[]).await);
    let own = gw.cli_as(&agent, &["reviews", "approve", &id]);
    assert!(!own.status.success());
    let shown = gw.cli_as(&dba, &["reviews", "show", &id]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("hotfix OPS-7"));
    assert!(
        gw.cli_as(&dba, &["reviews", "approve", &id])
            .status
            .success()
    );

    // The open session may write now, without reconnecting...
    session
        .execute(write, &[])
        .await
        .expect("the grant is in force");
    let listed = gw.cli_json(&["access", "list"]);
    assert_eq!(listed["grants"][0]["name"], "write", "{listed}");
    // ... and loses it when it expires.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    denied(session.execute(write, &[]).await);

    // A longer grant ends when revoked.
    let out = gw.cli_as(
        &agent,
        &[
            "access",
            "request",
            "appdb",
            "--grant",
            "write",
            "--for",
            "30m",
            "--reason",
            "migration",
        ],
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        gw.cli_as(&dba, &["reviews", "approve", &id])
            .status
            .success()
    );
    session.execute(write, &[]).await.unwrap();
    let mine = gw.cli_as(&agent, &["access", "list", "--format", "json"]);
    let mine: serde_json::Value = serde_json::from_slice(&mine.stdout).unwrap();
    let grant_id = mine["grants"][0]["id"].as_str().unwrap().to_string();
    let out = gw.cli_as(&dba, &["access", "revoke", &grant_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    denied(session.execute(write, &[]).await);
    assert_eq!(
        cluster().psql_direct("app", APP_PASSWORD, "appdb", "SELECT count(*) FROM jit_t"),
        "2"
    );
}
