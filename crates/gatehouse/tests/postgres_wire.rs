//! Wire-protocol robustness: the cases of shared/security/wire-protocol.md that apply to the
//! walking skeleton, sent over raw sockets. Each test ends by checking that the gateway still
//! serves a normal login, so a bad connection is shown to fail alone.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{self, PROTOCOL_3_0, expect_closed, msg, packet, read_msg, simple};
use common::{Gateway, GatewayOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(("127.0.0.1", gw.pg_port)).await.unwrap()
}

/// The gateway still serves a normal session.
async fn still_serves(gw: &Gateway, token: &str) {
    let mut s = raw::login(gw, token).await;
    let msgs = simple(&mut s, "select 'alive'").await;
    assert_eq!(raw::first_column(&msgs), vec!["alive"]);
}

#[tokio::test]
async fn w1_w2_bad_startup_lengths_are_refused_before_allocation() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    for len in [0i32, 4, 7, -1, i32::MIN, i32::MAX, 10_001, 1 << 30] {
        let mut s = connect(&gw).await;
        // Only the length word: a gateway that trusted it would wait for (or allocate) the body.
        s.write_all(&len.to_be_bytes()).await.unwrap();
        let code = expect_closed(&mut s).await;
        assert_eq!(code.as_deref(), Some("08P01"), "length {len}");
    }
    still_serves(&gw, &token).await;
}

#[tokio::test]
async fn w3_a_startup_sent_one_byte_at_a_time_is_accepted() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = connect(&gw).await;
    s.set_nodelay(true).unwrap();
    for b in raw::default_startup() {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tag, _) = read_msg(&mut s).await.unwrap();
    assert_eq!(tag, b'R');
    s.write_all(&raw::password(&token)).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert!(raw::first_error(&msgs).is_none());
}

#[tokio::test]
async fn w4_a_large_startup_within_the_limit_is_accepted() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = connect(&gw).await;
    let name = "x".repeat(9_000);
    let pkt = raw::startup(
        PROTOCOL_3_0,
        &[
            ("user", "agent"),
            ("database", "appdb"),
            ("application_name", &name),
        ],
    );
    assert!(pkt.len() > 9_000 && pkt.len() <= 10_000);
    s.write_all(&pkt).await.unwrap();
    assert_eq!(read_msg(&mut s).await.unwrap().0, b'R');
    s.write_all(&raw::password(&token)).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
}

#[tokio::test]
async fn w5_silent_and_slow_clients_are_cut_off_and_do_not_block_others() {
    let gw = Gateway::start_with(GatewayOptions {
        // All from one address here: this test is about deadlines, not the per-source cap.
        server_extra: "handshake_timeout = \"3s\"\nmax_pending_handshakes_per_source = 2000".into(),
        ..Default::default()
    });
    let token = gw.token("w", &[]);

    // 1,000 idle sockets that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect(&gw).await);
    }
    // A legitimate login is unaffected: it does not wait for the idle ones' deadline (3 s).
    let started = Instant::now();
    still_serves(&gw, &token).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "login took {:?}",
        started.elapsed()
    );

    // A slow-drip client is closed at the deadline even though it keeps sending.
    let mut drip = connect(&gw).await;
    let started = Instant::now();
    let pkt = raw::default_startup();
    let mut closed = false;
    for b in pkt.iter().cycle().take(80) {
        if drip.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), drip.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a slow-drip handshake was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed after {:?}",
        started.elapsed()
    );

    // The idle ones were closed by their deadline too.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(8), idle[0].read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(idle);
    still_serves(&gw, &token).await;
}

#[tokio::test]
async fn w8_gssenc_is_declined_and_the_client_may_continue() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = connect(&gw).await;
    s.write_all(&packet(&80_877_104i32.to_be_bytes()))
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    raw::login_on(&mut s, &token).await;
}

