//! Statements held for human approval, end to end: psql and a driver send a statement that
//! policy allows only with an approval; the client is told the review id at once; approvers
//! act with the CLI; the rules (no self-approval, approver groups, N-of-M, first deny wins,
//! timeout, abandonment, cancel) hold.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Gateway, GatewayOptions, connect, driver_config};
use serde_json::Value;
use tokio_postgres::NoTls;

const POLICY: &str = r#"
@id("agents-basic")
permit(principal in Gatehouse::Group::"agents",
       action in [Gatehouse::Action::"connect", Gatehouse::Action::"read",
                  Gatehouse::Action::"transaction", Gatehouse::Action::"session"],
       resource);

@id("writes-need-dba")
@approvers("dba")
@approvals("1")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"write", resource)
when { context.approved && !(resource.hasTag("env") && resource.getTag("env") == "prod") };

@id("prod-writes-need-two")
@approvers("dba, security")
@approvals("2")
@timeout("3s")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"write", resource)
when { context.approved && resource.hasTag("env") && resource.getTag("env") == "prod" };

@id("dba-connect")
permit(principal in Gatehouse::Group::"dba", action == Gatehouse::Action::"connect", resource);
"#;

/// A gateway with the review policies, and a fresh table `table` the tests write to.
fn gateway(table: &str) -> Gateway {
    common::cluster().psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, note text)"),
    );
    Gateway::start_with(GatewayOptions {
        policies: vec![("reviews.cedar".into(), POLICY.into())],
        ..Default::default()
    })
}

