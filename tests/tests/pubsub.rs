//! Publish/subscribe: confirmations, delivery to channel, pattern and shard subscribers, the
//! RESP2 subscribed-mode restrictions, RESP3 pushes, introspection, and ordering under load.
#![allow(clippy::unwrap_used)]

use lagwise_tests::{assert_reply, ServerProcess};

#[test]
fn subscribe_publish_unsubscribe() {
    let server = ServerProcess::target(&[]);
    let mut sub = server.raw();
    let mut publisher = server.raw();
    sub.send(b"*3\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n$5\r\nother\r\n");
    assert_reply!(
        sub.read_reply(),
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_reply!(
        sub.read_reply(),
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:2\r\n"
    );
    assert_reply!(
        sub.cmd(&[b"PSUBSCRIBE", b"c*"]),
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nc*\r\n:3\r\n"
    );

    assert_reply!(publisher.cmd(&[b"PUBLISH", b"ch", b"hello"]), b":2\r\n");
    assert_reply!(
        sub.read_reply(),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    );
    assert_reply!(
        sub.read_reply(),
        b"*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    );
    assert_reply!(publisher.cmd(&[b"PUBLISH", b"nobody", b"x"]), b":0\r\n");

    // Subscribed RESP2 clients may only (un)subscribe, PING, QUIT or RESET.
    assert_reply!(
        sub.cmd(&[b"GET", b"k"]),
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_reply!(sub.cmd(&[b"PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");

    assert_reply!(
        sub.cmd(&[b"UNSUBSCRIBE", b"ch"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:2\r\n"
    );
    assert_reply!(
        sub.cmd(&[b"PUNSUBSCRIBE"]),
        b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nc*\r\n:1\r\n"
    );
    assert_reply!(
        sub.cmd(&[b"UNSUBSCRIBE"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nother\r\n:0\r\n"
    );
    assert_reply!(
        sub.cmd(&[b"UNSUBSCRIBE"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
    );
    // Out of subscribed mode, every command works again.
    assert_reply!(sub.cmd(&[b"GET", b"k"]), b"$-1\r\n");
}

#[test]
fn resp3_subscribers_get_pushes_and_may_run_commands() {
    let server = ServerProcess::target(&[]);
    let mut sub = server.raw();
    let mut publisher = server.raw();
    let hello = sub.cmd(&[b"HELLO", b"3"]);
    assert!(hello.starts_with(b"%7\r\n"), "{hello:?}");
    assert_reply!(
        sub.cmd(&[b"SUBSCRIBE", b"ch"]),
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_reply!(sub.cmd(&[b"GET", b"k"]), b"_\r\n");
    assert_reply!(sub.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_reply!(publisher.cmd(&[b"PUBLISH", b"ch", b"m"]), b":1\r\n");
    assert_reply!(
        sub.read_reply(),
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n"
    );
}

#[test]
fn shard_channels_and_introspection() {
    let server = ServerProcess::target(&[]);
    let mut a = server.raw();
    let mut b = server.raw();
    let mut admin = server.raw();
    assert_reply!(
        a.cmd(&[b"SSUBSCRIBE", b"s1"]),
        b"*3\r\n$10\r\nssubscribe\r\n$2\r\ns1\r\n:1\r\n"
    );
    assert_reply!(
        b.cmd(&[b"SUBSCRIBE", b"news"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_reply!(
        b.cmd(&[b"PSUBSCRIBE", b"n*"]),
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"
    );
    assert_reply!(admin.cmd(&[b"SPUBLISH", b"s1", b"x"]), b":1\r\n");
    assert_reply!(
        a.read_reply(),
        b"*3\r\n$8\r\nsmessage\r\n$2\r\ns1\r\n$1\r\nx\r\n"
    );
    assert_reply!(
        admin.cmd(&[b"PUBSUB", b"CHANNELS"]),
        b"*1\r\n$4\r\nnews\r\n"
    );
    assert_reply!(admin.cmd(&[b"PUBSUB", b"CHANNELS", b"x*"]), b"*0\r\n");
    assert_reply!(
        admin.cmd(&[b"PUBSUB", b"SHARDCHANNELS"]),
        b"*1\r\n$2\r\ns1\r\n"
    );
    assert_reply!(
        admin.cmd(&[b"PUBSUB", b"NUMSUB", b"news", b"none"]),
        b"*4\r\n$4\r\nnews\r\n:1\r\n$4\r\nnone\r\n:0\r\n"
    );
    assert_reply!(
        admin.cmd(&[b"PUBSUB", b"SHARDNUMSUB", b"s1"]),
        b"*2\r\n$2\r\ns1\r\n:1\r\n"
    );
    assert_reply!(admin.cmd(&[b"PUBSUB", b"NUMPAT"]), b":1\r\n");
    // A subscriber that disconnects leaves nothing behind.
    drop(b);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_reply!(admin.cmd(&[b"PUBSUB", b"NUMPAT"]), b":0\r\n");
    assert_reply!(admin.cmd(&[b"PUBLISH", b"news", b"x"]), b":0\r\n");
    // RESET leaves subscribed mode.
    assert_reply!(a.cmd(&[b"RESET"]), b"+RESET\r\n");
    assert_reply!(admin.cmd(&[b"SPUBLISH", b"s1", b"x"]), b":0\r\n");
}

#[test]
fn messages_arrive_in_publish_order_under_load() {
    let server = ServerProcess::target(&[]);
    let mut sub = server.raw();
    assert_reply!(
        sub.cmd(&[b"SUBSCRIBE", b"seq"]),
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nseq\r\n:1\r\n"
    );
    const N: usize = 20_000;
    let addr = server.addr();
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = lagwise_tests::RawConn::connect(&addr);
                // Pipelined in chunks: each publisher's own messages must stay in order.
                for chunk in (0..N / 2).collect::<Vec<_>>().chunks(500) {
                    let mut wire = Vec::new();
                    for i in chunk {
                        let msg = format!("{p}:{i}");
                        wire.extend(lagwise_tests::encode_command(&[
                            b"PUBLISH",
                            b"seq",
                            msg.as_bytes(),
                        ]));
                    }
                    c.send(&wire);
                    for _ in chunk {
                        assert_eq!(c.read_reply(), b":1\r\n");
                    }
                }
            })
        })
        .collect();
    let mut next = [0usize; 2];
    for _ in 0..N {
        let reply = sub.read_reply();
        let text = String::from_utf8_lossy(&reply).to_string();
        let payload = text.lines().nth(6).unwrap().to_string();
        let (p, i) = payload.split_once(':').unwrap();
        let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[p], "publisher {p}'s messages out of order");
        next[p] += 1;
    }
    for p in publishers {
        p.join().unwrap();
    }
    assert_eq!(next, [N / 2, N / 2]);
}
