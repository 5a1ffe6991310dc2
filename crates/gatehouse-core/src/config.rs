//! The gateway's configuration: one TOML file, validated as a whole before anything starts.
//!
//! Relative paths in the file are resolved against the directory that holds the file, so a
//! config and its data directory can be moved together. Secrets never appear in clear: a
//! connection password is a [`SecretRef`] that is resolved each time it is needed, so a
//! rotated secret applies to the next upstream connection without a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::secret::SecretRef;

/// Default API listen address (REST API and, later, MCP).
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8009";
/// Default PostgreSQL listen address.
pub const DEFAULT_POSTGRES_LISTEN: &str = "127.0.0.1:15432";

/// Everything the gateway needs to start, after validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config came from, when it came from a file.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub policy: PolicyConfig,
    pub identity: IdentityConfig,
    pub reviews: ReviewsConfig,
    /// `[[grants]]`: just-in-time elevations people may request.
    pub grants: Vec<GrantConfig>,
    /// `[masking]`: values masked before results reach the client.
    pub masking: MaskingConfig,
    /// `[audit]`: the tamper-evident audit log.
    pub audit: AuditConfig,
    pub connections: Vec<ConnectionConfig>,
}

/// `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `strict`: an event counts once it is synced to disk; `batched`: once queued.
    pub durability: gatehouse_audit::Durability,
    /// A signed checkpoint every this many records (and whenever the log goes quiet).
    pub checkpoint_every: u64,
    /// How many rows of each result the `statement.outcome` record keeps, as the client saw
    /// them after masking (0: none). Kept only for sessions that masking applies to: results
    /// nobody masks are not copied into the long-lived log.
    pub result_excerpt_rows: usize,
    /// `direct` (the default): records written with `O_DIRECT | O_DSYNC` where the filesystem
    /// allows it; `buffered`: a write and an `fdatasync`, for filesystems whose direct I/O is
    /// slow or emulated.
    pub writes: gatehouse_audit::WriteMethod,
    /// With `strict` durability, lets a command that changes nothing (see
    /// [`crate::classify::Classification::changes_nothing`]) reach the server while its intent
    /// record is being synced; nothing of its result reaches the client before the record is
    /// on disk. Off by default: `strict` then means the record is on disk before the command is
    /// forwarded at all.
    pub overlap_reads: bool,
}

/// `[masking]`.
#[derive(Debug, Clone, Default)]
pub struct MaskingConfig {
    /// The key of the `token` strategy. When absent, one is generated in the data directory
    /// on first start (`masking.key`, mode 0600).
    pub key: Option<SecretRef>,
    pub rules: Vec<MaskingRule>,
}

/// One `[[masking.rules]]` entry.
#[derive(Debug, Clone)]
pub struct MaskingRule {
    pub name: String,
    pub target: MaskTarget,
    pub strategy: gatehouse_mask::Strategy,
    /// Connections it applies to (empty: all).
    pub connections: Vec<String>,
    /// Groups it applies to (empty: everyone).
    pub groups: Vec<String>,
    /// Groups it never applies to.
    pub exempt_groups: Vec<String>,
}

/// What a masking rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskTarget {
    /// One column, `schema.table.column` (lower case).
    Column {
        schema: String,
        table: String,
        column: String,
    },
    /// Column names matching a glob such as `*password*` (case-insensitive).
    ColumnPattern(String),
    /// Values found by a detector anywhere in results.
    Detector(gatehouse_mask::Detector),
}

impl MaskingRule {
    /// Whether the rule applies to `identity` on `connection`.
    pub fn applies(&self, identity: &crate::identity::Identity, connection: &str) -> bool {
        (self.connections.is_empty() || self.connections.iter().any(|c| c == connection))
            && (self.groups.is_empty() || self.groups.iter().any(|g| identity.in_group(g)))
            && !self.exempt_groups.iter().any(|g| identity.in_group(g))
    }
}

/// A just-in-time grant that can be requested for a bounded time. Policies test for it with
/// `context.grants.contains("<name>")`.
#[derive(Debug, Clone)]
pub struct GrantConfig {
    pub name: String,
    /// Groups whose members may approve a request (none: group `admin`).
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub approvals: u32,
    /// Longest time one request may ask for.
    pub max_duration: Duration,
    /// The connections it may be requested for (empty: all).
    pub connections: Vec<String>,
}

/// `[reviews]`: statements held for human approval.
#[derive(Debug, Clone)]
pub struct ReviewsConfig {
    /// How long a held statement waits for a decision unless its policy says (`@timeout`).
    pub timeout: Duration,
}

