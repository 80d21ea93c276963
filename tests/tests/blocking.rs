//! Blocking commands: wake-up by a write from another client, FIFO order among clients
//! blocked on the same key, timeouts (seconds as doubles), non-blocking behaviour inside
//! MULTI, CLIENT UNBLOCK, and a blocked client that disconnects leaving nothing behind.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lagwise_tests::{assert_reply, info_field, RawConn, ServerProcess};

/// Waits until the server reports `n` blocked clients, so that the order in which clients
/// block is the order the test issued them in.
fn wait_blocked(admin: &mut RawConn, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = String::from_utf8_lossy(&admin.cmd(&[b"INFO", b"clients"])).to_string();
        if info_field(&info, "blocked_clients").as_deref() == Some(n.to_string().as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {n} blocked clients: {info}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bzpopmin_is_woken_by_zadd_in_fifo_order() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut first = server.raw();
    let mut second = server.raw();
    first.send(&lagwise_tests::encode_command(&[b"BZPOPMIN", b"z", b"0"]));
    wait_blocked(&mut admin, 1);
    second.send(&lagwise_tests::encode_command(&[
        b"BZPOPMAX",
        b"other",
        b"z",
        b"0",
    ]));
    wait_blocked(&mut admin, 2);
    assert_reply!(
        admin.cmd(&[b"ZADD", b"z", b"1", b"a", b"2", b"b", b"3", b"c"]),
        b":3\r\n"
    );
    assert_reply!(
        first.read_reply(),
        b"*3\r\n$1\r\nz\r\n$1\r\na\r\n$1\r\n1\r\n"
    );
    assert_reply!(
        second.read_reply(),
        b"*3\r\n$1\r\nz\r\n$1\r\nc\r\n$1\r\n3\r\n"
    );
    assert_reply!(
        admin.cmd(&[b"ZRANGE", b"z", b"0", b"-1"]),
        b"*1\r\n$1\r\nb\r\n"
    );
    wait_blocked(&mut admin, 0);
}

#[test]
fn bzmpop_takes_what_one_push_brings() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut waiter = server.raw();
    waiter.send(&lagwise_tests::encode_command(&[
        b"BZMPOP", b"0", b"2", b"y", b"z", b"MAX", b"COUNT", b"5",
    ]));
    wait_blocked(&mut admin, 1);
    assert_reply!(
        admin.cmd(&[b"ZADD", b"z", b"1", b"a", b"2", b"b"]),
        b":2\r\n"
    );
    assert_reply!(
        waiter.read_reply(),
        b"*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n"
    );
    assert_reply!(admin.cmd(&[b"EXISTS", b"z"]), b":0\r\n");
}

#[test]
fn timeouts_multi_wrongtype_and_unblock() {
    let server = ServerProcess::target(&[]);
    let mut c = server.raw();
    let mut admin = server.raw();
    let started = Instant::now();
    assert_reply!(c.cmd(&[b"BZPOPMIN", b"none", b"0.2"]), b"*-1\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "returned too early"
    );
    assert_reply!(
        c.cmd(&[b"BZPOPMIN", b"none", b"-1"]),
        b"-ERR timeout is negative\r\n"
    );
    assert_reply!(
        c.cmd(&[b"BZPOPMIN", b"none", b"abc"]),
        b"-ERR timeout is not a float or out of range\r\n"
    );
    // Inside a transaction a blocking command does not block.
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"BZPOPMIN", b"none", b"0"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*1\r\n*-1\r\n");
    assert_reply!(c.cmd(&[b"SET", b"s", b"x"]), b"+OK\r\n");
    assert_reply!(
        c.cmd(&[b"BZPOPMIN", b"s", b"0"]),
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );

    let id = String::from_utf8_lossy(&c.cmd(&[b"CLIENT", b"ID"])).trim()[1..].to_string();
    c.send(&lagwise_tests::encode_command(&[b"BZPOPMIN", b"q", b"0"]));
    wait_blocked(&mut admin, 1);
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"ERROR"]),
        b":1\r\n"
    );
    assert_reply!(
        c.read_reply(),
        b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
    c.send(&lagwise_tests::encode_command(&[b"BZPOPMIN", b"q", b"0"]));
    wait_blocked(&mut admin, 1);
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]),
        b":1\r\n"
    );
    assert_reply!(c.read_reply(), b"*-1\r\n");
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]),
        b":0\r\n"
    );
    // Pipelined commands after a blocking one wait their turn.
    let mut wire = lagwise_tests::encode_command(&[b"BZPOPMIN", b"p", b"0"]);
    wire.extend(lagwise_tests::encode_command(&[b"PING"]));
    c.send(&wire);
    wait_blocked(&mut admin, 1);
    assert_reply!(admin.cmd(&[b"ZADD", b"p", b"5", b"m"]), b":1\r\n");
    assert_reply!(c.read_reply(), b"*3\r\n$1\r\np\r\n$1\r\nm\r\n$1\r\n5\r\n");
    assert_reply!(c.read_reply(), b"+PONG\r\n");
}

#[test]
fn a_blocked_client_that_disconnects_leaves_nothing_behind() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    {
        let mut gone = server.raw();
        gone.send(&lagwise_tests::encode_command(&[b"BZPOPMIN", b"z", b"0"]));
        wait_blocked(&mut admin, 1);
    }
    wait_blocked(&mut admin, 0);
    // Nobody takes the element any more.
    assert_reply!(admin.cmd(&[b"ZADD", b"z", b"1", b"a"]), b":1\r\n");
    assert_reply!(admin.cmd(&[b"ZCARD", b"z"]), b":1\r\n");
}

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    lagwise_tests::encode_command(args)
}

