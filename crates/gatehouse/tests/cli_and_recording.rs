//! Every statement is recorded, and the CLI shows sessions, statements and tokens.

mod common;

use std::process::Command;

use common::{Gateway, driver_config, raw};
use serde_json::Value;
use tokio_postgres::NoTls;

fn session_of(gw: &Gateway, application: &str, statements: i64) -> Value {
    gw.wait_for("the session to be recorded", || {
        let list = gw.cli_json(&["sessions", "list"]);
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["application_name"] == application
                    && s["statement_count"].as_i64() == Some(statements)
                    && !s["ended_at"].is_null()
            })
            .cloned()
    })
}

#[tokio::test]
async fn statements_are_recorded_with_identity_rows_outcome_and_parameters() {
    let gw = Gateway::start();
    let token = gw.token("ci-bot", &["agents"]);
    let mut config = driver_config(&gw, "appdb", &token);
    config.application_name("recording-test");
    let (client, conn) = config.connect(NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    client
        .simple_query("select generate_series(1, 3)")
        .await
        .unwrap();
    client
        .simple_query("select * from no_such_table")
        .await
        .unwrap_err();
    let stmt = client.prepare("select $1::int + 1").await.unwrap();
    client.query(&stmt, &[&41i32]).await.unwrap();
    client
        .query("select $1::text", &[&"two\nlines"])
        .await
        .unwrap();
    drop(client);
    conn.await.unwrap().unwrap();

    let session = session_of(&gw, "recording-test", 4);
    assert_eq!(session["principal"], "gatehouse/ci-bot");
    assert_eq!(session["connection"], "appdb");
    assert_eq!(session["identity_kind"], "service");
    assert_eq!(session["groups"], serde_json::json!(["agents"]));
    assert_eq!(session["end_reason"], "client_terminated");
    assert!(
        session["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let id = session["id"].as_str().unwrap();
    let shown = gw.cli_json(&["sessions", "show", id]);
    let st = shown["statements"].as_array().unwrap();
    assert_eq!(st[0]["text"], "select generate_series(1, 3)");
    assert_eq!(st[0]["rows"], 3);
    assert_eq!(st[0]["outcome"], "ok");
    assert_eq!(st[1]["outcome"], "error");
    assert_eq!(st[1]["sqlstate"], "42P01");
    assert_eq!(st[2]["text"], "select $1::int + 1");
    // tokio-postgres binds in binary: recorded as hex.
    assert_eq!(st[2]["params"], serde_json::json!(["\\x00000029"]));
    assert_eq!(st[2]["rows"], 1);
    assert_eq!(
        st[3]["params"],
        serde_json::json!(["\\x74776f0a6c696e6573"])
    );
    for s in st {
        assert!(s["duration_us"].as_i64().unwrap() >= 0);
        assert!(s["started_at"].as_str().unwrap().ends_with('Z'));
    }

    // The table view escapes control characters so a statement cannot forge lines.
    let table = gw.cli_ok(&["sessions", "show", id]);
    assert!(table.contains("gatehouse/ci-bot"), "{table}");
    assert!(table.contains("error 42P01"), "{table}");
    assert!(table.contains("select generate_series(1, 3)"), "{table}");
    let list = gw.cli_ok(&["sessions", "list"]);
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains(id), "{list}");
}

#[tokio::test]
async fn refused_and_unanswered_commands_are_recorded_too() {
    let gw = Gateway::start();
    let token = gw.token("raw", &[]);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.pg_port))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(&raw::startup(
        raw::PROTOCOL_3_0,
        &[
            ("user", "a"),
            ("database", "appdb"),
            ("application_name", "refusals"),
        ],
    ))
    .await
    .unwrap();
    raw::read_msg(&mut s).await.unwrap();
    s.write_all(&raw::password(&token)).await.unwrap();
    raw::until_ready(&mut s).await;
    let mut body = 1598i32.to_be_bytes().to_vec();
    body.extend([0, 0, 0, 0, 0, 0]);
    s.write_all(&raw::msg(b'F', &body)).await.unwrap();
    raw::until_ready(&mut s).await;
    // A statement still running when the client vanishes.
    s.write_all(&raw::query("select pg_sleep(0.5)"))
        .await
        .unwrap();
    drop(s);

    let session = session_of(&gw, "refusals", 2);
    let shown = gw.cli_json(&["sessions", "show", session["id"].as_str().unwrap()]);
    let st = shown["statements"].as_array().unwrap();
    assert_eq!(st[0]["outcome"], "denied");
    assert_eq!(st[0]["sqlstate"], "42501");
    assert_eq!(st[1]["outcome"], "unknown");
    assert_eq!(session["end_reason"], "client_closed");
}