/// `[identity]`: identity providers trusted next to the gateway's own service-account tokens.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// `[[identity.oidc]]`: OIDC issuers whose signed tokens (JWTs) the gateway accepts.
    pub oidc: Vec<OidcIssuerConfig>,
}

/// One trusted OIDC issuer. Tokens are verified against exactly this issuer's keys, audience
/// and algorithms; nothing in a token can choose another.
#[derive(Debug, Clone)]
pub struct OidcIssuerConfig {
    /// The short name people and `gatehouse login --issuer` use; identities are recorded as
    /// `<name>/<sub>`, so renaming an issuer renames its principals.
    pub name: String,
    /// The issuer URL, compared byte for byte with the token's `iss` and the discovery
    /// document's `issuer`.
    pub issuer: String,
    /// The `aud` value tokens must carry for this gateway.
    pub audience: String,
    /// The OAuth client id: required as `azp` when a token names several audiences, and used by
    /// `gatehouse login`. Defaults to `audience`.
    pub client_id: String,
    /// Signature algorithms accepted from this issuer (pinned; the token's `alg` never decides).
    pub algorithms: Vec<String>,
    /// The claim holding the caller's groups (a string array, or one string).
    pub groups_claim: String,
    /// Extra groups granted when a claim has a given value (`repository_owner == "acme"`).
    pub group_mappings: Vec<GroupMapping>,
    /// Claims that must have exactly these values (a tenant id, a repository owner).
    pub required_claims: BTreeMap<String, String>,
    /// What kind of caller this issuer's tokens stand for.
    pub kind: OidcSubjectKind,
    /// Longest accepted `exp - iat`.
    pub max_token_lifetime: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (at most 60 s).
    pub leeway: Duration,
    /// Accepted JOSE `typ` header values (case-insensitive; a missing `typ` is accepted).
    pub token_types: Vec<String>,
    /// Extra PEM trust roots for an IdP behind a private CA.
    pub ca_file: Option<PathBuf>,
    /// How long fetched keys are used before they are fetched again.
    pub jwks_cache_ttl: Duration,
    /// How long cached keys keep working while the IdP cannot be reached; then tokens are
    /// refused (fail closed).
    pub max_stale: Duration,
    /// Least time between two key fetches triggered by unknown key ids or failures.
    pub refresh_cooldown: Duration,
    /// Deadline for one discovery or key fetch.
    pub fetch_timeout: Duration,
}

/// A claim value that adds a group: `{ claim = "repository_owner", equals = "acme", group = "ci" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    pub claim: String,
    pub equals: String,
    pub group: String,
}

/// The kind of identity an OIDC issuer's tokens stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OidcSubjectKind {
    /// People logging in through the company IdP.
    #[default]
    Human,
    /// CI jobs and cloud workloads with platform-issued tokens.
    Workload,
}

/// The asymmetric JWS algorithms Gatehouse verifies. Symmetric (`HS*`) ones are never
/// accepted: the key would be a secret shared with the IdP, and a public key could be misused
/// as one (RS/HS confusion).
pub const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The algorithms pinned when an issuer does not list its own.
pub const OIDC_DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];

/// `[policy]`: the Cedar policy files.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// Glob patterns such as `policies/*.cedar`, relative to `base`. Empty: only members of
    /// group `admin` may do anything (fail closed).
    pub files: Vec<String>,
    /// The directory relative patterns are resolved against (the config file's).
    pub base: PathBuf,
    /// How often policy files are checked for changes.
    pub reload_interval: Duration,
}

/// `[server]`: where the gateway listens and keeps its state.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub postgres_listen: SocketAddr,
    /// PEM certificate chain and key for client-facing TLS. When absent, a self-signed pair is
    /// generated in the data directory on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allow clients that are not on loopback to authenticate without TLS. Off by default:
    /// the token is sent as a cleartext password and must not cross a network in clear.
    pub allow_plaintext: bool,
    /// Deadline for a client to finish TLS, startup and authentication.
    pub handshake_timeout: Duration,
    /// Deadline for the gateway to connect and authenticate to an upstream server.
    pub upstream_connect_timeout: Duration,
    /// Cap on connections still in their handshake, so idle sockets cannot exhaust the gateway.
    pub max_pending_handshakes: usize,
    /// The same cap per source address, so one source cannot use up the global cap.
    pub max_pending_handshakes_per_source: usize,
    /// Largest client message the gateway accepts (Query, Parse, Bind, ...).
    pub max_message_bytes: usize,
    /// How often a live session re-checks its credential, so that a revoked or expired token
    /// ends the session within this time.
    pub credential_recheck_interval: Duration,
    /// Deadline for a one-shot command (`gatehouse exec`, REST, MCP) once connected.
    pub exec_timeout: Duration,
    /// How long a client may keep a transaction open without sending anything before the
    /// gateway ends the session (the server rolls the transaction back). `None`: no limit.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Threads that each run their sessions from accept to close (one per core by default);
    /// 0 runs sessions on the shared runtime instead. See `gatehouse_postgres::threads`.
    pub session_threads: usize,
}

