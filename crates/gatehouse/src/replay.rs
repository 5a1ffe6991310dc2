//! `gatehouse sessions replay`: a session from the audit log as a timeline for a terminal.
//! Every piece of recorded text goes through [`table::cell`], so statement text or result
//! values cannot move the cursor or forge lines.

use std::fmt::Write;

use serde_json::Value;

use crate::commands::text;
use crate::table::cell;

/// The widest statement text shown on one line.
const TEXT_WIDTH: usize = 160;

/// Renders a timeline (the JSON of `gatehouse_audit::replay::Timeline`).
pub fn render(timeline: &Value) -> String {
    let mut out = String::new();
    let events = timeline["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(out, "session {}", cell(&text(&timeline["session"]), 80));
    if let Some(at) = timeline["opened_at"].as_i64() {
        let _ = writeln!(out, "opened  {}", gatehouse_core::time::format_rfc3339(at));
    }
    for e in events {
        let offset = e["offset_us"].as_i64().unwrap_or(0) as f64 / 1e6;
        let line = describe(e);
        let mut lines = line.lines();
        let first = lines.next().unwrap_or_default();
        let _ = writeln!(out, "{:>+11.3}s  {first}", offset);
        for more in lines {
            let _ = writeln!(out, "              {more}");
        }
    }
    out
}

/// One event in words: a first line, and indented detail lines for results.
fn describe(e: &Value) -> String {
    let d = &e["data"];
    let actor = cell(e["actor"].as_str().unwrap_or("-"), 80);
    match e["kind"].as_str().unwrap_or("") {
        "session.opened" => format!(
            "opened by {actor} on {} ({}) from {}; groups {}; application {}",
            cell(&text(&d["connection"]), 60),
            cell(&text(&d["protocol"]), 20),
            cell(&text(&d["client"]), 60),
            cell(&text(&d["groups"]), 120),
            cell(&text(&d["application"]), 60),
        ),
        "session.closed" => format!("closed: {}", cell(&text(&d["reason"]), 200)),
        "statement.intent" => format!(
            "#{} {}{}  {}",
            text(&d["seq"]),
            cell(&text(&d["decision"]), 20),
            policies(&d["policies"]),
            statement_text(&d["text"]),
        ),
        "statement.outcome" => outcome(d),
        "review.created" => format!(
            "held for review {} (policy {}): {}",
            cell(&text(&d["review"]), 40),
            cell(&text(&d["policy"]), 80),
            statement_text(&d["text"]),
        ),
        "review.voted" => format!(
            "{actor} {} review {}{}",
            if d["approve"].as_bool() == Some(true) {
                "approved"
            } else {
                "denied"
            },
            cell(&text(&d["review"]), 40),
            d["reason"]
                .as_str()
                .map(|r| format!(": {}", cell(r, 200)))
                .unwrap_or_default(),
        ),
        "review.vote_result" => match d["refused"].as_str() {
            Some(why) => format!(
                "the vote on {} did not count: {}",
                cell(&text(&d["review"]), 40),
                cell(why, 120)
            ),
            None => format!(
                "review {} is now {}",
                cell(&text(&d["review"]), 40),
                cell(&text(&d["state"]), 20)
            ),
        },
        kind @ ("review.executed" | "review.expired" | "review.abandoned") => format!(
            "review {} {}{}",
            cell(&text(&d["review"]), 40),
            kind.trim_start_matches("review."),
            d["reason"]
                .as_str()
                .map(|r| format!(": {}", cell(r, 200)))
                .unwrap_or_default(),
        ),
        other => format!(
            "{} by {actor}: {}",
            cell(other, 40),
            cell(&d.to_string(), TEXT_WIDTH)
        ),
    }
}

fn policies(p: &Value) -> String {
    match p.as_array() {
        Some(list) if !list.is_empty() => {
            let names: Vec<String> = list.iter().map(|v| cell(&text(v), 60)).collect();
            format!(" [{}]", names.join(", "))
        }
        _ => String::new(),
    }
}

/// Statement text as recorded: whole, or cut with the size and hash of the whole.
fn statement_text(t: &Value) -> String {
    match t {
        Value::String(s) => cell(s, TEXT_WIDTH),
        Value::Object(o) => format!(
            "{} (cut; {} bytes in all, sha256 {})",
            cell(
                o.get("prefix").and_then(Value::as_str).unwrap_or(""),
                TEXT_WIDTH
            ),
            text(o.get("bytes").unwrap_or(&Value::Null)),
            cell(&text(o.get("sha256").unwrap_or(&Value::Null)), 64),
        ),
        _ => "-".into(),
    }
}

fn outcome(d: &Value) -> String {
    let mut line = format!("#{} {}", text(&d["seq"]), cell(&text(&d["outcome"]), 20));
    if let Some(code) = d["sqlstate"].as_str() {
        let _ = write!(line, " {}", cell(code, 10));
    }
    if d["outcome"].as_str() == Some("denied") {
        let _ = write!(line, "{}", policies(&d["policies"]));
    }
    if let Some(rows) = d["rows"].as_i64() {
        let _ = write!(line, " · {rows} rows");
    }
    if let Some(us) = d["duration_us"].as_u64() {
        let _ = write!(line, " · {:.3} ms", us as f64 / 1000.0);
    }
    if let Some(masked) = d["masked"].as_object()
        && !masked.is_empty()
    {
        let counts: Vec<String> = masked
            .iter()
            .map(|(rule, n)| format!("{}={}", cell(rule, 40), text(n)))
            .collect();
        let _ = write!(line, " · masked {}", counts.join(", "));
    }
    let excerpt = &d["excerpt"];
    if let Some(columns) = excerpt["columns"].as_array() {
        let headers: Vec<String> = columns.iter().map(|c| cell(&text(c), 40)).collect();
        let rows: Vec<Vec<String>> = excerpt["rows"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                r.as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|v| match v {
                        Value::Null => "NULL".to_string(),
                        v => cell(&text(v), 70),
                    })
                    .collect()
            })
            .collect();
        let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        for l in crate::table::render(&header_refs, &rows).lines() {
            let _ = write!(line, "\n  {l}");
        }
        let left_out = excerpt["rows_left_out"].as_u64().unwrap_or(0);
        if left_out > 0 {
            let _ = write!(line, "\n  … {left_out} more rows not kept");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_timeline_reads_as_lines_and_text_cannot_forge_one() {
        let t = json!({
            "session": "s_1",
            "opened_at": 1_700_000_000_000_000i64,
            "events": [
                {"offset_us": 0, "kind": "session.opened", "actor": "gatehouse/a",
                 "data": {"connection": "appdb", "protocol": "postgresql", "client": "127.0.0.1:1",
                          "groups": ["agents"], "application": "psql"}},
                {"offset_us": 1600, "kind": "statement.intent", "actor": "gatehouse/a",
                 "data": {"seq": 1, "decision": "allow", "policies": ["read"],
                          "text": "select email from customers\n-- +0.000s forged"}},
                {"offset_us": 2500, "kind": "statement.outcome", "actor": "gatehouse/a",
                 "data": {"seq": 1, "outcome": "ok", "rows": 5, "duration_us": 1000,
                          "masked": {"emails": 2},
                          "excerpt": {"columns": ["email"], "rows": [["a***@x.com"], [null]],
                                      "rows_left_out": 3, "values_cut": 0}}},
                {"offset_us": 9000, "kind": "session.closed", "actor": "gatehouse/a",
                 "data": {"reason": "client_closed"}},
            ]
        });
        let out = render(&t);
        assert!(
            out.contains(
                "+0.002s  #1 allow [read]  select email from customers\\n-- +0.000s forged"
            ),
            "{out}"
        );
        assert!(
            out.contains("#1 ok · 5 rows · 1.000 ms · masked emails=2"),
            "{out}"
        );
        assert!(out.contains("a***@x.com") && out.contains("NULL"), "{out}");
        assert!(out.contains("… 3 more rows not kept"), "{out}");
        assert!(out.contains("closed: client_closed"), "{out}");
        // One line per event, plus the header, the excerpt (3) and the left-out line.
        assert_eq!(out.lines().count(), 2 + 4 + 3 + 1, "{out}");
    }
}
