//! `gatehouse access`: request a just-in-time grant, list grants in force, revoke one.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::{AccessCommand, Format};
use crate::client::{ApiClient, segment};
use crate::commands::{print_json, text};
use crate::exec::EXIT_REFUSED;
use crate::table;

pub fn run(cmd: AccessCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AccessCommand::Request {
            connection,
            grant,
            duration,
            reason,
            wait,
            api,
        } => {
            let client = ApiClient::new(&api)?;
            let v = client.post(
                "/api/v1/access/requests",
                &json!({ "connection": connection, "grant": grant, "duration": duration, "reason": reason }),
            )?;
            let id = v["review"]["id"].as_str().unwrap_or_default().to_string();
            if !wait {
                if api.format == Format::Json {
                    return print_json(&v).map(|_| ExitCode::SUCCESS);
                }
                eprintln!("{}", text(&v["message"]));
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{}", text(&v["message"]));
            let started = Instant::now();
            loop {
                let r = client.get(&format!("/api/v1/reviews/{}", segment(&id)))?;
                match r["review"]["state"].as_str() {
                    Some("pending") => {}
                    Some("executed") | Some("approved") => break,
                    _ => {
                        eprintln!(
                            "\nerror: review {id} is {}{}",
                            text(&r["review"]["state"]),
                            r["review"]["reason"]
                                .as_str()
                                .map(|x| format!(": {}", table::cell(x, 200)))
                                .unwrap_or_default()
                        );
                        return Ok(ExitCode::from(EXIT_REFUSED));
                    }
                }
                let secs = started.elapsed().as_secs();
                eprint!("\rwaiting for approval of review {id} ({secs}s)");
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_secs(1));
            }
            eprintln!();
            let grants = client.get("/api/v1/access/grants")?;
            let mine = grants["grants"]
                .as_array()
                .and_then(|g| g.iter().find(|x| x["review_id"] == id.as_str()).cloned())
                .unwrap_or(Value::Null);
            if api.format == Format::Json {
                return print_json(&mine).map(|_| ExitCode::SUCCESS);
            }
            println!(
                "grant {} ({} on {}) in force until {}",
                text(&mine["id"]),
                text(&mine["name"]),
                text(&mine["connection"]),
                text(&mine["expires_at"])
            );
        }
        AccessCommand::List(api) => {
            let v = ApiClient::new(&api)?.get("/api/v1/access/grants")?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = v["grants"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|g| {
                    vec![
                        text(&g["id"]),
                        format!("{}/{}", text(&g["issuer"]), text(&g["subject"])),
                        text(&g["name"]),
                        text(&g["connection"]),
                        text(&g["granted_at"]),
                        text(&g["expires_at"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["ID", "HOLDER", "GRANT", "CONNECTION", "SINCE", "UNTIL"],
                    &rows
                )
            );
        }
        AccessCommand::Revoke { id, api } => {
            let v =
                ApiClient::new(&api)?.delete(&format!("/api/v1/access/grants/{}", segment(&id)))?;
            if api.format == Format::Json {
                return print_json(&v).map(|_| ExitCode::SUCCESS);
            }
            println!("revoked grant {}", text(&v["revoked"]["id"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}
