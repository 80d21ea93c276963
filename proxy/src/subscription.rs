//! A client's subscriptions: a connection of its own to one node, relayed both ways.
//!
//! SUBSCRIBE and PSUBSCRIBE can go to any node (a cluster delivers every PUBLISH to every
//! node); SSUBSCRIBE goes to the owner of the shard channel's slot. The link forwards the
//! client's (un)subscribe commands in order and hands every frame the node sends (the
//! confirmations and the messages) back to the session, which writes them once the replies
//! ahead of them are out.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use lagwise_shared::codec::make_room;
use lagwise_shared::topology::NodeAddr;

use crate::reply::{self, frame_len, Protocol};

/// Frames a subscriber may have waiting before the link is cut (a slow client).
const QUEUE_LIMIT: usize = 8192;

pub struct Link {
    commands: mpsc::UnboundedSender<Bytes>,
    /// Subscriptions the node has confirmed (channels + patterns, or shard channels).
    pub count: i64,
    /// The client asked to subscribe and the node has not confirmed yet.
    pub pending: bool,
}

impl Link {
    /// Opens the link to `addr` and returns it with the stream of frames from the node.
    pub fn open(
        addr: NodeAddr,
        protocol: Protocol,
        auth: Option<(Option<String>, String)>,
    ) -> (Link, mpsc::Receiver<Bytes>) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (frame_tx, frame_rx) = mpsc::channel(QUEUE_LIMIT);
        tokio::spawn(run(addr, protocol, auth, cmd_rx, frame_tx));
        (
            Link {
                commands: cmd_tx,
                count: 0,
                pending: false,
            },
            frame_rx,
        )
    }

    pub fn send(&self, command: Bytes) {
        let _ = self.commands.send(command);
    }

    /// Notes a frame from the node: a (un)subscribe confirmation carries the new count.
    pub fn observe(&mut self, frame: &Bytes, protocol: Protocol) {
        let Some(parts) = reply::array_like_elements(frame, protocol) else {
            return;
        };
        let (Some(kind), Some(last)) = (parts.first(), parts.last()) else {
            return;
        };
        let is_confirmation = matches!(
            reply::bulk_payload(kind),
            Some(
                b"subscribe"
                    | b"unsubscribe"
                    | b"psubscribe"
                    | b"punsubscribe"
                    | b"ssubscribe"
                    | b"sunsubscribe"
            )
        );
        if let (true, Some(n)) = (is_confirmation, reply::integer(last)) {
            self.count = n;
            self.pending = false;
        }
    }

    pub fn subscribed(&self) -> bool {
        self.pending || self.count > 0
    }
}

async fn run(
    addr: NodeAddr,
    protocol: Protocol,
    auth: Option<(Option<String>, String)>,
    mut commands: mpsc::UnboundedReceiver<Bytes>,
    frames: mpsc::Sender<Bytes>,
) {
    let fail =
        |msg: String| reply::error(&format!("ERR lagwise: subscription link to {addr}: {msg}"));
    let stream = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        TcpStream::connect(addr.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = frames.send(fail(e.to_string())).await;
            return;
        }
        Err(_) => {
            let _ = frames.send(fail("connect timed out".into())).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    // Handshake replies are read and dropped before anything is relayed.
    let mut handshake = BytesMut::new();
    let mut expect = 0;
    if let Some((user, pass)) = &auth {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = user {
            args.push(u.as_bytes());
        }
        args.push(pass.as_bytes());
        reply::encode_into(&mut handshake, &args);
        expect += 1;
    }
    if protocol == Protocol::Resp3 {
        reply::encode_into(&mut handshake, &[b"HELLO" as &[u8], b"3"]);
        expect += 1;
    }
    if !handshake.is_empty() && wr.write_all(&handshake).await.is_err() {
        let _ = frames.send(fail("write failed".into())).await;
        return;
    }
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            match frame_len(&buf, protocol) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n).freeze();
                    if expect > 0 {
                        expect -= 1;
                        continue;
                    }
                    // A client that cannot keep up loses its link rather than growing memory.
                    if frames.try_send(frame).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = frames.send(fail(e)).await;
                    return;
                }
            }
        }
        make_room(&mut buf);
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = frames.send(fail("connection lost".into())).await;
                    return;
                }
                Ok(_) => {}
            },
            c = commands.recv() => match c {
                Some(cmd) => {
                    if wr.write_all(&cmd).await.is_err() {
                        let _ = frames.send(fail("write failed".into())).await;
                        return;
                    }
                }
                // The session is gone.
                None => return,
            },
        }
    }
}
