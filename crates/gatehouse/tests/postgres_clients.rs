//! Real clients (psql, pgbench, tokio-postgres) through the gateway to a real PostgreSQL.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{APP_PASSWORD, Gateway, driver_config, raw};
use tokio_postgres::NoTls;

#[test]
fn psql_queries_describes_and_copies_both_ways() {
    let gw = Gateway::start();
    let token = gw.token("ci-bot", &["agents"]);

    let (ok, out, err) = gw.psql(&token, "appdb", &["-A", "-t", "-c", "select 40 + 2"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");

    let (ok, _, err) = gw.psql(
        &token,
        "appdb",
        &[
            "-c",
            "create table if not exists psql_items (id int primary key, name text)",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = gw.psql(&token, "appdb", &["-c", "\\d psql_items"], None);
    assert!(ok, "{err}");
    assert!(out.contains("Table \"public.psql_items\""), "{out}");
    assert!(out.contains("name"), "{out}");

    let (ok, out, err) = gw.psql(
        &token,
        "appdb",
        &["-c", "copy psql_items from stdin with (format csv)"],
        Some("1,one\n2,two\n3,\"th,ree\"\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("COPY 3"), "{out}");
    let (ok, out, err) = gw.psql(
        &token,
        "appdb",
        &[
            "-c",
            "copy (select * from psql_items order by id) to stdout with (format csv)",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "1,one\n2,two\n3,\"th,ree\"\n");

    // A COPY the server rejects mid-stream leaves the session usable.
    let (ok, _, err) = gw.psql(
        &token,
        "appdb",
        &["-c", "copy psql_items from stdin with (format csv)"],
        Some("4,four\nnot-a-number,x\n"),
    );
    assert!(!ok);
    assert!(err.contains("invalid input syntax"), "{err}");
    let (_, out, _) = gw.psql(
        &token,
        "appdb",
        &["-A", "-t", "-c", "select count(*) from psql_items"],
        None,
    );
    assert_eq!(out.trim(), "3");
}

#[test]
fn psql_works_without_tls_on_loopback_and_with_a_multi_statement_query() {
    let gw = Gateway::start();
    let token = gw.token("ci-bot", &[]);
    let out = Command::new("psql")
        .arg("-X")
        .arg(gw.conninfo("appdb", "disable"))
        .args(["-A", "-t", "-c", "select 1; select 2"])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1\n2");
}

fn pgbench(gw: &Gateway, token: &str, args: &[&str]) -> String {
    let out = gw
        .pgbench(token)
        .args(args)
        .arg("appdb")
        .output()
        .expect("pgbench is installed (apt-get install -y postgresql-contrib or postgresql)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{text}\n{}",
        gw.log()
    );
    text
}

#[test]
fn pgbench_runs_in_every_query_mode_without_failures() {
    let gw = Gateway::start();
    let token = gw.token("bench", &["agents"]);
    pgbench(&gw, &token, &["-i", "-s", "1", "--quiet"]);
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &[][..]] {
            let mut args = vec!["-M", mode, "-c", "4", "-j", "2", "-t", "100"];
            args.extend_from_slice(script);
            let out = pgbench(&gw, &token, &args);
            assert!(
                out.contains("number of failed transactions: 0 (0.000%)"),
                "pgbench {args:?}:\n{out}"
            );
            assert!(
                out.contains("number of transactions actually processed: 400/400"),
                "{out}"
            );
        }
    }
}

#[test]
fn sessions_run_on_the_configured_number_of_session_threads() {
    let gw = Gateway::start_with(common::GatewayOptions {
        server_extra: "session_threads = 3".into(),
        ..Default::default()
    });
    let token = gw.token("bench", &["agents"]);
    pgbench(&gw, &token, &["-i", "-s", "1", "--quiet"]);
    // More sessions than threads, so that threads hold several sessions at once.
    let out = pgbench(
        &gw,
        &token,
        &["-M", "prepared", "-S", "-c", "7", "-j", "2", "-t", "50"],
    );
    assert!(
        out.contains("number of transactions actually processed: 350/350"),
        "{out}"
    );
    let session_threads = gw
        .thread_names()
        .into_iter()
        .filter(|name| name.starts_with("gatehouse-sessi"))
        .count();
    assert_eq!(session_threads, 3, "{:?}", gw.thread_names());
}

#[tokio::test]
async fn a_driver_gets_binary_results_parameters_and_can_cancel() {
    let gw = Gateway::start();
    let token = gw.token("driver", &[]);
    let client = common::connect(&gw, "appdb", &token).await;

    // tokio-postgres asks for binary results: these values cross the gateway unchanged.
    let row = client
        .query_one(
            "select $1::int8 * 2, $2::text, '\\xdeadbeef'::bytea, 1.5::float8, now() > $3::timestamptz",
            &[&21i64, &"héllo", &std::time::SystemTime::UNIX_EPOCH],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, &str>(1), "héllo");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(row.get::<_, f64>(3), 1.5);
    assert!(row.get::<_, bool>(4));

    // A prepared statement runs many times; a failing one leaves the session usable.
    let stmt = client
        .prepare("select generate_series(1, $1::int)")
        .await
        .unwrap();
    for n in [1, 5, 100] {
        assert_eq!(client.query(&stmt, &[&n]).await.unwrap().len(), n as usize);
    }
    let err = client.query("select 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    assert_eq!(client.query(&stmt, &[&3]).await.unwrap().len(), 3);

    // Cancel: the client's key is the gateway's, and it still reaches the right backend.
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = client.query("select pg_sleep(30)", &[]).await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (result, client) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel took effect")
        .unwrap();
    assert_eq!(result.unwrap_err().code().unwrap().code(), "57014");
    assert_eq!(client.query(&stmt, &[&2]).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_backend_key_is_never_shown_to_the_client() {
    let gw = Gateway::start();
    let token = gw.token("driver", &[]);
    let client = common::connect(&gw, "appdb", &token).await;
    let backend_pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let raw = startup_and_collect(&gw, &token).await;
    assert!(raw.backend_key_pid != backend_pid);
    // And a second session gets a different key.
    let again = startup_and_collect(&gw, &token).await;
    assert_ne!(raw.backend_key_pid, again.backend_key_pid);
}

#[tokio::test]
async fn upstream_scram_md5_and_tls_modes_all_connect() {
    let gw = Gateway::start();
    let token = gw.token("driver", &[]);
    for connection in ["appdb", "appdb-md5", "appdb-tls", "appdb-tls-require"] {
        let (client, conn) = driver_config(&gw, connection, &token)
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("{connection}: {e}\n{}", gw.log()));
        tokio::spawn(conn);
        let row = client
            .query_one("select current_user::text, coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)", &[])
            .await
            .unwrap();
        let tls: bool = row.get(1);
        assert_eq!(tls, connection.contains("tls"), "{connection}");
    }
}

#[tokio::test]
async fn each_failure_gets_its_documented_error() {
    let gw = Gateway::start();
    let token = gw.token("driver", &[]);
    let code_and_message = |e: tokio_postgres::Error| {
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e}"));
        (db.code().code().to_string(), db.message().to_string())
    };

    let err = driver_config(&gw, "appdb", "not-a-token")
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    let (code, message) = code_and_message(err);
    assert_eq!(code, "28P01");
    assert!(message.contains("not a Gatehouse token"), "{message}");

    let unknown = "gatehouse_sa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let err = driver_config(&gw, "appdb", unknown)
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    assert_eq!(code_and_message(err).0, "28P01");

    let err = driver_config(&gw, "no-such-db", &token)
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    let (code, message) = code_and_message(err);
    assert_eq!(code, "3D000");
    assert!(message.contains("no-such-db"), "{message}");
    assert!(
        !message.contains("appdb"),
        "other connection names must not be listed: {message}"
    );

    let err = driver_config(&gw, "down", &token)
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    let (code, message) = code_and_message(err);
    assert_eq!(code, "08006");
    assert!(message.contains("\"down\""), "{message}");
    assert!(message.contains("cannot connect"), "{message}");

    let err = driver_config(&gw, "badpass", &token)
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    let (code, message) = code_and_message(err);
    assert_eq!(code, "08006");
    assert!(
        message.contains("rejected the gateway's credential"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");

    let err = driver_config(&gw, "appdb-wrong-ca", &token)
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    let (code, message) = code_and_message(err);
    assert_eq!(code, "08006");
    assert!(message.contains("TLS"), "{message}");

    let mut with_options = driver_config(&gw, "appdb", &token);
    with_options.options("-c role=postgres");
    let err = with_options
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    let (code, message) = code_and_message(err);
    assert_eq!(code, "0A000");
    assert!(message.contains("options"), "{message}");
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let gw = Gateway::start();
    let token = gw.token("short-lived", &[]);
    let client = common::connect(&gw, "appdb", &token).await;
    client.simple_query("select 1").await.unwrap();
    gw.cli_ok(&["token", "revoke", "short-lived"]);
    let err = driver_config(&gw, "appdb", &token)
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    assert!(err.as_db_error().unwrap().message().contains("revoked"));

    let expiring = gw.cli_ok(&["token", "create", "--name", "ttl-bot", "--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let err = driver_config(&gw, "appdb", expiring.trim())
        .connect(NoTls)
        .await
        .err()
        .expect("the connection must be refused");
    assert!(
        err.as_db_error().unwrap().message().contains("expired"),
        "{err}"
    );
}

#[tokio::test]
async fn the_upstream_password_never_reaches_the_client_the_log_or_the_store() {
    let gw = Gateway::start();
    let token = gw.token("prober", &[]);
    // Everything a client can receive, byte for byte, over a raw socket, including errors.
    let raw = startup_and_collect(&gw, &token).await;
    let mut seen = raw.bytes;
    let client = common::connect(&gw, "appdb", &token).await;
    for sql in [
        "select usename, passwd from pg_shadow",
        "select current_setting('password_encryption')",
        "select * from pg_stat_activity",
    ] {
        match client.simple_query(sql).await {
            Ok(rows) => seen.extend(format!("{rows:?}").into_bytes()),
            Err(e) => seen.extend(e.to_string().into_bytes()),
        }
    }
    for connection in ["badpass", "down", "appdb-wrong-ca"] {
        if let Err(e) = driver_config(&gw, connection, &token).connect(NoTls).await {
            seen.extend(e.to_string().into_bytes());
        }
    }
    drop(client);
    let (_, out, err) = gw.psql(&token, "appdb", &["-c", "select 1"], None);
    seen.extend(out.into_bytes());
    seen.extend(err.into_bytes());

    let needle = APP_PASSWORD.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&seen), "the client saw the upstream password");
    assert!(
        !contains(gw.log().as_bytes()),
        "the log holds the upstream password"
    );
    std::thread::sleep(Duration::from_millis(300));
    for entry in std::fs::read_dir(gw.dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert!(
                !contains(&std::fs::read(&path).unwrap()),
                "{} holds the upstream password",
                path.display()
            );
        }
    }
}

struct RawSession {
    bytes: Vec<u8>,
    backend_key_pid: i32,
}

/// Logs in over a raw socket and returns every byte received, up to ReadyForQuery.
async fn startup_and_collect(gw: &Gateway, token: &str) -> RawSession {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.pg_port))
        .await
        .unwrap();
    let msgs = raw::login_on(&mut s, token).await;
    let mut bytes = Vec::new();
    let mut backend_key_pid = 0;
    for (tag, body) in msgs {
        if tag == b'K' {
            backend_key_pid = i32::from_be_bytes(body[..4].try_into().unwrap());
        }
        bytes.push(tag);
        bytes.extend(body);
    }
    RawSession {
        bytes,
        backend_key_pid,
    }
}

#[tokio::test]
async fn revocation_and_expiry_end_live_sessions() {
    let gw = Gateway::start_with(common::GatewayOptions {
        server_extra: "credential_recheck_interval = \"200ms\"".into(),
        ..Default::default()
    });
    let token = gw.token("live", &[]);
    let mut config = driver_config(&gw, "appdb", &token);
    config.application_name("revoked-live");
    let (client, conn) = config.connect(NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    client.simple_query("select 1").await.unwrap();

    gw.cli_ok(&["token", "revoke", "live"]);
    // The connection ends by itself with a clear error; no new statement is needed.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the session was not ended after revocation")
        .unwrap();
    let err = ended.expect_err("the server side ended the session with an error");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("revoked"), "{}", db.message());
    assert!(client.simple_query("select 1").await.is_err());

    // A token that expires mid-session ends it too.
    let short = gw.cli_ok(&["token", "create", "--name", "short", "--ttl", "2s"]);
    let (client, conn) = driver_config(&gw, "appdb", short.trim())
        .connect(NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.simple_query("select 1").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(6), conn)
        .await
        .expect("the session outlived its token")
        .unwrap()
        .expect_err("ended with an error");
    assert!(
        err.as_db_error().unwrap().message().contains("expired"),
        "{err}"
    );

    let session = gw.wait_for("the end reason to be recorded", || {
        let list = gw.cli_json(&["sessions", "list"]);
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["application_name"] == "revoked-live" && !s["ended_at"].is_null())
            .cloned()
    });
    assert!(
        session["end_reason"]
            .as_str()
            .unwrap()
            .starts_with("credential_invalid"),
        "{session}"
    );
}

/// W34: a transaction left open and idle ends the session, and the server rolls it back.
#[tokio::test]
async fn an_idle_transaction_is_ended_and_rolled_back() {
    let gw = Gateway::start_with(common::GatewayOptions {
        server_extra: "idle_in_transaction_timeout = \"700ms\"".into(),
        ..Default::default()
    });
    let token = gw.token("idler", &[]);
    let setup = driver_config(&gw, "appdb", &token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(setup.1);
    setup
        .0
        .batch_execute("drop table if exists idle_t; create table idle_t (a int)")
        .await
        .unwrap();

    // Idle outside a transaction: nothing happens.
    let calm = common::connect(&gw, "appdb", &token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    calm.simple_query("select 1").await.unwrap();

    // Idle inside one: the session ends with 25P03 and the insert is rolled back.
    let (client, conn) = driver_config(&gw, "appdb", &token)
        .connect(NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client
        .batch_execute("begin; insert into idle_t values (1)")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle transaction was not ended")
        .unwrap()
        .expect_err("ended with an error");
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P03", "{err}");
    let rows = setup
        .0
        .query_one("select count(*) from idle_t", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 0);
    calm.simple_query("select 1").await.unwrap();
}
