//! Test harness: a throwaway PostgreSQL cluster started from the installed binaries, and the
//! real `gatehouse` binary in front of it.
//!
//! The cluster uses scram-sha-256 (and md5 for one role) so upstream authentication is really
//! exercised, and TLS with a CA generated here so verify-full is too. It is shared by the tests
//! of one test binary and stopped by a reaper process when that binary exits. A missing
//! PostgreSQL installation fails the tests with a message saying what to install; it never
//! skips them.

#![allow(dead_code)]

pub mod raw;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SUPERUSER_PASSWORD: &str = "su-pw-7f3a9c1e";
/// The upstream password only the gateway holds. Tests search for it in everything a client
/// can see.
pub const APP_PASSWORD: &str = "upstream-secret-Qx81vLm2";
pub const MD5_PASSWORD: &str = "md5-secret-Zp40kNw7";

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// The CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// A CA that did not.
    pub wrong_ca_file: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

fn postgres_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("GATEHOUSE_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.retain(|p| p.join("initdb").exists() && p.join("pg_ctl").exists());
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin. \
             Install them (Debian: apt-get install -y postgresql postgresql-client) or set GATEHOUSE_TEST_PG_BINDIR."
        )
    })
}

fn is_root() -> bool {
    // SAFETY-free check: the effective uid of the process from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a PostgreSQL server binary, as the `postgres` user when the tests run as root
/// (initdb and postgres refuse to run as root).
fn pg_command(bin: &Path, name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(name));
        c
    } else {
        Command::new(bin.join(name))
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn start() -> Cluster {
        let bin = postgres_bindir();
        let dir = std::env::temp_dir().join(format!("gatehouse-test-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();

        // TLS material: a CA, a server certificate for 127.0.0.1/localhost, and an unrelated CA.
        let (ca_pem, cert_pem, key_pem) = tls_material();
        let (wrong_ca, _, _) = tls_material();
        let ca_file = dir.join("ca.pem");
        let wrong_ca_file = dir.join("wrong-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(&wrong_ca_file, wrong_ca).unwrap();

        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                "chown test dir",
            );
        }
        run_ok(
            pg_command(&bin, "initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             log_min_messages = warning\n",
            dir.display()
        );
        let mut conf_all = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf_all.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), conf_all).unwrap();
        // md5 for one role (whose password is stored as md5), SCRAM for everyone else.
        let hba = "local all all scram-sha-256\nhost all app_md5 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                "chown test dir",
            );
            run_ok(
                Command::new("chmod")
                    .arg("600")
                    .arg(data.join("server.key")),
                "chmod key",
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        run_ok(
            pg_command(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
        // Stop the cluster when this test process exits, however it exits.
        let reaper = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {ctl} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            ctl = if is_root() {
                format!("runuser -u postgres -- {}", bin.join("pg_ctl").display())
            } else {
                bin.join("pg_ctl").display().to_string()
            },
            data = data.display(),
            dir = dir.display(),
        );
        // The reaper outlives this process on purpose, so it is never waited for.
        let _reaper = Command::new("setsid")
            .args(["sh", "-c", &reaper])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster reaper (setsid, sh)");
        drop(_reaper);

        let cluster = Cluster {
            port,
            dir,
            bin,
            ca_file,
            wrong_ca_file,
        };
        for sql in [
            format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
            "CREATE DATABASE appdb OWNER app".to_string(),
            format!(
                "SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '{MD5_PASSWORD}'"
            ),
            "GRANT CONNECT ON DATABASE appdb TO app_md5".to_string(),
        ] {
            cluster.psql_super(&sql);
        }
        cluster
    }

    /// Runs SQL as the superuser, directly (not through the gateway).
    pub fn psql_super(&self, sql: &str) -> String {
        self.psql_direct("postgres", SUPERUSER_PASSWORD, "postgres", sql)
    }

    pub fn psql_direct(&self, user: &str, password: &str, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname={db} sslmode=disable",
                self.port
            ))
            .args(["-c", sql])
            .env("PGPASSWORD", password)
            .output()
            .expect("psql is installed (apt-get install -y postgresql-client)");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn tls_material() -> (String, String, String) {
    gatehouse_testidp::tls_material()
}

/// A policy that allows everything, for tests about something else.
pub const ALLOW_ALL: &str = "@id(\"test.allow-all\")\npermit(principal, action, resource);\n";

/// Extra config for one gateway: appended to the generated file.
#[derive(Default)]
pub struct GatewayOptions {
    pub server_extra: String,
    pub connections_extra: String,
    /// Whole sections (such as `[[identity.oidc]]`) appended at the end of the file.
    pub extra_sections: String,
    /// Policy files (name, text) in `policies/`. Empty: one allow-all policy.
    pub policies: Vec<(String, String)>,
    /// Configure no policy files at all (the built-in administrators-only policy).
    pub no_policy: bool,
    /// How often policy files are checked for changes (default 200ms).
    pub policy_reload_interval: Option<String>,
}

/// `GATEHOUSE_TEST_OVERLAP_READS=1` runs every gateway with `[audit] overlap_reads = true`, so
/// that the protocol tests also cover reads whose answers wait for their intent records
/// (`scripts/test` runs the wire-level suites a second time this way).
fn with_test_audit_settings(mut sections: String) -> String {
    if std::env::var_os("GATEHOUSE_TEST_OVERLAP_READS").is_some_and(|v| v == "1") {
        let line = "overlap_reads = true\n";
        match sections.find("[audit]\n") {
            Some(at) if !sections.contains("overlap_reads") => {
                sections.insert_str(at + "[audit]\n".len(), line)
            }
            Some(_) => {}
            None => sections = format!("[audit]\n{line}{sections}"),
        }
    }
    sections
}

/// `GATEHOUSE_TEST_SESSION_THREADS=N` runs every gateway with `[server] session_threads = N`
/// (`scripts/test` runs the wire-level suites a second time with 0: sessions on the shared
/// runtime, the default's alternative).
fn with_test_server_settings(mut server: String) -> String {
    if let Some(n) = std::env::var_os("GATEHOUSE_TEST_SESSION_THREADS")
        && !server.contains("session_threads")
    {
        server.push_str(&format!("\nsession_threads = {}\n", n.to_string_lossy()));
    }
    server
}

/// A running `gatehouse serve`, stopped when dropped.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub pg_port: u16,
    pub api_port: u16,
    pub admin_token: String,
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with(GatewayOptions::default())
    }

    pub fn start_with(options: GatewayOptions) -> Gateway {
        let cluster = cluster();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        let policies = if options.policies.is_empty() {
            vec![("allow-all.cedar".to_string(), ALLOW_ALL.to_string())]
        } else {
            options.policies.clone()
        };
        for (name, text) in &policies {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        let policy_section = if options.no_policy {
            String::new()
        } else {
            format!(
                "[policy]\nfiles = [\"policies/*.cedar\"]\nreload_interval = \"{}\"\n",
                options.policy_reload_interval.as_deref().unwrap_or("200ms")
            )
        };
        let config = format!(
            r#"
[server]
data_dir = "data"
api_listen = "127.0.0.1:0"
postgres_listen = "127.0.0.1:0"
{server_extra}

{policy_section}

[[connections]]
name = "appdb"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app"
password = "env:GH_TEST_APPDB_PASSWORD"
tags = {{ env = "test" }}

[[connections]]
name = "proddb"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app"
password = "env:GH_TEST_APPDB_PASSWORD"
tags = {{ env = "prod" }}

[[connections]]
name = "appdb-md5"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app_md5"
password = "file:md5.secret"

[[connections]]
name = "appdb-tls"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app"
password = "env:GH_TEST_APPDB_PASSWORD"
tls = "verify-full"
ca_file = "{ca}"

[[connections]]
name = "appdb-wrong-ca"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app"
password = "env:GH_TEST_APPDB_PASSWORD"
tls = "verify-full"
ca_file = "{wrong_ca}"

[[connections]]
name = "appdb-tls-require"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app"
password = "env:GH_TEST_APPDB_PASSWORD"
tls = "require"

[[connections]]
name = "down"
kind = "postgres"
host = "127.0.0.1"
port = {down}
database = "appdb"
user = "app"
password = "env:GH_TEST_APPDB_PASSWORD"

[[connections]]
name = "badpass"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "appdb"
user = "app"
password = "env:GH_TEST_WRONG_PASSWORD"
{connections_extra}

{extra_sections}
"#,
            extra_sections = with_test_audit_settings(options.extra_sections),
            server_extra = with_test_server_settings(options.server_extra),
            connections_extra = options.connections_extra,
            port = cluster.port,
            down = free_port(),
            ca = cluster.ca_file.display(),
            wrong_ca = cluster.wrong_ca_file.display(),
        );
        std::fs::write(dir.path().join("gatehouse.toml"), config).unwrap();
        std::fs::write(dir.path().join("md5.secret"), format!("{MD5_PASSWORD}\n")).unwrap();
        let child = spawn_gateway(dir.path());
        let mut gw = Gateway {
            child,
            dir,
            pg_port: 0,
            api_port: 0,
            admin_token: String::new(),
        };
        gw.wait_ready();
        gw.admin_token = std::fs::read_to_string(gw.dir.path().join("data/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        gw
    }

    /// Stops the gateway at once (SIGKILL) and starts it again on the same config and data.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kills the gateway with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The audit log's records, read as the gateway reads them (a running gateway keeps
    /// zeros preallocated after the last one).
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let path = self.dir.path().join("data/audit/audit.log");
        let mut reader = gatehouse_audit::LogReader::open(&path).unwrap();
        let mut out = Vec::new();
        while let Some((line, _)) = reader.next_record().unwrap() {
            out.push(serde_json::from_slice(line.bytes).unwrap());
        }
        out
    }

    /// Stops the gateway as a service manager does (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) is installed (procps)");
        assert!(status.success(), "could not signal the gateway");
        let _ = self.child.wait();
    }

    /// Starts the gateway again on the same config and data after [`Gateway::kill`].
    pub fn start_again(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().join("data/listen.json"));
        self.child = spawn_gateway(self.dir.path());
        self.wait_ready();
    }

    /// Waits for the gateway to write where it listens (it binds port 0, so parallel tests
    /// never race for a port).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("gatehouse exited early ({status}):\n{}", self.log());
            }
            let listen = std::fs::read_to_string(self.dir.path().join("data/listen.json"))
                .unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&listen) {
                let port = |k: &str| -> u16 {
                    v[k].as_str()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0)
                };
                self.pg_port = port("postgres");
                self.api_port = port("api");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gatehouse did not become ready:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Runs a CLI command against this gateway with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.admin_token, args)
    }

    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .env("GATEHOUSE_URL", self.url())
            .env("GATEHOUSE_TOKEN", token)
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "gatehouse {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        serde_json::from_str(&self.cli_ok(&all)).unwrap()
    }

    /// Creates a service-account token through the CLI.
    pub fn token(&self, name: &str, groups: &[&str]) -> String {
        let mut args = vec!["token", "create", "--name", name];
        for g in groups {
            args.extend(["--group", g]);
        }
        self.cli_ok(&args).trim().to_string()
    }

    /// A libpq connection string for `connection`.
    pub fn conninfo(&self, connection: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={connection} user=agent sslmode={sslmode} application_name=gatehouse-test",
            self.pg_port
        )
    }

    /// Runs psql through the gateway and returns (success, stdout, stderr).
    pub fn psql(
        &self,
        token: &str,
        connection: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        let mut cmd = Command::new("psql");
        cmd.arg("-X")
            .arg(self.conninfo(connection, "require"))
            .args(["-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env("PGPASSWORD", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .expect("psql is installed (apt-get install -y postgresql-client)");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// pgbench through the gateway as `token` (TLS required), before its own arguments and
    /// the database name.
    pub fn pgbench(&self, token: &str) -> Command {
        let mut cmd = Command::new("pgbench");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.pg_port.to_string(),
            "-U",
            "agent",
        ])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "require");
        cmd
    }

    /// Waits until the recorder has written what the CLI should show.
    pub fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Gateway {
    /// The names of the gateway process's threads (Linux: `/proc/<pid>/task/*/comm`, which
    /// keeps the first 15 bytes of each name).
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("cannot list {tasks}: {e}"))
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill is installed");
        assert!(status.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// While this file exists in a gateway's directory, its audit writes fail.
pub const AUDIT_FAULT_FILE: &str = "fault-audit-writes";

/// Starts `gatehouse serve` on `dir/gatehouse.toml`, logging (appending) to `dir/gateway.log`.
fn spawn_gateway(dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("serve")
        .arg("--config")
        .arg(dir.join("gatehouse.toml"))
        .env("GH_TEST_APPDB_PASSWORD", APP_PASSWORD)
        .env("GH_TEST_WRONG_PASSWORD", "not-the-password")
        .env("GATEHOUSE_LOG", "debug")
        // Audit writes fail while this file exists (tests build the gateway with the audit
        // crate's `fault-injection` feature).
        .env("GATEHOUSE_FAULT_AUDIT_WRITES", dir.join(AUDIT_FAULT_FILE))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start gatehouse serve")
}

/// tokio-postgres config for a connection through the gateway (plaintext on loopback).
pub fn driver_config(gw: &Gateway, connection: &str, token: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(gw.pg_port)
        .dbname(connection)
        .user("agent")
        .password(token)
        .application_name("gatehouse-driver-test");
    c
}

/// Connects through the gateway with tokio-postgres (plaintext on loopback) and drives the
/// connection in the background.
pub async fn connect(gw: &Gateway, connection: &str, token: &str) -> tokio_postgres::Client {
    let (client, conn) = driver_config(gw, connection, token)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {connection}: {e}\n{}", gw.log()));
    tokio::spawn(conn);
    client
}
