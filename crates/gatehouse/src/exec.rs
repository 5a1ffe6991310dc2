//! `gatehouse exec`: one command through the gateway, for scripts. When policy needs an
//! approval it waits (a spinner with the elapsed time and the review id on stderr) or, with
//! `--no-wait`, prints the review id and exits with [`EXIT_AWAITING_REVIEW`]; `--review <id>`
//! later runs exactly the approved command, once.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::cli::{ApiArgs, Format};
use crate::client::{ApiClient, segment};
use crate::commands::{print_json, text};
use crate::table;

/// The command waits for an approval (`--no-wait`); run it later with `--review`.
pub const EXIT_AWAITING_REVIEW: u8 = 3;
/// Policy or an approver refused the command, or nobody approved it in time.
pub const EXIT_REFUSED: u8 = 4;

pub struct ExecArgs {
    pub connection: String,
    pub sql: Option<String>,
    pub review: Option<String>,
    pub no_wait: bool,
    pub max_rows: usize,
}

pub fn run(args: ExecArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(api)?;
    let path = format!("/api/v1/connections/{}/exec", segment(&args.connection));
    if args.sql.is_none() && args.review.is_none() {
        bail!("give the command with -e \"<sql>\", or --review <id> to run an approved one");
    }
    let first = match client.post_status(
        &path,
        &json!({ "sql": args.sql, "review": args.review, "max_rows": args.max_rows }),
    )? {
        (403, v) => return refused(&v["error"]["message"]),
        (_, v) => v,
    };
    if first["status"] != "review" {
        return print_results(&first, api.format);
    }
    let id = first["review"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("{}", text(&first["message"]));
    if args.no_wait {
        println!("{id}");
        return Ok(ExitCode::from(EXIT_AWAITING_REVIEW));
    }
    let started = Instant::now();
    let state = loop {
        let v = client.get(&format!("/api/v1/reviews/{}", segment(&id)))?;
        let review = &v["review"];
        match review["state"].as_str() {
            Some("pending") => {}
            Some("approved") => break "approved",
            _ => {
                eprintln!();
                return refused(&json!(format!(
                    "review {id} is {}{}",
                    text(&review["state"]),
                    review["reason"]
                        .as_str()
                        .map(|r| format!(": {}", table::cell(r, 200)))
                        .unwrap_or_default()
                )));
            }
        }
        let secs = started.elapsed().as_secs();
        eprint!(
            "\r{} waiting for approval of review {id} ({secs}s)",
            ['|', '/', '-', '\\'][(secs % 4) as usize]
        );
        let _ = std::io::stderr().flush();
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("\rreview {id} {state}; running it");
    match client.post_status(&path, &json!({ "review": id, "max_rows": args.max_rows }))? {
        (403, v) => refused(&v["error"]["message"]),
        (_, v) => print_results(&v, api.format),
    }
}

fn refused(message: &Value) -> anyhow::Result<ExitCode> {
    eprintln!("error: {}", text(message));
    Ok(ExitCode::from(EXIT_REFUSED))
}

fn print_results(v: &Value, format: Format) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        print_json(v)?;
        return Ok(ExitCode::SUCCESS);
    }
    for result in v["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let columns: Vec<&str> = result["columns"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !columns.is_empty() {
            let rows: Vec<Vec<String>> = result["rows"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|row| {
                    row.as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|cell| match cell {
                            Value::Null => "NULL".to_string(),
                            other => table::cell(other.as_str().unwrap_or_default(), 200),
                        })
                        .collect()
                })
                .collect();
            print!("{}", table::render(&columns, &rows));
        }
        if result["truncated"] == true {
            eprintln!(
                "({} rows; only the first {} shown)",
                text(&result["row_count"]),
                result["rows"].as_array().map_or(0, Vec::len)
            );
        }
        println!("{}", text(&result["command"]));
    }
    Ok(ExitCode::SUCCESS)
}
