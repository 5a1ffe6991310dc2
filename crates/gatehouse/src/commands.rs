//! What each subcommand does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gatehouse_core::config::{Config, ConfigError};
use serde_json::{Value, json};

use crate::cli::{
    ApiArgs, Cli, Command, ConfigArg, ConnectionsCommand, Format, PolicyCommand, SessionsCommand,
    TokenCommand,
};
use crate::client::{ApiClient, segment};
use crate::table;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(arg) => {
            init_logging();
            let config = load_config(&arg)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::serve::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(arg) => check(&arg),
        Command::Token(cmd) => token(cmd),
        Command::Sessions(cmd) => sessions(cmd),
        Command::Connections(ConnectionsCommand::List(api)) => connections(&api),
        Command::Whoami(api) => whoami(&api),
        Command::Reviews(cmd) => crate::reviews::run(cmd),
        Command::Access(cmd) => crate::access::run(cmd),
        Command::Audit(cmd) => crate::audit::run(cmd),
        Command::Exec {
            connection,
            sql,
            review,
            no_wait,
            max_rows,
            api,
        } => crate::exec::run(
            crate::exec::ExecArgs {
                connection,
                sql,
                review,
                no_wait,
                max_rows,
            },
            &api,
        ),
        Command::Login {
            issuer,
            ca_file,
            print,
            api,
        } => crate::login::login(&api, &issuer, ca_file, print),
        Command::Policy(PolicyCommand::Check(arg)) => crate::policy::check(&load_config(&arg)?),
        Command::Policy(PolicyCommand::Explain {
            config,
            as_whom,
            groups,
            connection,
            format,
            sql,
        }) => crate::policy::explain(
            &load_config(&config)?,
            &as_whom,
            &groups,
            &connection,
            &sql,
            format,
        ),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn config_path(arg: &ConfigArg) -> Option<PathBuf> {
    arg.config
        .clone()
        .or_else(|| Some(PathBuf::from("gatehouse.toml")).filter(|p| p.exists()))
}

pub(crate) fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    match config_path(arg) {
        Some(path) => Ok(Config::load(&path)?),
        None => {
            tracing::warn!(
                "no config file given and no gatehouse.toml here: running with defaults and no connections"
            );
            Config::parse("", std::path::Path::new("."))
                .map_err(|_| anyhow::anyhow!("the built-in defaults are invalid"))
        }
    }
}