#[test]
fn tokens_are_listed_without_values_and_revoked_by_id() {
    let gw = Gateway::start();
    let created = gw.cli_json(&[
        "token", "create", "--name", "lister", "--group", "agents", "--group", "ci", "--ttl", "30d",
    ]);
    let value = created["token"].as_str().unwrap();
    assert!(value.starts_with("gatehouse_sa_"));
    assert_eq!(created["groups"], serde_json::json!(["agents", "ci"]));
    assert!(!created["expires_at"].is_null());

    let listing = gw.cli_ok(&["token", "list"]);
    assert!(listing.contains("lister"));
    assert!(
        !listing.contains(value),
        "a listing must never show a token"
    );
    let json = gw.cli_ok(&["token", "list", "--format", "json"]);
    assert!(!json.contains(value));

    let id = created["id"].as_str().unwrap();
    assert!(gw.cli_ok(&["token", "revoke", id]).contains("revoked 1"));
    let again = gw.cli(&["token", "revoke", id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live token"));
    let tokens = gw.cli_json(&["token", "list"]);
    let row = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap()
        .clone();
    assert!(!row["revoked_at"].is_null());
}

#[test]
fn the_api_refuses_what_the_caller_may_not_do_and_says_why() {
    let gw = Gateway::start();
    let agent = gw.token("agent", &["agents"]);

    let out = gw.cli_as(&agent, &["sessions", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group \"admin\""), "{err}");
    assert!(err.contains("403"), "{err}");

    let out = gw.cli_as("gatehouse_sa_wrong", &["whoami"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Gatehouse token"));

    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["whoami"])
        .env("GATEHOUSE_URL", gw.url())
        .env_remove("GATEHOUSE_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("GATEHOUSE_TOKEN"));

    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["whoami", "--url", "http://127.0.0.1:1", "--token", &agent])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway"));

    let me = gw.cli_as(&agent, &["whoami", "--format", "json"]);
    let me: Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(me["subject"], "agent");
    assert_eq!(me["groups"], serde_json::json!(["agents"]));

    let connections = gw.cli_as(&agent, &["connections", "list"]);
    let text = String::from_utf8_lossy(&connections.stdout);
    assert!(
        text.contains("appdb") && text.contains("env=test"),
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.1"),
        "connection hosts are not shown to callers"
    );
}

#[test]
fn check_reports_every_problem_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\napi_listen = \"nowhere\"\n[[connections]]\nname = \"x\"\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"\nuser = \"u\"\npassword = \"plaintext-secret\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.api_listen"), "{err}");
    assert!(err.contains("connections[0].password"), "{err}");
    assert!(!err.contains("plaintext-secret"), "{err}");

    let missing_env = dir.path().join("env.toml");
    std::fs::write(
        &missing_env,
        "[[connections]]\nname = \"x\"\nkind = \"postgres\"\nhost = \"db.example\"\ndatabase = \"d\"\nuser = \"u\"\npassword = \"env:GATEHOUSE_TEST_SURELY_UNSET\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&missing_env)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GATEHOUSE_TEST_SURELY_UNSET"), "{err}");
    assert!(err.contains("warning: connections[0].tls"), "{err}");
    assert!(
        err.contains("warning: policy.files"),
        "no policy configured must be warned about: {err}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gatehouse.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_token_limited_to_networks_works_only_from_them() {
    let gw = Gateway::start();
    let elsewhere = gw.cli_ok(&[
        "token",
        "create",
        "--name",
        "dc-bot",
        "--allow-network",
        "10.0.0.0/8",
    ]);
    let here = gw.cli_ok(&[
        "token",
        "create",
        "--name",
        "local-bot",
        "--allow-network",
        "127.0.0.0/8",
        "--allow-network",
        "::1",
    ]);

    let err = driver_config(&gw, "appdb", elsewhere.trim())
        .connect(NoTls)
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "28P01");
    assert!(
        db.message().contains("may not be used from 127.0.0.1"),
        "{}",
        db.message()
    );
    let client = common::connect(&gw, "appdb", here.trim()).await;
    client.simple_query("select 1").await.unwrap();

    // The API applies the same rule.
    let out = gw.cli_as(elsewhere.trim(), &["whoami"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not be used from"));
    assert!(gw.cli_as(here.trim(), &["whoami"]).status.success());

    let listing = gw.cli_ok(&["token", "list"]);
    assert!(listing.contains("10.0.0.0/8"), "{listing}");
    let bad = gw.cli(&[
        "token",
        "create",
        "--name",
        "x",
        "--allow-network",
        "10.0.0.0/33",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a network"));
}
