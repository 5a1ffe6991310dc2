//! OIDC federation end to end: a test IdP over HTTPS, the gateway trusting it, psql and a
//! driver presenting IdP tokens as the password, key rotation and an IdP outage while sessions
//! are open, expiry ending a live session, and `gatehouse login` through the device flow.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Gateway, GatewayOptions, driver_config};
use gatehouse_testidp::{Algorithm, DeviceAnswer, Mode, SigningKey, TestIdp, b64, now};
use serde_json::json;
use tokio_postgres::NoTls;

const AUD: &str = "gatehouse-cli";

/// Members of group `dba` (from the token) or `ci` (mapped from a claim) may do anything.
const GROUP_POLICY: &str = r#"
@id("dba-all")
permit(principal in Gatehouse::Group::"dba", action, resource);
@id("ci-all")
permit(principal in Gatehouse::Group::"ci", action, resource);
"#;

fn gateway(idp: &TestIdp, issuer_extra: &str) -> Gateway {
    Gateway::start_with(GatewayOptions {
        server_extra: "credential_recheck_interval = \"200ms\"".into(),
        policies: vec![("groups.cedar".into(), GROUP_POLICY.into())],
        extra_sections: format!(
            r#"
[[identity.oidc]]
name = "corp"
issuer = "{issuer}"
audience = "{AUD}"
ca_file = "{ca}"
refresh_cooldown = "100ms"
group_mappings = [{{ claim = "repository_owner", equals = "acme", group = "ci" }}]
{issuer_extra}
"#,
            issuer = idp.issuer,
            ca = idp.ca_file.display(),
        ),
        ..Default::default()
    })
}

fn token_for(idp: &TestIdp, sub: &str, groups: &[&str]) -> String {
    let mut claims = idp.claims(sub, AUD);
    claims["groups"] = json!(groups);
    idp.mint(&claims)
}

