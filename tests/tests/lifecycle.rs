//! Process lifecycle: stopping on SIGTERM under load, refusing bad configuration.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lagwise_tests::{
    assert_reply, encode_command, escape, frame_len, run_until_exit, target_kind, ServerProcess,
};

/// Request `i` of the pipeline: even ones INCR a counter, odd ones ECHO their index, so every
/// reply can be matched to the request it answers.
fn request(i: u64) -> Vec<u8> {
    if i.is_multiple_of(2) {
        encode_command(&[b"INCR", b"counter"])
    } else {
        encode_command(&[b"ECHO", format!("echo-{i}").as_bytes()])
    }
}

fn expected_reply(i: u64) -> Vec<u8> {
    if i.is_multiple_of(2) {
        format!(":{}\r\n", i / 2 + 1).into_bytes()
    } else {
        let msg = format!("echo-{i}");
        format!("${}\r\n{msg}\r\n", msg.len()).into_bytes()
    }
}

#[test]
fn sigterm_while_a_client_pipelines() {
    let mut server = ServerProcess::target(&[]);
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();

    // Writer: batches of 100 pipelined requests, as fast as the socket takes them, until the
    // server goes away.
    let sent = Arc::new(AtomicU64::new(0));
    let writer_thread = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            loop {
                let batch: Vec<u8> = (i..i + 100).flat_map(request).collect();
                if writer.write_all(&batch).is_err() {
                    break;
                }
                i += 100;
                sent.store(i, Ordering::Relaxed);
                if i >= 50_000_000 {
                    break; // a server that never stops; the reader's timeout reports it
                }
            }
        })
    };

    // Reader: everything until EOF (or reset).
    let received = Arc::new(AtomicU64::new(0));
    let reader_thread = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        all.extend_from_slice(&chunk[..n]);
                        received.store(all.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("reading replies: {e} after {} bytes", all.len()),
                }
            }
            all
        })
    };

    // Let real traffic flow before the signal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < 100_000 {
        assert!(Instant::now() < deadline, "no replies to the pipeline");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server still running 10 s after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let replies = reader_thread.join().unwrap();
    writer_thread.join().unwrap();

    // Every byte received is a complete reply to the request at the same position.
    let mut rest = &replies[..];
    let mut i = 0u64;
    while !rest.is_empty() {
        let n = match frame_len(rest) {
            Ok(Some(n)) => n,
            Ok(None) => panic!(
                "partial reply after {i} complete ones: {}",
                escape(&rest[..rest.len().min(200)])
            ),
            Err(e) => panic!(
                "malformed reply #{i} ({e}): {}",
                escape(&rest[..rest.len().min(200)])
            ),
        };
        let expected = expected_reply(i);
        assert_eq!(
            escape(&rest[..n]),
            escape(&expected),
            "reply #{i} does not answer request #{i}"
        );
        rest = &rest[n..];
        i += 1;
    }
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{i} complete replies to about {sent} requests before exit");
    assert!(i > 0, "no replies at all");
    assert!(
        i <= sent + 100,
        "{i} replies to at most {} requests",
        sent + 100
    );
}

#[test]
fn sigterm_on_an_idle_server_with_clients() {
    let mut server = ServerProcess::target(&[]);
    let mut idle = server.raw();
    assert_reply!(idle.cmd(&[b"PING"]), b"+PONG\r\n");
    // A client in the middle of a request.
    let mut partial = server.raw();
    partial.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n");

    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // A clean exit status means it stopped by itself (the fixture would have had to SIGKILL it
    // otherwise); how long it took is printed, not asserted.
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    assert!(idle.expect_closed(), "idle client not closed at exit");
    assert!(
        partial.expect_closed(),
        "client with a partial request not closed at exit"
    );
    assert!(partial.pending().is_empty(), "reply to a partial request");
}

#[test]
fn unknown_directive_is_refused() {
    let kind = target_kind();
    let (status, output) =
        run_until_exit(kind, &["--no-such-directive", "1"], Duration::from_secs(10));
    let status =
        status.unwrap_or_else(|| panic!("{kind} started with --no-such-directive 1:\n{output}"));
    assert!(
        !status.success(),
        "{kind} exited with {status} on an unknown directive"
    );
    assert!(
        output.contains("no-such-directive"),
        "{kind} output does not name the directive:\n{output}"
    );
}

#[test]
fn bad_port_value_is_refused() {
    let kind = target_kind();
    let (status, output) = run_until_exit(kind, &["--port", "notanumber"], Duration::from_secs(10));
    let status =
        status.unwrap_or_else(|| panic!("{kind} started with --port notanumber:\n{output}"));
    assert!(
        !status.success(),
        "{kind} exited with {status} on --port notanumber"
    );
    assert!(
        output.contains("port"),
        "{kind} output does not name the directive:\n{output}"
    );
    assert!(
        output.contains("notanumber"),
        "{kind} output does not show the bad value:\n{output}"
    );
}

#[test]
fn bad_values_of_other_directives_are_refused() {
    let kind = target_kind();
    for (directive, value) in [
        ("maxclients", "-5"),
        ("appendonly", "perhaps"),
        ("timeout", "x"),
    ] {
        let (status, output) = run_until_exit(
            kind,
            &[&format!("--{directive}"), value],
            Duration::from_secs(10),
        );
        let status = status
            .unwrap_or_else(|| panic!("{kind} started with --{directive} {value}:\n{output}"));
        assert!(
            !status.success(),
            "{kind} exited with {status} on --{directive} {value}"
        );
        assert!(
            output.contains(directive),
            "{kind} output does not name {directive}:\n{output}"
        );
    }
}