/// `[store]`: where sessions, statements and tokens are kept.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
}

/// A registered target the gateway can connect to on a caller's behalf.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub name: String,
    pub kind: ConnectionKind,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<SecretRef>,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub tags: BTreeMap<String, String>,
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
}

/// How the gateway protects its link to an upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plaintext. Acceptable only on a trusted network; `gatehouse check` warns otherwise.
    #[default]
    Disable,
    /// TLS without certificate verification (libpq's `sslmode=require`).
    Require,
    /// TLS with the server certificate verified against `ca_file` and the host name.
    VerifyFull,
}

/// One problem found in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// A dotted path into the file, such as `connections[1].password`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{} problem(s) in {}:\n{}", .problems.len(), .path.display(), format_problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn format_problems(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base).map_err(|e| match e {
            ParseError::Syntax(message) => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            ParseError::Invalid(problems) => ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ParseError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
        raw.validate(base).map_err(ParseError::Invalid)
    }

    /// Looks a connection up by the name clients use to select it.
    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// Advice that does not stop the gateway from starting but that an operator should see.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut warnings = Vec::new();
        for (i, c) in self.connections.iter().enumerate() {
            if c.tls == UpstreamTls::Disable && !is_loopback_host(&c.host) {
                warnings.push(ConfigProblem {
                    path: format!("connections[{i}].tls"),
                    message: format!(
                        "connection \"{}\" reaches {} without TLS; set tls = \"verify-full\" and ca_file",
                        c.name, c.host
                    ),
                });
            }
        }
        if self.policy.files.is_empty() {
            warnings.push(ConfigProblem {
                path: "policy.files".into(),
                message:
                    "no policy files: only members of group \"admin\" may connect or run anything"
                        .into(),
            });
        }
        if self.server.allow_plaintext {
            warnings.push(ConfigProblem {
                path: "server.allow_plaintext".into(),
                message: "clients off loopback may send their token without TLS".into(),
            });
        }
        if self.audit.durability == gatehouse_audit::Durability::Off {
            warnings.push(ConfigProblem {
                path: "audit.durability".into(),
                message: "the audit log is OFF: no statement, session or administrative action is recorded in it; use only to measure what it costs".into(),
            });
        }
        warnings
    }
}

/// Why config text was rejected.
#[derive(Debug)]
pub enum ParseError {
    Syntax(String),
    Invalid(Vec<ConfigProblem>),
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    reviews: RawReviews,
    #[serde(default)]
    grants: Vec<RawGrant>,
    #[serde(default)]
    masking: RawMasking,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    connections: Vec<RawConnection>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    durability: Option<String>,
    checkpoint_every: Option<u64>,
    result_excerpt_rows: Option<usize>,
    writes: Option<String>,
    overlap_reads: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    key: Option<String>,
    #[serde(default)]
    rules: Vec<RawMaskingRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaskingRule {
    name: Option<String>,
    column: Option<String>,
    column_pattern: Option<String>,
    detector: Option<String>,
    strategy: Option<String>,
    keep_last: Option<usize>,
    #[serde(default)]
    connections: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    exempt_groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    name: Option<String>,
    #[serde(default)]
    approvers: Vec<String>,
    approvals: Option<u32>,
    #[serde(default, deserialize_with = "opt_duration")]
    max_duration: Option<Duration>,
    #[serde(default)]
    connections: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReviews {
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    oidc: Vec<RawOidcIssuer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidcIssuer {
    name: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    client_id: Option<String>,
    algorithms: Option<Vec<String>>,
    groups_claim: Option<String>,
    #[serde(default)]
    group_mappings: Vec<GroupMapping>,
    #[serde(default)]
    required_claims: BTreeMap<String, String>,
    #[serde(default)]
    kind: OidcSubjectKind,
    #[serde(default, deserialize_with = "opt_duration")]
    max_token_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    leeway: Option<Duration>,
    token_types: Option<Vec<String>>,
    ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "opt_duration")]
    jwks_cache_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    max_stale: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    refresh_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    fetch_timeout: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    files: Vec<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    reload_interval: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    data_dir: Option<PathBuf>,
    api_listen: Option<String>,
    postgres_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default, deserialize_with = "opt_duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    upstream_connect_timeout: Option<Duration>,
    max_pending_handshakes: Option<usize>,
    max_pending_handshakes_per_source: Option<usize>,
    max_message_bytes: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    credential_recheck_interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    idle_in_transaction_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    exec_timeout: Option<Duration>,
    session_threads: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: Option<String>,
    kind: Option<ConnectionKind>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    #[serde(default)]
    tls: UpstreamTls,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration \"{text}\": {e}")))
}