/// Runs psql in a blocking thread, so the in-process IdP keeps answering.
async fn psql(gw: &Gateway, token: &str, sql: &str) -> (bool, String, String) {
    let conninfo = gw.conninfo("appdb", "require");
    let (token, sql) = (token.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(conninfo)
            .args(["-c", &sql])
            .env("PGPASSWORD", token)
            .output()
            .expect("psql is installed (apt-get install -y postgresql-client)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_an_oidc_token_and_each_bad_token_gets_its_reason() {
    let idp = TestIdp::start().await;
    let gw = gateway(&idp, "");

    let good = token_for(&idp, "user-1", &["dba"]);
    let (ok, out, err) = psql(&gw, &good, "select current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out, "app");

    // A group mapped from a claim grants access too.
    let mut ci = idp.claims("repo:acme/app:ref:refs/heads/main", AUD);
    ci["repository_owner"] = json!("acme");
    let (ok, _, err) = psql(&gw, &idp.mint(&ci), "select 1").await;
    assert!(ok, "{err}");

    // Without a permitted group the connection is refused by policy, naming no token problem.
    let (ok, _, err) = psql(&gw, &token_for(&idp, "user-2", &["nobody"]), "select 1").await;
    assert!(!ok);
    assert!(
        err.contains("gatehouse.no-permit") || err.contains("not permitted"),
        "{err}"
    );

    let now = now();
    let key = idp.key();
    let expired = {
        let mut c = idp.claims("user-1", AUD);
        c["exp"] = json!(now - 120);
        c["iat"] = json!(now - 600);
        idp.mint(&c)
    };
    let wrong_aud = idp.mint(&idp.claims("user-1", "another-service"));
    let unknown_kid = key.sign_raw(
        &json!({"alg": "RS256", "kid": "no-such-key"}),
        &idp.claims("user-1", AUD),
    );
    let alg_none = format!(
        "{}.{}.",
        b64(b"{\"alg\":\"none\"}"),
        b64(idp.claims("user-1", AUD).to_string().as_bytes())
    );
    let (head, _) = good.rsplit_once('.').unwrap();
    let bad_signature = format!("{head}.{}", b64(&[7u8; 256]));
    let other_issuer = idp.mint(&{
        let mut c = idp.claims("user-1", AUD);
        c["iss"] = json!("https://idp.example");
        c
    });
    for (token, reason) in [
        (expired, "it has expired"),
        (wrong_aud, "its audience is not this gateway"),
        (unknown_kid, "unknown `kid`"),
        (alg_none, "signature algorithm is not accepted"),
        (bad_signature, "signature does not verify"),
        (other_issuer, "no configured issuer"),
    ] {
        let (ok, _, err) = psql(&gw, &token, "select 1").await;
        assert!(!ok, "{reason}: accepted");
        assert!(err.contains("the OIDC token was rejected"), "{err}");
        assert!(err.contains(reason), "{reason}: {err}");
        assert!(
            !err.contains("rsa-1") && !err.contains(&idp.issuer),
            "leaks internals: {err}"
        );
    }

    // The SQLSTATE is the one for a bad password.
    let err = driver_config(
        &gw,
        "appdb",
        &idp.mint(&idp.claims("user-1", "another-service")),
    )
    .connect(NoTls)
    .await
    .err()
    .expect("a wrong audience is refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");

    // The session is recorded under (issuer, sub), with the human kind and the token's groups.
    let sessions = gw.cli_json(&["sessions", "list"]);
    let first = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["principal"] == "corp/user-1")
        .unwrap_or_else(|| panic!("{sessions}"));
    assert_eq!(first["identity_kind"], "human", "{first}");
    assert_eq!(first["groups"], json!(["dba"]), "{first}");
    // The API accepts the same token as a bearer token.
    let who = gw.cli_as(&good, &["whoami", "--format", "json"]);
    let who: serde_json::Value = serde_json::from_slice(&who.stdout).unwrap();
    assert_eq!(who["subject"], "user-1");
    assert_eq!(who["issuer"], "corp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_outage_and_expiry_with_live_sessions() {
    let idp = TestIdp::start_with(vec![SigningKey::generate("ec-1", Algorithm::ES256)]).await;
    let gw = gateway(
        &idp,
        "jwks_cache_ttl = \"1s\"\nmax_stale = \"3s\"\nfetch_timeout = \"1s\"",
    );
    let old = token_for(&idp, "user-1", &["dba"]);
    let (live, conn) = driver_config(&gw, "appdb", &old)
        .connect(NoTls)
        .await
        .unwrap();
    let live_conn = tokio::spawn(conn);
    live.simple_query("select 1").await.unwrap();

    // The IdP rotates to a new key and drops the old one. (Unknown keys are looked up at most
    // once per refresh_cooldown, 100ms here.)
    idp.rotate(SigningKey::generate("ec-2", Algorithm::ES256), false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let new = token_for(&idp, "user-1", &["dba"]);
    let (ok, _, err) = psql(&gw, &new, "select 1").await;
    assert!(ok, "a token signed by the new key works at once: {err}");
    live.simple_query("select 1")
        .await
        .expect("an open session outlives the rotation of the key that admitted it");

    // The IdP goes down: cached keys keep admitting new sessions until max_stale.
    idp.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ok, _, err) = psql(&gw, &new, "select 1").await;
    assert!(ok, "stale keys serve through a short outage: {err}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, _, err) = psql(&gw, &new, "select 1").await;
    assert!(!ok, "after max_stale the gateway fails closed");
    assert!(err.contains("keys cannot be fetched"), "{err}");
    live.simple_query("select 1").await.unwrap();
    idp.set_mode(Mode::Up);

    // A token that expires while its session is open ends that session.
    let short = {
        let mut c = idp.claims("user-3", AUD);
        c["groups"] = json!(["dba"]);
        c["exp"] = json!(now() + 3);
        idp.mint(&c)
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (client, conn) = driver_config(&gw, "appdb", &short)
        .connect(NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.simple_query("select 1").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(8), conn)
        .await
        .expect("the session outlived its OIDC token")
        .unwrap()
        .expect_err("ended with an error");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("expired"), "{}", db.message());
    drop(live);
    let _ = live_conn.await;

    // The same with psql: an interactive session whose token expires is ended by the
    // gateway; psql reports it at its next statement.
    let short = {
        let mut c = idp.claims("user-4", AUD);
        c["groups"] = json!(["dba"]);
        c["exp"] = json!(now() + 2);
        idp.mint(&c)
    };
    let conninfo = gw.conninfo("appdb", "require");
    let transcript = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("psql")
            .args(["-X", "-A", "-t"])
            .arg(conninfo)
            .env("PGPASSWORD", short)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql is installed (apt-get install -y postgresql-client)");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "select 'before-expiry';").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let _ = writeln!(stdin, "select 'after-expiry';");
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap();
    assert!(transcript.contains("before-expiry"), "{transcript}");
    assert!(!transcript.contains("after-expiry"), "{transcript}");
    assert!(transcript.contains("expired"), "{transcript}");
}

fn login(
    gw: &Gateway,
    idp: &TestIdp,
    home: &std::path::Path,
    issuer: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["login", "--issuer", issuer, "--print", "--ca-file"])
        .arg(&idp.ca_file)
        .env("GATEHOUSE_URL", gw.url())
        .env_remove("GATEHOUSE_TOKEN")
        .env("GATEHOUSE_CONFIG_DIR", home)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_runs_the_device_flow_and_stores_the_token_for_the_cli() {
    let idp = TestIdp::start().await;
    let gw = gateway(&idp, "");
    let home = tempfile::tempdir().unwrap();

    let out = { tokio::task::block_in_place(|| login(&gw, &idp, home.path(), "corp")) };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("enter the code WDJB-MJHT"), "{stderr}");
    assert!(stderr.contains("Logged in as alice"), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let file = home.path().join("credentials.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&file).unwrap().contains(&token));

    // Later CLI calls use the stored token.
    let who = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["whoami", "--format", "json"])
            .env("GATEHOUSE_URL", gw.url())
            .env_remove("GATEHOUSE_TOKEN")
            .env("GATEHOUSE_CONFIG_DIR", home.path())
            .output()
            .unwrap()
    });
    let who: serde_json::Value = serde_json::from_slice(&who.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&who.stderr)));
    assert_eq!(who["subject"], "user-4711");
    assert_eq!(who["display_name"], "alice");
    assert_eq!(who["groups"], json!(["dba"]));
    // And psql can use it as the password.
    let (ok, _, err) = psql(&gw, &token, "select 1").await;
    assert!(ok, "{err}");

    // A denied login and an unknown issuer fail with clear messages.
    idp.set_device_answer(DeviceAnswer::Deny);
    let out = tokio::task::block_in_place(|| login(&gw, &idp, home.path(), "corp"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| login(&gw, &idp, home.path(), "nope"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it trusts: corp"),
        "{out:?}"
    );
}