/// The pending review of `connection`, once it exists.
fn pending_review(gw: &Gateway, connection: &str) -> Value {
    gw.wait_for("a pending review", || {
        let v = gw.cli_json(&["reviews", "list"]);
        v["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["connection"] == connection && r["state"] == "pending")
            .cloned()
    })
}

fn count(table: &str, note: &str) -> String {
    common::cluster().psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        &format!("SELECT count(*) FROM {table} WHERE note = '{note}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_statement_runs_once_after_approval_and_never_after_denial() {
    let gw = gateway("held_a");
    let agent = gw.token("agent", &["agents"]);
    let dba = gw.token("dba-1", &["dba"]);
    let outsider = gw.token("outsider", &["agents"]);

    // Simple protocol through psql: the notice names the review at once; psql waits.
    let conninfo = gw.conninfo("appdb", "require");
    let psql = {
        let agent = agent.clone();
        std::thread::spawn(move || {
            Command::new("psql")
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg("INSERT INTO held_a VALUES (1, 'approved-once')")
                .arg(conninfo)
                .env("PGPASSWORD", agent)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .expect("psql is installed (apt-get install -y postgresql-client)")
        })
    };
    let review = pending_review(&gw, "appdb");
    let id = review["id"].as_str().unwrap().to_string();
    assert_eq!(review["policy"], "writes-need-dba");
    assert_eq!(review["requester"], "gatehouse/agent");
    assert_eq!(
        review["text"],
        "INSERT INTO held_a VALUES (1, 'approved-once')"
    );
    assert_eq!(
        count("held_a", "approved-once"),
        "0",
        "nothing reaches the database while held"
    );

    // The requester cannot approve their own statement; a non-approver cannot either.
    let own = gw.cli_as(&agent, &["reviews", "approve", &id]);
    assert!(!own.status.success());
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("somebody else"),
        "{own:?}"
    );
    let other = gw.cli_as(&outsider, &["reviews", "approve", &id]);
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("only members of \"dba\""),
        "{other:?}"
    );
    // `reviews show` gives the approver everything.
    let shown = gw.cli_as(&dba, &["reviews", "show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        shown.contains("gatehouse/agent") && shown.contains("INSERT INTO held_a"),
        "{shown}"
    );
    assert!(
        shown.contains("write"),
        "the classification is shown: {shown}"
    );

    let ok = gw.cli_as(&dba, &["reviews", "approve", &id, "--reason", "looks fine"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = tokio::task::spawn_blocking(move || psql.join().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("review {id}")),
        "the notice names the review: {stderr}"
    );
    assert!(stderr.contains("gatehouse reviews approve"), "{stderr}");
    assert_eq!(count("held_a", "approved-once"), "1");
    let after = gw.cli_json(&["reviews", "show", &id]);
    assert_eq!(
        after["review"]["state"], "executed",
        "an approval is used once"
    );
    let again = gw.cli_as(&dba, &["reviews", "approve", &id]);
    assert!(
        !again.status.success(),
        "a used review cannot be approved again"
    );

    // Extended protocol through a driver: deny wins, the client gets who and why.
    let client = connect(&gw, "appdb", &agent).await;
    let held = tokio::spawn(async move {
        let r = client
            .execute("INSERT INTO held_a VALUES ($1, $2)", &[&2i32, &"denied"])
            .await;
        (client, r)
    });
    let review = pending_review(&gw, "appdb");
    let id = review["id"].as_str().unwrap().to_string();
    // Binary parameters are shown hex-encoded, exactly as sent.
    assert_eq!(
        review["params"],
        serde_json::json!(["\\x00000002", "\\x64656e696564"]),
        "{review}"
    );
    let no = gw.cli_as(
        &dba,
        &["reviews", "deny", &id, "--reason", "not on a Friday"],
    );
    assert!(
        no.status.success(),
        "{}",
        String::from_utf8_lossy(&no.stderr)
    );
    let (client, result) = held.await.unwrap();
    let err = result.expect_err("a denied statement fails");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("denied by dba-1: not on a Friday"),
        "{}",
        db.message()
    );
    assert_eq!(count("held_a", "denied"), "0");
    // The session goes on.
    client.simple_query("select 1").await.unwrap();

    // An approval covers one Execute: the same prepared statement with the same parameters
    // needs a new review each time it runs.
    let insert = client
        .prepare("INSERT INTO held_a VALUES ($1, $2)")
        .await
        .unwrap();
    let client = std::sync::Arc::new(client);
    for round in 0..2 {
        let (c, st) = (client.clone(), insert.clone());
        let held = tokio::spawn(async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&7i32, &"each-time"];
            c.execute(&st, &params).await
        });
        let review = gw.wait_for("a new pending review", || {
            let v = gw.cli_json(&["reviews", "list"]);
            v["reviews"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["state"] == "pending")
                .cloned()
        });
        let id = review["id"].as_str().unwrap().to_string();
        assert!(
            gw.cli_as(&dba, &["reviews", "approve", &id])
                .status
                .success()
        );
        held.await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    assert_eq!(count("held_a", "each-time"), "2");
    let executed = gw.cli_json(&["reviews", "list", "--state", "executed"]);
    assert_eq!(
        executed["reviews"].as_array().unwrap().len(),
        3,
        "{executed}"
    );

    // The record: the approved statement carries the review; the denied one is denied.
    let sessions = gw.cli_json(&["sessions", "list"]);
    let any_review = sessions["sessions"].as_array().unwrap().iter().any(|s| {
        let id = s["id"].as_str().unwrap();
        let shown = gw.cli_json(&["sessions", "show", id]);
        shown["statements"].as_array().unwrap().iter().any(|st| {
            st["decision"] == "review"
                && st["outcome"] == "ok"
                && st["policies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p.as_str().unwrap().starts_with("review:rv_"))
        })
    });
    assert!(
        any_review,
        "the approved statement's record names its review"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_two_approvers_timeout_cancel_and_abandonment() {
    let gw = gateway("held_b");
    let agent = gw.token("agent", &["agents"]);
    let dba = gw.token("dba-1", &["dba"]);
    let dba2 = gw.token("dba-2", &["dba"]);
    let sec = gw.token("sec-1", &["security"]);

    // Two approvals needed (prod): one is not enough, the same approver twice does not count.
    let client = connect(&gw, "proddb", &agent).await;
    let held = tokio::spawn(async move {
        let r = client
            .simple_query("INSERT INTO held_b VALUES (3, 'two-of-two')")
            .await;
        (client, r)
    });
    let review = pending_review(&gw, "proddb");
    let id = review["id"].as_str().unwrap().to_string();
    assert!(
        gw.cli_as(&dba, &["reviews", "approve", &id])
            .status
            .success()
    );
    let twice = gw.cli_as(&dba, &["reviews", "approve", &id]);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already voted"),
        "{twice:?}"
    );
    assert_eq!(
        gw.cli_json(&["reviews", "show", &id])["review"]["state"],
        "pending"
    );
    assert!(
        gw.cli_as(&sec, &["reviews", "approve", &id])
            .status
            .success()
    );
    let (client, result) = held.await.unwrap();
    result.expect("approved by two approvers");
    assert_eq!(count("held_b", "two-of-two"), "1");

    // Nobody decides within the policy's 3 s: refused, and the review is expired.
    let started = std::time::Instant::now();
    let err = client
        .simple_query("INSERT INTO held_b VALUES (4, 'timed-out')")
        .await
        .expect_err("no decision in time");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.as_db_error().unwrap().message().contains("in time"),
        "{err}"
    );
    let expired = gw.cli_json(&["reviews", "list", "--state", "expired"]);
    assert_eq!(expired["reviews"].as_array().unwrap().len(), 1, "{expired}");

    // A CancelRequest (Ctrl-C in psql) ends the wait with 57014.
    let cancel = client.cancel_token();
    let held = tokio::spawn(async move {
        let r = client
            .simple_query("INSERT INTO held_b VALUES (5, 'canceled')")
            .await;
        (client, r)
    });
    let canceled = pending_review(&gw, "proddb");
    cancel.cancel_query(NoTls).await.unwrap();
    let (client, result) = held.await.unwrap();
    let err = result.expect_err("canceled");
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014", "{err}");
    client.simple_query("select 1").await.unwrap();
    // Nobody waits for it any more: it is abandoned, not left for an approver to approve.
    let canceled = canceled["id"].as_str().unwrap();
    let shown = gw.cli_json(&["reviews", "show", canceled]);
    assert_eq!(shown["review"]["state"], "abandoned", "{shown}");

    // The client leaves while waiting: the review is abandoned and never runs, even if
    // approved later.
    let (c2, conn) = driver_config(&gw, "proddb", &agent)
        .connect(NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let held = tokio::spawn(async move {
        c2.simple_query("INSERT INTO held_b VALUES (6, 'abandoned')")
            .await
    });
    let review = pending_review(&gw, "proddb");
    let id = review["id"].as_str().unwrap().to_string();
    held.abort();
    conn.abort();
    gw.wait_for("the review to be abandoned", || {
        let r = gw.cli_json(&["reviews", "show", &id]);
        (r["review"]["state"] == "abandoned").then_some(())
    });
    let late = gw.cli_as(&dba2, &["reviews", "approve", &id]);
    assert!(
        !late.status.success(),
        "an abandoned review cannot be approved"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count("held_b", "abandoned"), "0");
    // The audit log tells it: created, then abandoned.
    let kinds: Vec<String> = gw
        .audit_records()
        .into_iter()
        .filter(|r| r["data"]["review"] == id.as_str())
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("review.created"));
    assert!(kinds.iter().any(|k| k == "review.abandoned"), "{kinds:?}");
}

fn exec(gw: &Gateway, token: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["exec"];
    all.extend(args);
    gw.cli_as(token, &all)
}

/// `gatehouse exec appdb -e <sql>` in a thread, as a script that waits for its approval.
fn spawn_exec(
    gw: &Gateway,
    token: &str,
    sql: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    let (url, token, sql) = (gw.url(), token.to_string(), sql.to_string());
    std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["exec", "appdb", "-e", &sql])
            .env("GATEHOUSE_URL", url)
            .env("GATEHOUSE_TOKEN", token)
            .output()
            .unwrap()
    })
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_one_command_and_reviews_outlive_the_request_and_a_restart() {
    let mut gw = gateway("held_c");
    let agent = gw.token("agent", &["agents"]);
    let dba = gw.token("dba-1", &["dba"]);
    let other = gw.token("other-agent", &["agents"]);

    // Allowed: rows come back as a table.
    let out = exec(
        &gw,
        &agent,
        &["appdb", "-e", "select 1 as one, null::text as nothing"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("one") && stdout.contains("NULL") && stdout.contains("SELECT 1"),
        "{stdout}"
    );
    let json = gw.cli_as(
        &agent,
        &["exec", "appdb", "-e", "select 2 as two", "--format", "json"],
    );
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["results"][0]["rows"][0][0], "2", "{v}");
    // Denied by policy: exit 4 with the policy named. A failing command: exit 1 with SQLSTATE.
    let out = exec(&gw, &agent, &["appdb", "-e", "create table nope (a int)"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gatehouse.no-permit"),
        "{}",
        stderr(&out)
    );
    let out = exec(&gw, &agent, &["appdb", "-e", "select * from no_such_table"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("42P01"), "{}", stderr(&out));

    // Needs review, --no-wait: the review id on stdout, exit 3; nothing runs.
    let out = exec(
        &gw,
        &agent,
        &[
            "appdb",
            "--no-wait",
            "-e",
            "INSERT INTO held_c VALUES (1, 'later')",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("rv_"), "{id}");
    assert_eq!(count("held_c", "later"), "0");

    // The review survives a gateway restart; a statement held on a live session does not (its
    // connection is gone), so that review is abandoned.
    let (held_client, conn) = driver_config(&gw, "appdb", &agent)
        .connect(NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let held = tokio::spawn(async move {
        held_client
            .simple_query("INSERT INTO held_c VALUES (9, 'lost')")
            .await
    });
    let held_id = gw.wait_for("the held statement's review", || {
        let v = gw.cli_json(&["reviews", "list"]);
        v["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "statement" && r["state"] == "pending")
            .map(|r| r["id"].as_str().unwrap().to_string())
    });
    gw.restart();
    held.abort();
    conn.abort();
    let lost = gw.cli_json(&["reviews", "show", &held_id]);
    assert_eq!(lost["review"]["state"], "abandoned", "{lost}");
    assert!(
        !gw.cli_as(&dba, &["reviews", "approve", &held_id])
            .status
            .success()
    );
    let not_yet = exec(&gw, &agent, &["appdb", "--review", &id]);
    assert_eq!(not_yet.status.code(), Some(1));
    assert!(stderr(&not_yet).contains("pending"), "{}", stderr(&not_yet));
    assert!(
        gw.cli_as(&dba, &["reviews", "approve", &id])
            .status
            .success()
    );
    // Only its requester may run it, only the reviewed text, once.
    let theirs = exec(&gw, &other, &["appdb", "--review", &id]);
    assert!(!theirs.status.success());
    assert!(stderr(&theirs).contains("no review"), "{}", stderr(&theirs));
    let changed = exec(
        &gw,
        &agent,
        &["appdb", "--review", &id, "-e", "DELETE FROM held_c"],
    );
    assert!(!changed.status.success());
    assert!(stderr(&changed).contains("differs"), "{}", stderr(&changed));
    let ran = exec(&gw, &agent, &["appdb", "--review", &id]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert!(String::from_utf8_lossy(&ran.stdout).contains("INSERT 0 1"));
    assert_eq!(count("held_c", "later"), "1");
    let again = exec(&gw, &agent, &["appdb", "--review", &id]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("executed"), "{}", stderr(&again));
    assert_eq!(count("held_c", "later"), "1");

    // Waiting (the default): a spinner with the review id, then the result once approved.
    let waiting = spawn_exec(&gw, &agent, "INSERT INTO held_c VALUES (2, 'waited')");
    let review = pending_review(&gw, "appdb");
    let id = review["id"].as_str().unwrap().to_string();
    assert_eq!(review["kind"], "exec");
    assert!(
        gw.cli_as(&dba, &["reviews", "approve", &id])
            .status
            .success()
    );
    let out = tokio::task::spawn_blocking(move || waiting.join().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("waiting for approval of review {id}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(count("held_c", "waited"), "1");

    // A denial ends the wait with exit 4 and the reason.
    let waiting = spawn_exec(&gw, &agent, "INSERT INTO held_c VALUES (3, 'refused')");
    let id = pending_review(&gw, "appdb")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let no = gw.cli_as(&dba, &["reviews", "deny", &id, "--reason", "no"]);
    assert!(no.status.success(), "{}", stderr(&no));
    let out = tokio::task::spawn_blocking(move || waiting.join().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("denied: no"), "{}", stderr(&out));
    assert_eq!(count("held_c", "refused"), "0");
}
