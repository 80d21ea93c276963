//! Transactions: MULTI/EXEC/DISCARD queuing rules, EXECABORT, and WATCH invalidated by other
//! clients' writes, by expiry and by FLUSHALL. Each test starts its own server.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lagwise_tests::{assert_reply, ServerProcess};

#[test]
fn multi_exec_runs_the_queue_in_order() {
    let server = ServerProcess::target(&[]);
    let mut c = server.raw();
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"SET", b"a", b"x"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"INCR", b"a"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"GET", b"a"]), b"+QUEUED\r\n");
    // A runtime error is one element of the reply; the rest still runs.
    assert_reply!(
        c.cmd(&[b"EXEC"]),
        b"*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$1\r\nx\r\n"
    );
    assert_reply!(c.cmd(&[b"EXEC"]), b"-ERR EXEC without MULTI\r\n");
    assert_reply!(c.cmd(&[b"DISCARD"]), b"-ERR DISCARD without MULTI\r\n");
}

#[test]
fn queuing_errors_abort_and_nesting_does_not() {
    let server = ServerProcess::target(&[]);
    let mut c = server.raw();
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(
        c.cmd(&[b"MULTI"]),
        b"-ERR MULTI calls can not be nested\r\n"
    );
    assert_reply!(
        c.cmd(&[b"WATCH", b"a"]),
        b"-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_reply!(c.cmd(&[b"SET", b"a", b"1"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*1\r\n+OK\r\n");

    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"SET", b"a", b"2"]), b"+QUEUED\r\n");
    assert_reply!(
        c.cmd(&[b"GET", b"a", b"b"]),
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_reply!(
        c.cmd(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_reply!(c.cmd(&[b"GET", b"a"]), b"$1\r\n1\r\n");

    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"SET", b"a", b"3"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"DISCARD"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"GET", b"a"]), b"$1\r\n1\r\n");
}

#[test]
fn watch_fails_when_another_client_writes() {
    let server = ServerProcess::target(&[]);
    let mut c = server.raw();
    let mut other = server.raw();
    assert_reply!(c.cmd(&[b"SET", b"balance", b"10"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"WATCH", b"balance"]), b"+OK\r\n");
    assert_reply!(other.cmd(&[b"INCRBY", b"balance", b"5"]), b":15\r\n");
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"SET", b"balance", b"0"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*-1\r\n");
    assert_reply!(c.cmd(&[b"GET", b"balance"]), b"$2\r\n15\r\n");

    // EXEC unwatched everything: the next transaction runs.
    assert_reply!(other.cmd(&[b"SET", b"balance", b"1"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"SET", b"balance", b"0"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*1\r\n+OK\r\n");

    // An untouched watch lets EXEC through; UNWATCH forgets a touched one.
    assert_reply!(c.cmd(&[b"WATCH", b"balance", b"other"]), b"+OK\r\n");
    assert_reply!(other.cmd(&[b"SET", b"unrelated", b"1"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"PING"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*1\r\n+PONG\r\n");
    assert_reply!(c.cmd(&[b"WATCH", b"balance"]), b"+OK\r\n");
    assert_reply!(other.cmd(&[b"DEL", b"balance"]), b":1\r\n");
    assert_reply!(c.cmd(&[b"UNWATCH"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"PING"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*1\r\n+PONG\r\n");
}

#[test]
fn watch_fails_on_expiry_and_flush() {
    let server = ServerProcess::target(&[]);
    let mut c = server.raw();
    let mut other = server.raw();
    assert_reply!(c.cmd(&[b"SET", b"k", b"v", b"PX", b"50"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"WATCH", b"k"]), b"+OK\r\n");
    std::thread::sleep(Duration::from_millis(200));
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"GET", b"k"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*-1\r\n");

    assert_reply!(c.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"WATCH", b"k", b"missing"]), b"+OK\r\n");
    assert_reply!(other.cmd(&[b"FLUSHALL"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"PING"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*-1\r\n");

    // Flushing while only a missing key is watched does not fail the transaction.
    assert_reply!(c.cmd(&[b"WATCH", b"missing"]), b"+OK\r\n");
    assert_reply!(other.cmd(&[b"FLUSHALL"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"MULTI"]), b"+OK\r\n");
    assert_reply!(c.cmd(&[b"PING"]), b"+QUEUED\r\n");
    assert_reply!(c.cmd(&[b"EXEC"]), b"*1\r\n+PONG\r\n");
}

#[test]
fn concurrent_watch_increments_lose_nothing() {
    // Optimistic locking from several clients: every successful EXEC adds exactly one, so the
    // counter equals the number of successful transactions.
    let server = ServerProcess::target(&[]);
    let addr = server.addr();
    let mut setup = server.raw();
    assert_reply!(setup.cmd(&[b"SET", b"counter", b"0"]), b"+OK\r\n");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = lagwise_tests::RawConn::connect(&addr);
                let mut committed = 0u64;
                for _ in 0..100 {
                    loop {
                        c.cmd(&[b"WATCH", b"counter"]);
                        let v = c.cmd(&[b"GET", b"counter"]);
                        let text = String::from_utf8_lossy(&v).to_string();
                        let n: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
                        c.cmd(&[b"MULTI"]);
                        c.cmd(&[b"SET", b"counter", (n + 1).to_string().as_bytes()]);
                        if c.cmd(&[b"EXEC"]) != b"*-1\r\n" {
                            committed += 1;
                            break;
                        }
                    }
                }
                committed
            })
        })
        .collect();
    let committed: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(committed, 400);
    assert_reply!(setup.cmd(&[b"GET", b"counter"]), b"$3\r\n400\r\n");
}
