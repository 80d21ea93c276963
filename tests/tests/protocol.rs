//! The wire protocol as raw bytes: inline commands, pipelining, protocol errors, hostile input.
//! Each test starts its own server.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lagwise_tests::{assert_reply, encode_command, escape, RawConn, ServerProcess};

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The server still serves a fresh client correctly.
fn assert_healthy(server: &ServerProcess) {
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"PING"]), b"+PONG\r\n", "server unhealthy");
    assert_reply!(raw.cmd(&[b"SET", b"health", b"ok"]), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"GET", b"health"]), b"$2\r\nok\r\n");
}

/// Sends `request` on a new connection; expects exactly `error` and then the server closing.
fn assert_protocol_error(server: &ServerProcess, request: &[u8], error: &[u8]) {
    let mut raw = server.raw();
    raw.send(request);
    let reply = raw.read_reply();
    assert_reply!(
        reply,
        error,
        "request {}: got {}",
        escape(request),
        escape(&reply)
    );
    assert!(
        raw.expect_closed(),
        "connection not closed after {}",
        escape(error)
    );
    assert!(
        raw.pending().is_empty(),
        "bytes after the protocol error: {}",
        escape(raw.pending())
    );
    assert_healthy(server);
}

#[test]
fn inline_commands() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    raw.send(b"PING\r\n");
    assert_reply!(raw.read_reply(), b"+PONG\r\n");
    // A bare LF ends an inline command too.
    raw.send(b"PING\n");
    assert_reply!(raw.read_reply(), b"+PONG\r\n");
    raw.send(b"ping hello\r\n");
    assert_reply!(raw.read_reply(), b"$5\r\nhello\r\n");
    // Quoting: double quotes with escapes, single quotes.
    raw.send(b"SET k \"a b\"\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"GET", b"k"]), b"$3\r\na b\r\n");
    raw.send(b"SET k2 \"x\\x41\\n\\\"y\"\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"GET", b"k2"]), b"$5\r\nxA\n\"y\r\n");
    raw.send(b"SET k3 'it\\'s'\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"GET", b"k3"]), b"$4\r\nit's\r\n");
    raw.send(b"SET k4 \"\"\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"STRLEN", b"k4"]), b":0\r\n");
    // Extra spaces separate nothing; empty lines are ignored.
    raw.send(b"   SET    k5    v5   \r\n\r\n\r\nGET k5\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.read_reply(), b"$2\r\nv5\r\n");
    // Inline and multibulk mix on one connection.
    raw.send(b"ECHO inline\r\n*2\r\n$4\r\nECHO\r\n$4\r\nbulk\r\nECHO again\r\n");
    assert_reply!(raw.read_reply(), b"$6\r\ninline\r\n");
    assert_reply!(raw.read_reply(), b"$4\r\nbulk\r\n");
    assert_reply!(raw.read_reply(), b"$5\r\nagain\r\n");
    // Empty multibulks are ignored.
    raw.send(b"*0\r\n*-1\r\nPING\r\n");
    assert_reply!(raw.read_reply(), b"+PONG\r\n");
}

#[test]
fn pipelined_requests_in_one_write() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();

    let mut request = Vec::new();
    for i in 0..1000 {
        request.extend(encode_command(&[b"INCR", b"counter"]));
        request.extend(encode_command(&[b"ECHO", format!("msg-{i}").as_bytes()]));
    }
    request.extend(encode_command(&[b"GET", b"counter"]));
    raw.send(&request);
    for i in 1..=1000 {
        assert_reply!(raw.read_reply(), format!(":{i}\r\n").as_bytes());
        let msg = format!("msg-{}", i - 1);
        assert_reply!(
            raw.read_reply(),
            format!("${}\r\n{msg}\r\n", msg.len()).as_bytes()
        );
    }
    assert_reply!(raw.read_reply(), b"$4\r\n1000\r\n");

    // A pipeline whose requests are split at every possible byte boundary.
    let request = [
        encode_command(&[b"SET", b"split", b"value"]),
        encode_command(&[b"GET", b"split"]),
        b"PING\r\n".to_vec(),
    ]
    .concat();
    for byte in &request {
        raw.send(std::slice::from_ref(byte));
    }
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.read_reply(), b"$5\r\nvalue\r\n");
    assert_reply!(raw.read_reply(), b"+PONG\r\n");
}

#[test]
fn large_values() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let value: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = encode_command(&[b"SET", b"big", &value]);
    // Written in uneven chunks.
    for chunk in request.chunks(65_521) {
        raw.send(chunk);
    }
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(
        raw.cmd(&[b"STRLEN", b"big"]),
        format!(":{}\r\n", value.len()).as_bytes()
    );
    let reply = raw.cmd(&[b"GET", b"big"]);
    let header = format!("${}\r\n", value.len());
    assert!(reply.starts_with(header.as_bytes()));
    assert_eq!(&reply[header.len()..reply.len() - 2], &value[..]);
}