/// The largest message PostgreSQL itself accepts (1 GB - 2); no configuration may exceed it.
const PG_MAX_MESSAGE: usize = 0x3fff_fffe;

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(ConfigProblem { path, message });
        };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let data_dir = resolve(
            self.server
                .data_dir
                .unwrap_or_else(|| PathBuf::from("gatehouse-data")),
        );
        let mut listen = |field: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            text.parse::<SocketAddr>().unwrap_or_else(|_| {
                problem(
                    format!("server.{field}"),
                    format!("\"{text}\" is not an address such as {default}"),
                );
                default.parse().expect("default listen addresses are valid")
            })
        };
        let api_listen = listen("api_listen", self.server.api_listen, DEFAULT_API_LISTEN);
        let postgres_listen = listen(
            "postgres_listen",
            self.server.postgres_listen,
            DEFAULT_POSTGRES_LISTEN,
        );
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            problem(
                "server.tls_cert".into(),
                "tls_cert and tls_key must be given together".into(),
            );
        }
        let max_message_bytes = self.server.max_message_bytes.unwrap_or(64 << 20);
        if !(1024..=PG_MAX_MESSAGE).contains(&max_message_bytes) {
            problem(
                "server.max_message_bytes".into(),
                format!("must be between 1024 and {PG_MAX_MESSAGE}"),
            );
        }

        let store_url = self
            .store
            .url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("gatehouse.db").display()));
        if !store_url.starts_with("sqlite:") {
            problem(
                "store.url".into(),
                "only sqlite:// stores are supported in this version".into(),
            );
        }

        let mut connections: Vec<ConnectionConfig> = Vec::new();
        for (i, c) in self.connections.into_iter().enumerate() {
            let at = |field: &str| format!("connections[{i}].{field}");
            let mut missing = |field: &str| {
                problem(at(field), "is required".into());
                String::new()
            };
            let name = c.name.unwrap_or_else(|| missing("name"));
            let host = c.host.unwrap_or_else(|| missing("host"));
            let database = c.database.unwrap_or_else(|| missing("database"));
            let user = c.user.unwrap_or_else(|| missing("user"));
            if c.kind.is_none() {
                missing("kind");
            }
            if !name.is_empty() && !valid_connection_name(&name) {
                problem(
                    at("name"),
                    format!("\"{name}\" must be 1-63 characters of a-z, 0-9, '_' or '-'"),
                );
            }
            if connections.iter().any(|o| o.name == name) {
                problem(at("name"), format!("\"{name}\" is defined twice"));
            }
            let password = match c.password.map(|p| p.parse::<SecretRef>()) {
                None => None,
                Some(Ok(r)) => Some(r.resolve_relative(base)),
                Some(Err(e)) => {
                    problem(at("password"), e.to_string());
                    None
                }
            };
            let ca_file = c.ca_file.map(resolve);
            if c.tls == UpstreamTls::VerifyFull && ca_file.is_none() {
                problem(
                    at("ca_file"),
                    "tls = \"verify-full\" needs ca_file, the CA that signed the server's certificate".into(),
                );
            }
            connections.push(ConnectionConfig {
                name,
                kind: c.kind.unwrap_or(ConnectionKind::Postgres),
                host,
                port: c.port.unwrap_or(5432),
                database,
                user,
                password,
                tls: c.tls,
                ca_file,
                tags: c.tags,
            });
        }

        let mut oidc: Vec<OidcIssuerConfig> = Vec::new();
        for (i, o) in self.identity.oidc.into_iter().enumerate() {
            let at = |field: &str| format!("identity.oidc[{i}].{field}");
            let mut missing = |field: &str| {
                problem(at(field), "is required".into());
                String::new()
            };
            let name = o.name.unwrap_or_else(|| missing("name"));
            let issuer = o.issuer.unwrap_or_else(|| missing("issuer"));
            let audience = o.audience.unwrap_or_else(|| missing("audience"));
            if !name.is_empty() && !valid_connection_name(&name) {
                problem(
                    at("name"),
                    format!("\"{name}\" must be 1-63 characters of a-z, 0-9, '_' or '-'"),
                );
            }
            if name == crate::identity::GATEHOUSE_ISSUER {
                problem(
                    at("name"),
                    "\"gatehouse\" names the gateway's own tokens; choose another name".into(),
                );
            }
            if !issuer.is_empty() && !issuer.starts_with("https://") {
                problem(
                    at("issuer"),
                    format!("\"{issuer}\" must be an https:// URL (keys are fetched from it)"),
                );
            }
            if oidc.iter().any(|x| x.name == name) {
                problem(at("name"), format!("\"{name}\" is defined twice"));
            }
            if oidc.iter().any(|x| x.issuer == issuer) {
                problem(at("issuer"), format!("\"{issuer}\" is configured twice"));
            }
            let algorithms = o.algorithms.unwrap_or_else(|| {
                OIDC_DEFAULT_ALGORITHMS
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            });
            if algorithms.is_empty() {
                problem(at("algorithms"), "must name at least one algorithm".into());
            }
            for a in &algorithms {
                if !OIDC_ALGORITHMS.contains(&a.as_str()) {
                    problem(
                        at("algorithms"),
                        format!(
                            "\"{a}\" is not accepted; choose from {}",
                            OIDC_ALGORITHMS.join(", ")
                        ),
                    );
                }
            }
            let leeway = o.leeway.unwrap_or(Duration::from_secs(30));
            if leeway > Duration::from_secs(60) {
                problem(at("leeway"), "must be at most 60s".into());
            }
            let jwks_cache_ttl = o.jwks_cache_ttl.unwrap_or(Duration::from_secs(600));
            let max_stale = o.max_stale.unwrap_or(Duration::from_secs(3600));
            if max_stale < jwks_cache_ttl {
                problem(
                    at("max_stale"),
                    "must be at least jwks_cache_ttl (keys go stale only after they expire)".into(),
                );
            }
            for m in &o.group_mappings {
                if m.group.is_empty() || m.claim.is_empty() {
                    problem(
                        at("group_mappings"),
                        "each mapping needs a claim and a group".into(),
                    );
                }
            }
            oidc.push(OidcIssuerConfig {
                client_id: o.client_id.unwrap_or_else(|| audience.clone()),
                name,
                issuer,
                audience,
                algorithms,
                groups_claim: o.groups_claim.unwrap_or_else(|| "groups".into()),
                group_mappings: o.group_mappings,
                required_claims: o.required_claims,
                kind: o.kind,
                max_token_lifetime: o
                    .max_token_lifetime
                    .unwrap_or(Duration::from_secs(24 * 3600)),
                leeway,
                token_types: o
                    .token_types
                    .unwrap_or_else(|| vec!["JWT".into(), "at+jwt".into()]),
                ca_file: o.ca_file.map(resolve),
                jwks_cache_ttl,
                max_stale,
                refresh_cooldown: o.refresh_cooldown.unwrap_or(Duration::from_secs(30)),
                fetch_timeout: o.fetch_timeout.unwrap_or(Duration::from_secs(5)),
            });
        }

        let mut grants: Vec<GrantConfig> = Vec::new();
        for (i, g) in self.grants.into_iter().enumerate() {
            let at = |field: &str| format!("grants[{i}].{field}");
            let name = g.name.unwrap_or_default();
            if !valid_connection_name(&name) {
                problem(
                    at("name"),
                    format!("\"{name}\" must be 1-63 characters of a-z, 0-9, '_' or '-'"),
                );
            }
            if grants.iter().any(|x| x.name == name) {
                problem(at("name"), format!("\"{name}\" is defined twice"));
            }
            let approvals = g.approvals.unwrap_or(1);
            if !(1..=10).contains(&approvals) {
                problem(at("approvals"), "must be from 1 to 10".into());
            }
            for c in &g.connections {
                if !connections.iter().any(|x| &x.name == c) {
                    problem(at("connections"), format!("no connection is named \"{c}\""));
                }
            }
            let max_duration = g.max_duration.unwrap_or(Duration::from_secs(4 * 3600));
            if max_duration.is_zero() || max_duration > Duration::from_secs(30 * 86400) {
                problem(
                    at("max_duration"),
                    "must be more than 0 and at most 30d".into(),
                );
            }
            grants.push(GrantConfig {
                name,
                approvers: g.approvers,
                approvals,
                max_duration,
                connections: g.connections,
            });
        }

        let durability = match self.audit.durability.as_deref() {
            None | Some("strict") => gatehouse_audit::Durability::Strict,
            Some("batched") => gatehouse_audit::Durability::Batched,
            Some("off") => gatehouse_audit::Durability::Off,
            Some(other) => {
                problem(
                    "audit.durability".into(),
                    format!("\"{other}\" is not \"strict\", \"batched\" or \"off\""),
                );
                gatehouse_audit::Durability::Strict
            }
        };
        let writes = match self.audit.writes.as_deref() {
            None | Some("direct") => gatehouse_audit::WriteMethod::Direct,
            Some("buffered") => gatehouse_audit::WriteMethod::Buffered,
            Some(other) => {
                problem(
                    "audit.writes".into(),
                    format!("\"{other}\" is not \"direct\" or \"buffered\""),
                );
                gatehouse_audit::WriteMethod::Direct
            }
        };
        let checkpoint_every = self.audit.checkpoint_every.unwrap_or(1000);
        if !(1..=1_000_000).contains(&checkpoint_every) {
            problem(
                "audit.checkpoint_every".into(),
                "must be from 1 to 1000000".into(),
            );
        }
        let result_excerpt_rows = self.audit.result_excerpt_rows.unwrap_or(3);
        if result_excerpt_rows > 100 {
            problem(
                "audit.result_excerpt_rows".into(),
                "must be from 0 to 100 (the log keeps an excerpt, not the result)".into(),
            );
        }
        let mut masking = MaskingConfig::default();
        masking.key = match self.masking.key.map(|k| k.parse::<SecretRef>()) {
            None => None,
            Some(Ok(r)) => Some(r.resolve_relative(base)),
            Some(Err(e)) => {
                problem("masking.key".into(), e.to_string());
                None
            }
        };
        for (i, r) in self.masking.rules.into_iter().enumerate() {
            let at = |field: &str| format!("masking.rules[{i}].{field}");
            let name = r.name.unwrap_or_else(|| format!("rule-{i}"));
            let targets = [
                r.column.is_some(),
                r.column_pattern.is_some(),
                r.detector.is_some(),
            ];
            if targets.iter().filter(|t| **t).count() != 1 {
                problem(
                    at("column"),
                    "give exactly one of column, column_pattern or detector".into(),
                );
                continue;
            }
            let target = if let Some(c) = r.column {
                let parts: Vec<String> = c.split('.').map(|p| p.to_lowercase()).collect();
                match parts.as_slice() {
                    [schema, table, column] => MaskTarget::Column {
                        schema: schema.clone(),
                        table: table.clone(),
                        column: column.clone(),
                    },
                    [table, column] => MaskTarget::Column {
                        schema: "public".into(),
                        table: table.clone(),
                        column: column.clone(),
                    },
                    _ => {
                        problem(
                            at("column"),
                            format!(
                                "\"{c}\" must be schema.table.column (or table.column in public)"
                            ),
                        );
                        continue;
                    }
                }
            } else if let Some(p) = r.column_pattern {
                MaskTarget::ColumnPattern(p.to_lowercase())
            } else {
                let d = r.detector.unwrap_or_default();
                match gatehouse_mask::Detector::ALL.iter().find(|x| x.name() == d) {
                    Some(found) => MaskTarget::Detector(*found),
                    None => {
                        let names: Vec<&str> = gatehouse_mask::Detector::ALL
                            .iter()
                            .map(|x| x.name())
                            .collect();
                        problem(
                            at("detector"),
                            format!(
                                "\"{d}\" is not a detector; choose from {}",
                                names.join(", ")
                            ),
                        );
                        continue;
                    }
                }
            };
            let strategy = match (r.strategy.as_deref().unwrap_or("redact"), r.keep_last) {
                ("redact", None) => gatehouse_mask::Strategy::Redact,
                ("null", None) => gatehouse_mask::Strategy::Null,
                ("token", None) => gatehouse_mask::Strategy::Token,
                ("partial", Some(n)) if (1..=8).contains(&n) => {
                    gatehouse_mask::Strategy::Partial { keep_last: n }
                }
                ("partial", _) => {
                    problem(
                        at("keep_last"),
                        "partial needs keep_last from 1 to 8".into(),
                    );
                    continue;
                }
                (_, Some(_)) => {
                    problem(
                        at("keep_last"),
                        "keep_last is only for strategy = \"partial\"".into(),
                    );
                    continue;
                }
                (other, None) => {
                    problem(
                        at("strategy"),
                        format!("\"{other}\" is not one of redact, partial, token, null"),
                    );
                    continue;
                }
            };
            for c in &r.connections {
                if !connections.iter().any(|x| &x.name == c) {
                    problem(at("connections"), format!("no connection is named \"{c}\""));
                }
            }
            masking.rules.push(MaskingRule {
                name,
                target,
                strategy,
                connections: r.connections,
                groups: r.groups,
                exempt_groups: r.exempt_groups,
            });
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            source: None,
            server: ServerConfig {
                data_dir,
                api_listen,
                postgres_listen,
                tls_cert: self.server.tls_cert.map(resolve),
                tls_key: self.server.tls_key.map(resolve),
                allow_plaintext: self.server.allow_plaintext,
                handshake_timeout: self
                    .server
                    .handshake_timeout
                    .unwrap_or(Duration::from_secs(15)),
                upstream_connect_timeout: self
                    .server
                    .upstream_connect_timeout
                    .unwrap_or(Duration::from_secs(10)),
                max_pending_handshakes: self.server.max_pending_handshakes.unwrap_or(4096),
                max_pending_handshakes_per_source: self
                    .server
                    .max_pending_handshakes_per_source
                    .unwrap_or(256),
                max_message_bytes,
                credential_recheck_interval: self
                    .server
                    .credential_recheck_interval
                    .unwrap_or(Duration::from_secs(5)),
                exec_timeout: self.server.exec_timeout.unwrap_or(Duration::from_secs(60)),
                // "0s" turns the limit off.
                idle_in_transaction_timeout: match self.server.idle_in_transaction_timeout {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => Some(Duration::from_secs(600)),
                },
                session_threads: self.server.session_threads.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
                }),
            },
            store: StoreConfig { url: store_url },
            policy: PolicyConfig {
                files: self.policy.files,
                base: base.to_path_buf(),
                reload_interval: self
                    .policy
                    .reload_interval
                    .unwrap_or(Duration::from_secs(2)),
            },
            identity: IdentityConfig { oidc },
            grants,
            masking,
            audit: AuditConfig {
                durability,
                checkpoint_every,
                result_excerpt_rows,
                writes,
                overlap_reads: self.audit.overlap_reads.unwrap_or(false),
            },
            reviews: ReviewsConfig {
                timeout: self.reviews.timeout.unwrap_or(Duration::from_secs(300)),
            },
            connections,
        })
    }
}