#[tokio::test]
async fn w9_a_second_ssl_request_in_place_of_a_tls_handshake_is_closed() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = connect(&gw).await;
    let ssl = packet(&80_877_103i32.to_be_bytes());
    s.write_all(&ssl).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    s.write_all(&ssl).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        !rest.iter().any(|&b| b == b'S' || b == b'R'),
        "no protocol answer after a broken handshake"
    );
    still_serves(&gw, &token).await;
}

fn tls_connector(gw: &Gateway, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let pem = std::fs::read(gw.dir.path().join("data/tls/gateway.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

use rustls_pki_types::pem::PemObject;

#[tokio::test]
async fn w10_direct_tls_needs_alpn_postgresql_and_then_works() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    let tcp = connect(&gw).await;
    let mut tls = tls_connector(&gw, &[b"postgresql"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    raw::login_on(&mut tls, &token).await;
    let msgs = simple(&mut tls, "select 'over direct tls'").await;
    assert_eq!(raw::first_column(&msgs), vec!["over direct tls"]);
    // SSLRequest inside TLS is a protocol violation.
    let tcp = connect(&gw).await;
    let mut tls2 = tls_connector(&gw, &[b"postgresql"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    tls2.write_all(&packet(&80_877_103i32.to_be_bytes()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls2.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");

    // Without ALPN the connection is closed before any protocol message.
    let tcp = connect(&gw).await;
    let no_alpn = tls_connector(&gw, &[]).connect(name, tcp).await;
    if let Ok(mut tls) = no_alpn {
        let _ = tls.write_all(&raw::default_startup()).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
        assert!(
            rest.is_empty(),
            "a direct-TLS client without ALPN got {rest:?}"
        );
    }
    still_serves(&gw, &token).await;
}

#[tokio::test]
async fn w11_cancel_with_a_wrong_key_is_ignored_silently() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = connect(&gw).await;
    let msgs = raw::login_on(&mut s, &token).await;
    let key = msgs.iter().find(|(t, _)| *t == b'K').unwrap().1.clone();
    s.write_all(&raw::query("select pg_sleep(1.5), 'finished'"))
        .await
        .unwrap();

    // Wrong key for the right pid, and an unknown pid: no answer, no effect.
    for (pid, secret) in [
        (key[..4].to_vec(), {
            let mut k = key[4..].to_vec();
            k[0] ^= 0xff;
            k
        }),
        (vec![0, 0, 0, 1], key[4..].to_vec()),
    ] {
        let mut c = connect(&gw).await;
        let mut body = 80_877_102i32.to_be_bytes().to_vec();
        body.extend(pid);
        body.extend(secret);
        c.write_all(&packet(&body)).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    }
    let msgs = raw::until_ready(&mut s).await;
    assert!(
        raw::first_error(&msgs).is_none(),
        "the query was cancelled by a wrong key"
    );
}

#[tokio::test]
async fn w15_protocol_versions_are_negotiated_or_refused() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);

    // 2.0 and 4.0: refused.
    for version in [2 << 16, 4 << 16] {
        let mut s = connect(&gw).await;
        s.write_all(&raw::startup(
            version,
            &[("user", "a"), ("database", "appdb")],
        ))
        .await
        .unwrap();
        assert_eq!(expect_closed(&mut s).await.as_deref(), Some("0A000"));
    }
    // 3.99 with an unknown _pq_ option: NegotiateProtocolVersion(3.0, [option]), then login.
    let mut s = connect(&gw).await;
    s.write_all(&raw::startup(
        (3 << 16) | 99,
        &[("user", "a"), ("database", "appdb"), ("_pq_.future", "1")],
    ))
    .await
    .unwrap();
    let (tag, body) = read_msg(&mut s).await.unwrap();
    assert_eq!(tag, b'v');
    assert_eq!(&body[..4], &0i32.to_be_bytes());
    assert_eq!(&body[4..8], &1i32.to_be_bytes());
    assert_eq!(&body[8..], b"_pq_.future\0");
    assert_eq!(read_msg(&mut s).await.unwrap().0, b'R');
    s.write_all(&raw::password(&token)).await.unwrap();
    assert!(raw::first_error(&raw::until_ready(&mut s).await).is_none());
}

#[tokio::test]
async fn w17_w18_w19_bad_messages_after_login_end_only_that_session() {
    let gw = Gateway::start_with(GatewayOptions {
        server_extra: "max_message_bytes = 1048576".into(),
        ..Default::default()
    });
    let token = gw.token("w", &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown type", msg(b'z', b"")),
        ("length below 4", {
            let mut m = vec![b'Q'];
            m.extend(3i32.to_be_bytes());
            m
        }),
        ("negative length", {
            let mut m = vec![b'Q'];
            m.extend((-8i32).to_be_bytes());
            m
        }),
        ("oversized Sync", {
            let mut m = vec![b'S'];
            m.extend(20_000i32.to_be_bytes());
            m
        }),
        // W20: only the header of a 2 MiB query is sent; the gateway must not wait for the rest.
        ("query above the cap", {
            let mut m = vec![b'Q'];
            m.extend((2i32 << 20).to_be_bytes());
            m
        }),
        ("query without terminator", msg(b'Q', b"select 1")),
        ("password after login", raw::password("again")),
        ("bind with length -2", {
            let mut b = b"\0\0".to_vec();
            b.extend(0i16.to_be_bytes());
            b.extend(1i16.to_be_bytes());
            b.extend((-2i32).to_be_bytes());
            b.extend(0i16.to_be_bytes());
            msg(b'B', &b)
        }),
    ];
    for (what, bytes) in cases {
        let mut s = raw::login(&gw, &token).await;
        s.write_all(&bytes).await.unwrap();
        let code = expect_closed(&mut s).await;
        assert_eq!(code.as_deref(), Some("08P01"), "{what}");
    }
    // W18: a length beyond the bytes sent, then EOF: the session ends, nothing hangs.
    let mut s = raw::login(&gw, &token).await;
    let mut m = vec![b'Q'];
    m.extend(100i32.to_be_bytes());
    m.extend(b"select");
    s.write_all(&m).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    still_serves(&gw, &token).await;
}

#[tokio::test]
async fn w21_invalid_utf8_and_function_calls_are_refused_and_the_session_goes_on() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = raw::login(&gw, &token).await;

    s.write_all(&msg(b'Q', b"select '\xff\xfe'\0"))
        .await
        .unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(raw::first_error(&msgs).as_deref(), Some("22021"));

    // FunctionCall (oid 1598 = random()) is not allowed.
    let mut body = 1598i32.to_be_bytes().to_vec();
    body.extend(0i16.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    s.write_all(&msg(b'F', &body)).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(raw::first_error(&msgs).as_deref(), Some("42501"));
    let message = raw::field(&msgs.iter().find(|(t, _)| *t == b'E').unwrap().1, b'M');
    assert!(message.contains("FunctionCall"), "{message}");

    // Inside a transaction a refused statement aborts it, exactly as a failed one would.
    simple(&mut s, "begin").await;
    s.write_all(&msg(b'Q', b"select '\xff'\0")).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(
        msgs.last().unwrap().1,
        b"E",
        "transaction status after a refusal"
    );
    let msgs = simple(&mut s, "select 1").await;
    assert_eq!(raw::first_error(&msgs).as_deref(), Some("25P02"));
    simple(&mut s, "rollback").await;

    let msgs = simple(&mut s, "select 'still here'").await;
    assert_eq!(raw::first_column(&msgs), vec!["still here"]);
}

#[tokio::test]
async fn w22_w23_protocol_errors_the_server_answers_keep_the_session_consistent() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = raw::login(&gw, &token).await;

    // Bind to an unknown statement, Execute of an unknown portal: server errors, then Sync.
    let mut bind = b"\0nope\0".to_vec();
    bind.extend([0, 0, 0, 0, 0, 0]);
    let mut batch = msg(b'B', &bind);
    batch.extend(msg(b'E', b"ghost\0\0\0\0\0"));
    batch.extend(msg(b'S', b""));
    s.write_all(&batch).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    assert_eq!(raw::first_error(&msgs).as_deref(), Some("26000"));

    // CopyData outside COPY is ignored by the server; a Sync storm is answered in order.
    s.write_all(&msg(b'd', b"stray")).await.unwrap();
    let mut storm = Vec::new();
    for _ in 0..100 {
        storm.extend(msg(b'S', b""));
    }
    s.write_all(&storm).await.unwrap();
    for _ in 0..100 {
        assert_eq!(read_msg(&mut s).await.unwrap().0, b'Z');
    }
    let msgs = simple(&mut s, "select 'consistent'").await;
    assert_eq!(raw::first_column(&msgs), vec!["consistent"]);

    // Terminate, then more data: the session is over.
    let mut end = msg(b'X', b"");
    end.extend(raw::query("select 1"));
    s.write_all(&end).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn startup_options_and_replication_are_refused() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    for (key, value) in [
        ("options", "-c role=postgres"),
        ("replication", "database"),
        ("search_path", "evil"),
    ] {
        let mut s = connect(&gw).await;
        s.write_all(&raw::startup(
            PROTOCOL_3_0,
            &[("user", "a"), ("database", "appdb"), (key, value)],
        ))
        .await
        .unwrap();
        assert_eq!(read_msg(&mut s).await.unwrap().0, b'R');
        s.write_all(&raw::password(&token)).await.unwrap();
        let (tag, body) = read_msg(&mut s).await.unwrap();
        assert_eq!(tag, b'E');
        assert_eq!(raw::field(&body, b'C'), "0A000", "{key}");
        assert!(raw::field(&body, b'M').contains(key), "{key}");
    }
}

/// W26: a client that vanishes mid-statement gets its statement cancelled, instead of leaving
/// it running (with its locks) until the server next writes.
#[tokio::test]
async fn w26_a_statement_abandoned_by_its_client_is_cancelled() {
    let gw = Gateway::start();
    let token = gw.token("w", &[]);
    let mut s = raw::login(&gw, &token).await;
    s.write_all(&raw::query("select pg_sleep(20), 'w26-marker'"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = || {
        common::cluster().psql_super(
            "select count(*) from pg_stat_activity where state = 'active' and query like '%w26-marker%' and pid <> pg_backend_pid()",
        )
    };
    assert_eq!(running(), "1", "the statement should be running");
    drop(s);
    let started = Instant::now();
    while running() != "0" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the abandoned statement kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// W5: one source cannot use up the handshake capacity of everyone else.
#[tokio::test]
async fn w5_handshakes_are_capped_per_source_address() {
    let gw = Gateway::start_with(GatewayOptions {
        server_extra: "handshake_timeout = \"10s\"\nmax_pending_handshakes_per_source = 50".into(),
        ..Default::default()
    });
    let token = gw.token("w", &[]);
    let mut noisy = Vec::new();
    for _ in 0..80 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        noisy.push(
            socket
                .connect(([127, 0, 0, 1], gw.pg_port).into())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    for s in &mut noisy {
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await
            && n > 0
        {
            assert_eq!(buf[0], b'E');
            assert!(String::from_utf8_lossy(&buf[..n]).contains("53300"));
            refused += 1;
        }
    }
    assert_eq!(
        refused, 30,
        "exactly the connections over the per-source cap are refused"
    );
    // Another source is unaffected.
    still_serves(&gw, &token).await;
    // Once the noisy source's handshakes end, it gets in again.
    drop(noisy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket
        .connect(([127, 0, 0, 1], gw.pg_port).into())
        .await
        .unwrap();
    raw::login_on(&mut s, &token).await;
}