#[test]
fn protocol_errors_close_the_connection() {
    let server = ServerProcess::target(&[]);
    let invalid_multibulk: &[u8] = b"-ERR Protocol error: invalid multibulk length\r\n";
    let invalid_bulk: &[u8] = b"-ERR Protocol error: invalid bulk length\r\n";
    let cases: &[(&[u8], &[u8])] = &[
        (b"*abc\r\n", invalid_multibulk),
        (b"* 1\r\n", invalid_multibulk),
        (b"*111111111111111111111111111111\r\n", invalid_multibulk),
        (b"*1\r\n$-5\r\n", invalid_bulk),
        (b"*1\r\n$abc\r\n", invalid_bulk),
        (b"*1\r\n$+4\r\n", invalid_bulk),
        // Larger than proto-max-bulk-len (512 MB).
        (b"*1\r\n$600000000\r\n", invalid_bulk),
        (b"*1\r\n$111111111111111111111111111111\r\n", invalid_bulk),
        (
            b"*1\r\nPING\r\n",
            b"-ERR Protocol error: expected '$', got 'P'\r\n",
        ),
        (
            b"SET k \"abc\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"SET k \"abc\"x\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"SET k 'abc\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (request, error) in cases {
        assert_protocol_error(&server, request, error);
    }
}

#[test]
fn protocol_error_after_valid_requests() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    // The valid requests before the bad one are answered, nothing after it is executed.
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\nPING\r\n*x\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert_reply!(raw.read_reply(), b"+PONG\r\n");
    assert_reply!(
        raw.read_reply(),
        b"-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(raw.expect_closed());
    let mut other = server.raw();
    assert_reply!(other.cmd(&[b"GET", b"a"]), b"$1\r\n1\r\n");
    assert_reply!(other.cmd(&[b"EXISTS", b"b"]), b":0\r\n");
}

#[test]
fn too_big_inline_request() {
    let server = ServerProcess::target(&[]);
    // More than 64 KB without a newline.
    assert_protocol_error(
        &server,
        &vec![b'a'; 70_000],
        b"-ERR Protocol error: too big inline request\r\n",
    );
}

#[test]
fn truncated_frames_then_close() {
    let server = ServerProcess::target(&[]);
    let truncated: &[&[u8]] = &[
        b"*",
        b"*3",
        b"*3\r",
        b"*3\r\n",
        b"*3\r\n$3\r\nSET\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nval",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r",
        b"SET k inline",
        b"*1\r\n$600000",
        b"*1\r\n$100000000\r\nabc", // a big bulk announced, a little sent
    ];
    for request in truncated {
        let mut raw = server.raw();
        raw.send(request);
        raw.shutdown_write();
        // Whatever happens, no reply: the command is incomplete.
        assert!(
            raw.expect_closed(),
            "server kept {} open after EOF",
            escape(request)
        );
        assert!(
            raw.pending().is_empty(),
            "reply to the truncated {}: {}",
            escape(request),
            escape(raw.pending())
        );
        // And the same with an abrupt close, without waiting.
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(request).unwrap();
        drop(stream);
    }
    let mut raw = server.raw();
    assert_reply!(
        raw.cmd(&[b"EXISTS", b"k"]),
        b":0\r\n",
        "a truncated SET was executed"
    );
    assert_healthy(&server);
}

#[test]
fn unknown_command_and_wrong_arity() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(
        raw.cmd(&[b"foo", b"a", b"b"]),
        &b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"[..]
    );
    assert_reply!(
        raw.cmd(&[b"FOO"]),
        &b"-ERR unknown command 'FOO', with args beginning with: \r\n"[..]
    );
    raw.send(b"foo bar\r\n");
    assert_reply!(
        raw.read_reply(),
        &b"-ERR unknown command 'foo', with args beginning with: 'bar' \r\n"[..]
    );
    // The argument list is cut at 128 characters.
    let long = vec![b'a'; 200];
    let reply = raw.cmd(&[b"foo", &long, b"b"]);
    let expected = format!(
        "-ERR unknown command 'foo', with args beginning with: '{}' \r\n",
        "a".repeat(128)
    );
    assert_reply!(reply, expected.as_bytes());
    // Each argument is cut to what is left of the 128, and arguments stop once it is used up.
    let reply = raw.cmd(&[b"foo", &long[..100], &[b'b'; 40], b"c"]);
    let expected = format!(
        "-ERR unknown command 'foo', with args beginning with: '{}' '{}' \r\n",
        "a".repeat(100),
        "b".repeat(25)
    );
    assert_reply!(reply, expected.as_bytes());

    let cases: &[(&[&[u8]], &str)] = &[
        (&[b"GET"], "get"),
        (&[b"get", b"a", b"b"], "get"),
        (&[b"SET", b"k"], "set"),
        (&[b"Incr"], "incr"),
        (&[b"MGET"], "mget"),
        (&[b"GETRANGE", b"k", b"0"], "getrange"),
    ];
    for (args, name) in cases {
        let expected = format!("-ERR wrong number of arguments for '{name}' command\r\n");
        assert_reply!(escape(&raw.cmd(args)), escape(expected.as_bytes()));
    }
    // The connection survives these errors.
    assert_reply!(raw.cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn binary_garbage() {
    let server = ServerProcess::target(&[]);
    let mut control = server.raw();
    assert_reply!(control.cmd(&[b"SET", b"keep", b"me"]), b"+OK\r\n");

    let mut rng = Rng(0x5eed_1234_5678_9abc);
    for round in 0..50 {
        let len = 1 + (rng.next() % 8192) as usize;
        let mut garbage = rng.bytes(len);
        // Some rounds look like the start of a multibulk.
        if round % 3 == 0 {
            garbage.insert(0, b'*');
        } else if round % 3 == 1 {
            garbage.splice(0..0, b"*2\r\n".iter().copied());
        }
        let mut raw = server.raw();
        if raw.try_send(&garbage).is_err() {
            continue; // the server already closed: fine
        }
        raw.shutdown_write();
        raw.set_read_timeout(Duration::from_secs(2));
        let _ = raw.expect_closed();
        // Whatever came back must be well-formed error replies.
        let mut rest = raw.pending().to_vec();
        while !rest.is_empty() {
            match lagwise_tests::frame_len(&rest) {
                Ok(Some(n)) => {
                    assert!(
                        rest.starts_with(b"-ERR "),
                        "round {round}: non-error reply {} to garbage",
                        escape(&rest[..n])
                    );
                    rest.drain(..n);
                }
                other => panic!(
                    "round {round}: malformed reply bytes {} ({other:?})",
                    escape(&rest)
                ),
            }
        }
    }
    assert_reply!(control.cmd(&[b"GET", b"keep"]), b"$2\r\nme\r\n");
    assert_healthy(&server);
}

#[test]
fn many_oversized_length_headers() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let rss_before = server.rss_kib();

    // A client doing normal work throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr();
    let bystander = {
        let stop = stop.clone();
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut raw = RawConn::connect(&addr);
            let mut worst = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                assert_reply!(raw.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
                worst = worst.max(started.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (n, worst)
        })
    };

    const THREADS: usize = 10;
    const ROUNDS: usize = 20;
    const BATCH: usize = 50; // connections open at once per thread
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut answered = 0;
                for _ in 0..ROUNDS {
                    let mut conns: Vec<RawConn> =
                        (0..BATCH).map(|_| RawConn::connect(&addr)).collect();
                    for (i, conn) in conns.iter_mut().enumerate() {
                        // Alternate a bulk header over the limit and an absurd multibulk one.
                        if i % 2 == 0 {
                            conn.send(b"*1\r\n$600000000\r\n");
                        } else {
                            conn.send(b"*99999999999999999999\r\n");
                        }
                    }
                    for (i, conn) in conns.iter_mut().enumerate() {
                        let expected: &[u8] = if i % 2 == 0 {
                            b"-ERR Protocol error: invalid bulk length\r\n"
                        } else {
                            b"-ERR Protocol error: invalid multibulk length\r\n"
                        };
                        assert_reply!(conn.read_reply(), expected);
                        assert!(conn.expect_closed());
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let answered: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(answered, THREADS * ROUNDS * BATCH);

    stop.store(true, Ordering::Relaxed);
    // Other clients keep being served during the flood (no timing bound: machines are
    // shared; the worst GET latency is printed for the curious).
    let (gets, worst) = bystander.join().unwrap();
    assert!(gets > 0, "the bystander got no reply during the flood");
    eprintln!("bystander: {gets} GETs during the flood, worst {worst:?}");

    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_reply!(raw.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    assert_healthy(&server);
}

#[test]
fn resp3_replies_after_hello_3() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let hello = raw.cmd(&[b"HELLO", b"3"]);
    assert!(hello.starts_with(b"%"), "{}", escape(&hello));
    assert_reply!(raw.cmd(&[b"GET", b"missing"]), b"_\r\n");
    assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    assert_reply!(
        raw.cmd(&[b"MGET", b"k", b"missing"]),
        b"*2\r\n$1\r\nv\r\n_\r\n"
    );
    assert_reply!(raw.cmd(&[b"INCRBYFLOAT", b"f", b"1.5"]), b"$3\r\n1.5\r\n");
    assert_reply!(
        raw.cmd(&[b"CONFIG", b"GET", b"maxclients"]),
        b"%1\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
}
