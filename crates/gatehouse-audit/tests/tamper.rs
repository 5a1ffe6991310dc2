//! Tamper tests on a real log: every way of changing it after the fact is detected.

use gatehouse_audit::record::{GENESIS, Record, encode_line};
use gatehouse_audit::{AuditLog, Durability, Event, last_checkpoint, verify_file};
use serde_json::json;

async fn sample(dir: &std::path::Path) -> (String, String) {
    let log = AuditLog::open(dir, Durability::Strict, 10).await.unwrap();
    for i in 0..50 {
        log.append(Event::new(
            "statement.intent",
            Some("gatehouse/agent"),
            json!({ "n": i, "text": format!("select {i};\n-- \"quoted\"\u{0}") }),
        ))
        .await
        .unwrap();
    }
    log.close().await;
    let public = std::fs::read_to_string(dir.join("signing.pub")).unwrap();
    (records_text(&dir.join("audit.log")), public)
}

/// The log's records, without the preallocated zeros a live log ends in.
fn records_text(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split('\0').next().unwrap().to_string()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn check(dir: &std::path::Path, lines: &[String], public: &str) -> Option<String> {
    let path = dir.join("tampered.log");
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let anchor = last_checkpoint(&dir.join("audit.log")).unwrap();
    verify_file(&path, public, anchor.as_ref())
        .unwrap()
        .problem
        .map(|p| p.message)
}

#[tokio::test]
async fn every_kind_of_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (text, public) = sample(dir.path()).await;
    let original = lines(&text);
    let v = verify_file(&dir.path().join("audit.log"), &public, None).unwrap();
    assert!(v.problem.is_none(), "{v:?}");
    assert_eq!(v.records as usize, original.len());
    assert_eq!(v.checkpoints, 5, "one signed checkpoint every 10 records");
    assert!(check(dir.path(), &original, &public).is_none());

    let mut flipped = original.clone();
    flipped[20] = flipped[20].replacen("select 1", "select 9", 1);
    assert!(
        check(dir.path(), &flipped, &public)
            .unwrap()
            .contains("changed")
    );

    let mut deleted = original.clone();
    deleted.remove(20);
    assert!(
        check(dir.path(), &deleted, &public)
            .unwrap()
            .contains("sequence")
    );

    let mut duplicated = original.clone();
    duplicated.insert(20, original[20].clone());
    assert!(
        check(dir.path(), &duplicated, &public)
            .unwrap()
            .contains("sequence")
    );

    let mut reordered = original.clone();
    reordered.swap(20, 21);
    assert!(
        check(dir.path(), &reordered, &public)
            .unwrap()
            .contains("sequence")
    );

    // A zero byte looks like the start of the preallocated region a live log ends in; written
    // into a record (or between two), it must not hide the records after it.
    let mut zeroed = original.clone();
    zeroed[20] = zeroed[20].replacen("select", "sel\0ct", 1);
    let message = check(dir.path(), &zeroed, &public).unwrap();
    assert!(message.contains("data follows"), "{message}");
    let problem = verify_file(&dir.path().join("tampered.log"), &public, None)
        .unwrap()
        .problem
        .unwrap();
    assert!(
        !problem.torn_tail,
        "a record cut in the middle is damage: {problem:?}"
    );
    let mut zero_line = original.clone();
    zero_line.insert(20, "\0\0\0".into());
    let message = check(dir.path(), &zero_line, &public).unwrap();
    assert!(message.contains("data follows"), "{message}");

    let truncated = original[..40].to_vec();
    let message = check(dir.path(), &truncated, &public).unwrap();
    assert!(message.contains("truncated"), "{message}");

    // Rewrite from record 15 on with a recomputed chain: every hash is consistent again, but
    // the signed checkpoint after it no longer covers what the log now says.
    let mut records: Vec<Record> = original
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records[14].data["text"] = json!("select 'nothing to see';");
    let mut rewritten: Vec<String> = original[..14].to_vec();
    let mut prev = records[13].hash.clone();
    for r in records.iter().skip(14) {
        let kind: &'static str = r.kind.clone().leak();
        let event = Event::new(kind, r.actor.as_deref(), r.data.clone());
        let mut line = Vec::new();
        prev = encode_line(r.seq, r.at, &event, &prev, &mut line);
        rewritten.push(String::from_utf8(line).unwrap().trim_end().to_string());
    }
    let message = check(dir.path(), &rewritten, &public).unwrap();
    assert!(message.contains("rewritten"), "{message}");

    // A log signed with another key is not accepted with this one.
    let other = tempfile::tempdir().unwrap();
    let (_, other_public) = sample(other.path()).await;
    let v = verify_file(&dir.path().join("audit.log"), &other_public, None).unwrap();
    assert!(v.problem.unwrap().message.contains("signature"));
    let _ = GENESIS;
}

#[tokio::test]
async fn a_torn_last_record_is_cut_at_start_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let (text, public) = sample(dir.path()).await;
    let path = dir.path().join("audit.log");
    std::fs::write(&path, format!("{text}{{\"seq\":99,\"at\":")).unwrap();
    let problem = verify_file(&path, &public, None).unwrap().problem.unwrap();
    assert!(problem.message.contains("cut off"), "{problem:?}");
    assert!(
        problem.torn_tail,
        "a torn tail is told apart from other damage"
    );

    let log = AuditLog::open(dir.path(), Durability::Strict, 10)
        .await
        .unwrap();
    log.append(Event::new("after.restart", None, json!({})))
        .await
        .unwrap();
    let v = verify_file(&path, &public, None).unwrap();
    assert!(v.problem.is_none(), "{v:?}");
    let after = records_text(&path);
    assert!(after.contains("\"kind\":\"audit.recovered\""), "{after}");
    assert!(after.contains("\"truncated_bytes\":15"), "{after}");

    // Damage in the middle is not silently cut.
    let mut damaged = lines(&after);
    damaged[5] = "garbage".into();
    std::fs::write(
        &path,
        damaged.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    assert!(
        AuditLog::open(dir.path(), Durability::Strict, 10)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn batched_appends_share_syncs_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), Durability::Batched, 1000)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(Event::new("e", None, json!({ "i": i })))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Batched appends return before the write; the writer commits within milliseconds.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let public = std::fs::read_to_string(dir.path().join("signing.pub")).unwrap();
    let v = verify_file(&dir.path().join("audit.log"), &public, None).unwrap();
    assert!(v.problem.is_none(), "{v:?}");
    assert_eq!(v.records, 200);
}
