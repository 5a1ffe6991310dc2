//! `gatehouse reviews`: see and decide statements held for approval.

use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::{Format, ReviewsCommand};
use crate::client::{ApiClient, segment};
use crate::commands::{print_json, text};
use crate::table;

pub fn run(cmd: ReviewsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReviewsCommand::List { state, limit, api } => {
            let v = ApiClient::new(&api)?.get(&format!(
                "/api/v1/reviews?state={}&limit={limit}",
                segment(&state)
            ))?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = v["reviews"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        text(&r["id"]),
                        text(&r["state"]),
                        text(&r["requester"]),
                        text(&r["connection"]),
                        text(&r["policy"]),
                        text(&r["created_at"]),
                        table::cell(r["text"].as_str().unwrap_or_default(), 60),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID",
                        "STATE",
                        "REQUESTER",
                        "CONNECTION",
                        "POLICY",
                        "CREATED",
                        "STATEMENT"
                    ],
                    &rows
                )
            );
        }
        ReviewsCommand::Show { id, api } => {
            let v = ApiClient::new(&api)?.get(&format!("/api/v1/reviews/{}", segment(&id)))?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            show(&v["review"]);
        }
        ReviewsCommand::Approve { id, reason, api } => return vote(&api, &id, true, reason),
        ReviewsCommand::Deny { id, reason, api } => return vote(&api, &id, false, reason),
    }
    Ok(ExitCode::SUCCESS)
}

/// Approves (`approve = true`) or denies review `id`.
fn vote(
    api: &crate::cli::ApiArgs,
    id: &str,
    approve: bool,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let verb = if approve { "approve" } else { "deny" };
    let v = ApiClient::new(api)?.post(
        &format!("/api/v1/reviews/{}/{verb}", segment(id)),
        &json!({ "reason": reason }),
    )?;
    if api.format == Format::Json {
        return print_json(&v).map(|_| ExitCode::SUCCESS);
    }
    let r = &v["review"];
    let approvals = r["votes"]
        .as_array()
        .map(|votes| votes.iter().filter(|x| x["approve"] == true).count())
        .unwrap_or(0);
    println!(
        "review {} is now {} ({approvals} of {} approval(s))",
        text(&r["id"]),
        text(&r["state"]),
        text(&r["approvals_needed"])
    );
    Ok(ExitCode::SUCCESS)
}

/// Everything an approver needs, with control characters in the statement made visible so a
/// statement cannot disguise itself on the approver's terminal.
fn show(r: &Value) {
    println!("review      {} ({})", text(&r["id"]), text(&r["state"]));
    println!(
        "requester   {} \"{}\" (groups: {}) from {}",
        text(&r["requester"]),
        text(&r["requester_name"]),
        text(&r["requester_groups"]),
        text(&r["client_addr"])
    );
    println!(
        "connection  {}   session {}",
        text(&r["connection"]),
        text(&r["session_id"])
    );
    println!(
        "policy      {}: {} approval(s) from {}",
        text(&r["policy"]),
        text(&r["approvals_needed"]),
        if r["approvers"].as_array().is_some_and(|a| !a.is_empty()) {
            text(&r["approvers"])
        } else {
            "group admin".into()
        }
    );
    println!(
        "created     {}   expires {}",
        text(&r["created_at"]),
        text(&r["expires_at"])
    );
    if !r["reason"].is_null() {
        println!("reason      {}", text(&r["reason"]));
    }
    println!("statement   (sha256 {})", text(&r["text_hash"]));
    for line in r["text"].as_str().unwrap_or_default().lines() {
        println!("  {}", table::cell(line, 10_000));
    }
    if let Some(params) = r["params"].as_array() {
        println!("parameters  {}", text(&Value::Array(params.clone())));
    }
    if let Some(statements) = r["classification"]["statements"].as_array() {
        for s in statements {
            println!(
                "does        {} {} on {}",
                text(&s["kind"]),
                text(&s["command"]),
                text(&s["relations"])
            );
        }
    }
    for v in r["votes"].as_array().map(Vec::as_slice).unwrap_or_default() {
        println!(
            "vote        {} {} at {}{}",
            text(&v["voter"]),
            if v["approve"] == true {
                "approved"
            } else {
                "denied"
            },
            text(&v["at"]),
            v["reason"]
                .as_str()
                .map(|x| format!(": {}", table::cell(x, 200)))
                .unwrap_or_default()
        );
    }
}