fn valid_connection_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ParseError> {
        Config::parse(text, Path::new("/etc/gh"))
    }

    #[test]
    fn defaults_are_resolved_against_the_config_directory() {
        let c = parse("").unwrap();
        assert_eq!(c.server.data_dir, PathBuf::from("/etc/gh/gatehouse-data"));
        assert_eq!(c.store.url, "sqlite:///etc/gh/gatehouse-data/gatehouse.db");
        assert_eq!(c.server.postgres_listen.port(), 15432);
        assert_eq!(c.server.api_listen.port(), 8009);
    }

    #[test]
    fn session_threads_default_to_one_per_core_and_zero_means_the_shared_runtime() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(parse("").unwrap().server.session_threads, cores);
        let c = parse("[server]\nsession_threads = 0\n").unwrap();
        assert_eq!(c.server.session_threads, 0);
        assert!(parse("[server]\nsession_threads = -1\n").is_err());
    }

    #[test]
    fn audit_settings_parse_and_an_audit_log_turned_off_is_warned_about() {
        let c = parse("").unwrap();
        assert_eq!(c.audit.durability, gatehouse_audit::Durability::Strict);
        assert_eq!(c.audit.result_excerpt_rows, 3);
        assert_eq!(c.audit.writes, gatehouse_audit::WriteMethod::Direct);
        assert!(
            !c.audit.overlap_reads,
            "strict means before forwarding unless asked"
        );
        let c = parse(
            "[audit]\ndurability = \"off\"\nresult_excerpt_rows = 0\nwrites = \"buffered\"\noverlap_reads = true\n",
        )
        .unwrap();
        assert_eq!(c.audit.result_excerpt_rows, 0);
        assert_eq!(c.audit.writes, gatehouse_audit::WriteMethod::Buffered);
        assert!(c.audit.overlap_reads);
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.path == "audit.durability" && w.message.contains("OFF"))
        );
        let e = format!(
            "{:?}",
            parse("[audit]\ndurability = \"sometimes\"\nresult_excerpt_rows = 1000\nwrites = \"fast\"\n")
                .unwrap_err()
        );
        assert!(
            e.contains("audit.durability")
                && e.contains("audit.result_excerpt_rows")
                && e.contains("audit.writes"),
            "{e}"
        );
    }

    #[test]
    fn a_full_connection_parses() {
        let c = parse(
            r#"
            [policy]
            files = ["policies/*.cedar"]

            [[connections]]
            name = "appdb"
            kind = "postgres"
            host = "db.internal"
            port = 6432
            database = "app"
            user = "gatehouse"
            password = "env:APPDB_PASSWORD"
            tls = "verify-full"
            ca_file = "ca.pem"
            tags = { env = "prod" }
            "#,
        )
        .unwrap();
        let conn = c.connection("appdb").unwrap();
        assert_eq!(conn.port, 6432);
        assert_eq!(conn.ca_file.as_deref(), Some(Path::new("/etc/gh/ca.pem")));
        assert_eq!(conn.tags["env"], "prod");
        assert!(matches!(conn.password, Some(SecretRef::Env(ref v)) if v == "APPDB_PASSWORD"));
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let Err(ParseError::Invalid(problems)) = parse(
            r#"
            [server]
            api_listen = "nowhere"
            [[connections]]
            name = "Bad Name"
            kind = "postgres"
            password = "hunter2"
            tls = "verify-full"
            "#,
        ) else {
            panic!("expected validation problems");
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "server.api_listen",
            "connections[0].host",
            "connections[0].database",
            "connections[0].user",
            "connections[0].name",
            "connections[0].password",
            "connections[0].ca_file",
        ] {
            assert!(paths.contains(&expected), "{expected} missing in {paths:?}");
        }
        let password = problems
            .iter()
            .find(|p| p.path == "connections[0].password")
            .unwrap();
        assert!(
            !password.message.contains("hunter2"),
            "a rejected secret must not be echoed"
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_are_syntax_errors_with_a_position() {
        let Err(ParseError::Syntax(msg)) = parse("[server]\nlisten_everywhere = true\n") else {
            panic!()
        };
        assert!(msg.contains("listen_everywhere"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn duplicate_connection_names_are_rejected() {
        let one = r#"
            [[connections]]
            name = "a"
            kind = "postgres"
            host = "localhost"
            database = "d"
            user = "u"
        "#;
        let Err(ParseError::Invalid(problems)) = parse(&format!("{one}{one}")) else {
            panic!()
        };
        assert_eq!(problems[0].path, "connections[1].name");
    }

    #[test]
    fn oidc_issuers_parse_with_pinned_defaults() {
        let c = parse(
            r#"
            [[identity.oidc]]
            name = "github"
            issuer = "https://token.actions.githubusercontent.com"
            audience = "gatehouse"
            kind = "workload"
            group_mappings = [{ claim = "repository_owner", equals = "acme", group = "ci" }]
            required_claims = { repository_owner = "acme" }
            "#,
        )
        .unwrap();
        let o = &c.identity.oidc[0];
        assert_eq!(o.algorithms, vec!["RS256", "ES256", "EdDSA"]);
        assert_eq!(o.client_id, "gatehouse");
        assert_eq!(o.groups_claim, "groups");
        assert_eq!(o.kind, OidcSubjectKind::Workload);
        assert_eq!(o.group_mappings[0].group, "ci");
        assert_eq!(o.leeway, Duration::from_secs(30));
    }

    #[test]
    fn unsafe_oidc_settings_are_refused() {
        let Err(ParseError::Invalid(problems)) = parse(
            r#"
            [[identity.oidc]]
            name = "gatehouse"
            issuer = "http://idp.example"
            audience = "x"
            algorithms = ["HS256", "none"]
            leeway = "5m"
            "#,
        ) else {
            panic!("expected validation problems");
        };
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for expected in ["].name", "].issuer", "\"HS256\"", "\"none\"", "].leeway"] {
            assert!(
                text.iter().any(|t| t.contains(expected)),
                "{expected} missing in {text:?}"
            );
        }
    }

    #[test]
    fn plaintext_to_a_remote_host_is_warned_about() {
        let c = parse(
            r#"
            [[connections]]
            name = "a"
            kind = "postgres"
            host = "10.1.2.3"
            database = "d"
            user = "u"
            "#,
        )
        .unwrap();
        assert_eq!(c.warnings()[0].path, "connections[0].tls");
    }
}