#[test]
fn blpop_fifo_and_brpop() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut first = server.raw();
    let mut second = server.raw();
    let mut third = server.raw();
    first.send(&cmd(&[b"BLPOP", b"l", b"0"]));
    wait_blocked(&mut admin, 1);
    second.send(&cmd(&[b"BLPOP", b"other", b"l", b"0"]));
    wait_blocked(&mut admin, 2);
    third.send(&cmd(&[b"BRPOP", b"l", b"1.5"]));
    wait_blocked(&mut admin, 3);
    // One push of three elements: each waiter, oldest first, takes one.
    assert_reply!(admin.cmd(&[b"RPUSH", b"l", b"a", b"b", b"c"]), b":3\r\n");
    assert_reply!(first.read_reply(), b"*2\r\n$1\r\nl\r\n$1\r\na\r\n");
    assert_reply!(second.read_reply(), b"*2\r\n$1\r\nl\r\n$1\r\nb\r\n");
    assert_reply!(third.read_reply(), b"*2\r\n$1\r\nl\r\n$1\r\nc\r\n");
    assert_reply!(admin.cmd(&[b"EXISTS", b"l"]), b":0\r\n");
    // Data already there: no blocking at all.
    assert_reply!(admin.cmd(&[b"RPUSH", b"l", b"x"]), b":1\r\n");
    assert_reply!(
        first.cmd(&[b"BRPOP", b"l", b"0"]),
        b"*2\r\n$1\r\nl\r\n$1\r\nx\r\n"
    );
}

#[test]
fn a_waiting_client_wins_over_the_pushers_own_pipelined_pop() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut waiter = server.raw();
    waiter.send(&cmd(&[b"BLPOP", b"q", b"0"]));
    wait_blocked(&mut admin, 1);
    let mut wire = cmd(&[b"RPUSH", b"q", b"only"]);
    wire.extend(cmd(&[b"LPOP", b"q"]));
    admin.send(&wire);
    assert_reply!(admin.read_reply(), b":1\r\n");
    assert_reply!(admin.read_reply(), b"$-1\r\n");
    assert_reply!(waiter.read_reply(), b"*2\r\n$1\r\nq\r\n$4\r\nonly\r\n");
}

#[test]
fn blmove_chains_and_wakeups_from_exec() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut mover = server.raw();
    let mut reader = server.raw();
    mover.send(&cmd(&[b"BLMOVE", b"src", b"dst", b"LEFT", b"RIGHT", b"0"]));
    wait_blocked(&mut admin, 1);
    reader.send(&cmd(&[b"BLPOP", b"dst", b"0"]));
    wait_blocked(&mut admin, 2);
    // The push wakes the mover, whose move wakes the reader.
    assert_reply!(admin.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(admin.cmd(&[b"RPUSH", b"src", b"v"]), b"+QUEUED\r\n");
    assert_reply!(admin.cmd(&[b"LLEN", b"src"]), b"+QUEUED\r\n");
    // Inside the transaction the element is still there: waiters are served after EXEC.
    assert_reply!(admin.cmd(&[b"EXEC"]), b"*2\r\n:1\r\n:1\r\n");
    assert_reply!(mover.read_reply(), b"$1\r\nv\r\n");
    assert_reply!(reader.read_reply(), b"*2\r\n$3\r\ndst\r\n$1\r\nv\r\n");
    assert_reply!(admin.cmd(&[b"EXISTS", b"src", b"dst"]), b":0\r\n");

    mover.send(&cmd(&[b"BRPOPLPUSH", b"a", b"b", b"0"]));
    wait_blocked(&mut admin, 1);
    assert_reply!(admin.cmd(&[b"LPUSH", b"a", b"1", b"2"]), b":2\r\n");
    assert_reply!(mover.read_reply(), b"$1\r\n1\r\n");
    assert_reply!(
        admin.cmd(&[b"LRANGE", b"b", b"0", b"-1"]),
        b"*1\r\n$1\r\n1\r\n"
    );
    // A timed-out BLMOVE replies with a null array, as Valkey does.
    assert_reply!(
        mover.cmd(&[b"BLMOVE", b"none", b"b", b"LEFT", b"LEFT", b"0.1"]),
        b"*-1\r\n"
    );
    assert_reply!(
        mover.cmd(&[b"BLMOVE", b"a", b"b", b"UP", b"LEFT", b"0"]),
        b"-ERR syntax error\r\n"
    );
}

#[test]
fn blmpop_with_count() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut waiter = server.raw();
    waiter.send(&cmd(&[
        b"BLMPOP", b"0", b"2", b"x", b"y", b"RIGHT", b"COUNT", b"2",
    ]));
    wait_blocked(&mut admin, 1);
    assert_reply!(admin.cmd(&[b"RPUSH", b"y", b"1", b"2", b"3"]), b":3\r\n");
    assert_reply!(
        waiter.read_reply(),
        b"*2\r\n$1\r\ny\r\n*2\r\n$1\r\n3\r\n$1\r\n2\r\n"
    );
    assert_reply!(
        waiter.cmd(&[b"BLMPOP", b"0.05", b"1", b"none", b"LEFT"]),
        b"*-1\r\n"
    );
    assert_reply!(
        waiter.cmd(&[b"BLMPOP", b"0", b"0", b"x", b"LEFT"]),
        b"-ERR numkeys should be greater than 0\r\n"
    );
}