fn check(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let Some(path) = config_path(arg) else {
        anyhow::bail!("no config file: pass --config FILE or set GATEHOUSE_CONFIG");
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(
            e @ (ConfigError::Invalid { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::Read { .. }),
        ) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut failed = false;
    for (i, c) in config.connections.iter().enumerate() {
        if let Some(secret) = &c.password
            && let Err(e) = secret.resolve()
        {
            eprintln!("error: connections[{i}].password: {e}");
            failed = true;
        }
    }
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    if let Err(e) = crate::policy::load(&config) {
        eprintln!("error: {e:#}");
        failed = true;
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{}: OK ({} connection(s))",
        path.display(),
        config.connections.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => table::cell(s, 200),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            groups,
            ttl,
            allow_networks,
            api,
        } => {
            let client = ApiClient::new(&api)?;
            let created = client.post(
                "/api/v1/tokens",
                &json!({ "name": name, "groups": groups, "ttl": ttl, "allowed_networks": allow_networks }),
            )?;
            if api.format == Format::Json {
                print_json(&created)?;
            } else {
                println!(
                    "{}",
                    created["token"]
                        .as_str()
                        .context("the gateway returned no token")?
                );
                eprintln!(
                    "created token {} for service account {} (groups: {}, expires: {}). It is shown only once.",
                    text(&created["id"]),
                    text(&created["account"]),
                    text(&created["groups"]),
                    text(&created["expires_at"]),
                );
            }
        }
        TokenCommand::List(api) => {
            let v = ApiClient::new(&api)?.get("/api/v1/tokens")?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = v["tokens"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    let status = if !t["revoked_at"].is_null() {
                        "revoked"
                    } else {
                        "active"
                    };
                    vec![
                        text(&t["id"]),
                        text(&t["account"]),
                        text(&t["groups"]),
                        text(&t["hint"]),
                        text(&t["created_at"]),
                        text(&t["expires_at"]),
                        text(&t["allowed_networks"]),
                        status.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID", "ACCOUNT", "GROUPS", "TOKEN", "CREATED", "EXPIRES", "NETWORKS",
                        "STATUS"
                    ],
                    &rows
                )
            );
        }
        TokenCommand::Revoke { selector, api } => {
            let v =
                ApiClient::new(&api)?.delete(&format!("/api/v1/tokens/{}", segment(&selector)))?;
            if api.format == Format::Json {
                print_json(&v)?;
            } else {
                println!("revoked {} token(s)", text(&v["revoked"]));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn sessions(cmd: SessionsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SessionsCommand::List { limit, api } => {
            let v = ApiClient::new(&api)?.get(&format!("/api/v1/sessions?limit={limit}"))?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = v["sessions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    vec![
                        text(&s["id"]),
                        text(&s["principal"]),
                        text(&s["connection"]),
                        text(&s["client_addr"]),
                        text(&s["started_at"]),
                        text(&s["ended_at"]),
                        text(&s["statement_count"]),
                        text(&s["end_reason"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID",
                        "IDENTITY",
                        "CONNECTION",
                        "CLIENT",
                        "STARTED",
                        "ENDED",
                        "STATEMENTS",
                        "END"
                    ],
                    &rows
                )
            );
        }
        SessionsCommand::Show { id, api } => {
            let v = ApiClient::new(&api)?.get(&format!("/api/v1/sessions/{}", segment(&id)))?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            let s = &v["session"];
            println!("session     {}", text(&s["id"]));
            println!(
                "identity    {} ({}; groups: {})",
                text(&s["principal"]),
                text(&s["identity_kind"]),
                text(&s["groups"])
            );
            println!(
                "connection  {} ({})",
                text(&s["connection"]),
                text(&s["protocol"])
            );
            println!(
                "client      {} application={}",
                text(&s["client_addr"]),
                text(&s["application_name"])
            );
            println!("started     {}", text(&s["started_at"]));
            println!(
                "ended       {} ({})",
                text(&s["ended_at"]),
                text(&s["end_reason"])
            );
            println!();
            let rows: Vec<Vec<String>> = v["statements"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|st| {
                    let outcome = match st["sqlstate"].as_str() {
                        Some(code) => format!("{} {code}", text(&st["outcome"])),
                        None => text(&st["outcome"]),
                    };
                    vec![
                        text(&st["seq"]),
                        text(&st["started_at"]),
                        st["duration_us"]
                            .as_i64()
                            .map(|d| format!("{:.3}ms", d as f64 / 1000.0))
                            .unwrap_or("-".into()),
                        text(&st["rows"]),
                        outcome,
                        table::cell(st["text"].as_str().unwrap_or(""), 120),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["#", "TIME", "DURATION", "ROWS", "OUTCOME", "STATEMENT"],
                    &rows
                )
            );
        }
        SessionsCommand::Replay { id, data_dir, api } => {
            let timeline = match data_dir {
                Some(dir) => {
                    let log = dir
                        .join(crate::audit::AUDIT_DIR)
                        .join(gatehouse_audit::LOG_FILE);
                    let t = gatehouse_audit::replay::session_timeline(&log, &id)
                        .with_context(|| format!("cannot replay from {}", log.display()))?
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "the audit log in {} has no records of session \"{id}\"",
                                dir.display()
                            )
                        })?;
                    serde_json::to_value(t)?
                }
                None => ApiClient::new(&api)?
                    .get(&format!("/api/v1/sessions/{}/replay", segment(&id)))?,
            };
            if api.format == Format::Json {
                return print_json(&timeline).map(|_| ExitCode::SUCCESS);
            }
            print!("{}", crate::replay::render(&timeline));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn connections(api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let v = ApiClient::new(api)?.get("/api/v1/connections")?;
    if api.format == Format::Json {
        return print_json(&v).map(|_| ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = v["connections"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let tags = c["tags"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![text(&c["name"]), text(&c["kind"]), tags]
        })
        .collect();
    print!("{}", table::render(&["NAME", "KIND", "TAGS"], &rows));
    Ok(ExitCode::SUCCESS)
}

fn whoami(api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let v = ApiClient::new(api)?.get("/api/v1/whoami")?;
    if api.format == Format::Json {
        return print_json(&v).map(|_| ExitCode::SUCCESS);
    }
    println!("subject   {}", text(&v["subject"]));
    println!("name      {}", text(&v["display_name"]));
    println!("issuer    {}", text(&v["issuer"]));
    println!("kind      {}", text(&v["kind"]));
    println!("groups    {}", text(&v["groups"]));
    println!("token     {}", text(&v["token_id"]));
    Ok(ExitCode::SUCCESS)
}
