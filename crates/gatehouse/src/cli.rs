//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An identity-aware access gateway for agents, scripts and people"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate a config file and say exactly what is wrong and where.
    Check(ConfigArg),
    /// Service-account tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Recorded sessions and their statements.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Registered connections.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Show the identity and groups the gateway sees for the current token.
    Whoami(ApiArgs),
    /// Log in through one of the gateway's OIDC issuers (device flow) and store the token.
    Login {
        /// The issuer's name in the gateway's config (`[[identity.oidc]] name`).
        #[arg(long)]
        issuer: String,
        /// Extra trust roots (PEM) for an identity provider behind a private CA.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Also print the token on stdout, e.g. for PGPASSWORD.
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run one command on a connection through the gateway (waits for an approval if policy
    /// needs one). Exit codes: 0 done, 1 error, 3 awaiting approval (--no-wait), 4 refused.
    Exec {
        /// The connection to run it on.
        connection: String,
        /// The command.
        #[arg(short = 'e', long = "execute")]
        sql: Option<String>,
        /// Run the command of this approved review (once).
        #[arg(long, conflicts_with = "no_wait")]
        review: Option<String>,
        /// Do not wait for an approval: print the review id and exit with code 3.
        #[arg(long)]
        no_wait: bool,
        /// Most rows shown per statement.
        #[arg(long, default_value_t = 1000)]
        max_rows: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Just-in-time grants: request one for a while, list those in force, revoke.
    #[command(subcommand)]
    Access(AccessCommand),
    /// The tamper-evident audit log: verify it, export it, export a checkpoint.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Statements held for approval: list, show, approve, deny.
    #[command(subcommand)]
    Reviews(ReviewsCommand),
    /// Cedar policies: validate them, or explain a decision.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate the configured policy files against the Gatehouse schema.
    Check(ConfigArg),
    /// Classify a statement and show the decision and the policies that made it.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// A service-account name, or group:NAME for any member of a group.
        #[arg(long = "as")]
        as_whom: String,
        /// A group the principal belongs to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The connection the statement would run on.
        #[arg(long)]
        connection: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The SQL to explain.
        sql: String,
    },
}

#[derive(Args)]
pub struct ConfigArg {
    /// The config file (default: gatehouse.toml in the current directory, if present).
    #[arg(long, env = "GATEHOUSE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The gateway's API address.
    #[arg(
        long,
        env = "GATEHOUSE_URL",
        default_value = "http://127.0.0.1:8009",
        global = true
    )]
    pub url: String,
    /// The token to authenticate with.
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a service-account token; it is printed once.
    Create {
        /// The service account, one per automation class (e.g. ci-bot).
        #[arg(long)]
        name: String,
        /// A group the account belongs to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime, such as 30d or 12h (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// A source network (CIDR, or one address) the token may be used from (repeatable;
        /// default: anywhere).
        #[arg(long = "allow-network")]
        allow_networks: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List tokens (never their values).
    List(ApiArgs),
    /// Revoke a token by id, or every token of an account by name.
    Revoke {
        selector: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// Recent sessions, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One session with every statement.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A session from the audit log as a timeline: statements, decisions, reviews, results
    /// (masked excerpts), errors, with time offsets. Needs the admin or auditor group.
    Replay {
        id: String,
        /// Read the audit log in this data directory instead of asking the gateway (works
        /// with the gateway stopped, or on a copy of its data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Connections the gateway offers.
    List(ApiArgs),
}

#[derive(Subcommand)]
pub enum ReviewsCommand {
    /// Reviews you may see (yours, those you may decide; all for administrators).
    List {
        /// pending, approved, denied, expired, abandoned, executed or all.
        #[arg(long, default_value = "pending")]
        state: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One review: who, where, the statement, its classification, the votes.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Approve a held statement (it then runs once).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Deny a held statement; the requester is told who denied it and why.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum AccessCommand {
    /// Ask for a grant on a connection for a while; approvers decide it with `gatehouse
    /// reviews approve`. Prints the review id.
    Request {
        connection: String,
        /// The grant's name (`[[grants]]` in the gateway's config).
        #[arg(long)]
        grant: String,
        /// How long, such as 30m or 2h.
        #[arg(long = "for")]
        duration: String,
        /// What it is for; approvers see it.
        #[arg(long)]
        reason: String,
        /// Wait until it is decided.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Grants in force (yours; all for administrators).
    List(ApiArgs),
    /// End a grant now.
    Revoke {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the audit log is: `--data-dir`, else the config's data directory.
#[derive(Args)]
pub struct AuditTarget {
    /// The gateway's data directory (default: from the config).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain and every checkpoint signature; exits 1 at the first bad record.
    Verify {
        #[command(flatten)]
        target: AuditTarget,
        /// A checkpoint exported earlier (kept off the gateway host): also catches truncation
        /// and rewriting after the last checkpoint in the file.
        #[arg(long)]
        from_checkpoint: Option<PathBuf>,
        /// Ask the gateway at this API address to verify its log (token from GATEHOUSE_TOKEN
        /// or `gatehouse login`; needs the admin or auditor group) instead of reading it here.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print records as JSON lines (stable `seq` for de-duplication), for a SIEM.
    Export {
        #[command(flatten)]
        target: AuditTarget,
        /// Only records from here on: a sequence number (`1000`), a time
        /// (`2026-11-26T08:00:00Z`) or how long ago (`1h`, `30m`, `7days`).
        #[arg(long)]
        since: Option<String>,
        /// Output format: one JSON record per line.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
    /// Signed checkpoints.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
}

/// How `audit export` writes records.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines, exactly as in the log (each with its stable `seq`).
    Jsonl,
}

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// Print the latest signed checkpoint as JSON, to keep off the gateway host (and give to
    /// `audit verify --from-checkpoint` later).
    Export {
        #[command(flatten)]
        target: AuditTarget,
    },
}
