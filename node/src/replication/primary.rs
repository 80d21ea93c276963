//! The primary side: a replica's PSYNC, its full or partial resync, then the stream.
//!
//! A replica arrives as an ordinary client (PING, AUTH, REPLCONF ...) and its PSYNC hands
//! the connection over to [`serve_replica`]. If its replication id and offset are still in
//! our backlog it continues from there (`+CONTINUE`); otherwise it gets a snapshot of the
//! keyspace taken at a known offset (`+FULLRESYNC <replid> <offset>`, the RDB), and then the
//! stream from that offset. Replicas asking within `repl-diskless-sync-delay` of each other
//! share one snapshot. The stream is read from the backlog; the replica's acks (REPLCONF
//! ACK) are read alongside and feed INFO, WAIT and min-replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tracing::{info, warn};

use lagwise_shared::codec::RequestDecoder;

use super::backlog::Read;
use super::ReplicaEntry;
use crate::clients::{ClientHandle, ClientKind};
use crate::server::Server;
use crate::snapshot::{self, Capture};

/// What a replica asked for with PSYNC (or the old SYNC).
#[derive(Debug, Clone)]
pub struct PsyncRequest {
    pub replid: String,
    /// The first byte it wants, in Valkey's 1-based terms; -1 for none.
    pub offset: i64,
    pub capa_eof: bool,
    pub listening_port: u16,
    /// The old SYNC: no `+FULLRESYNC` line, never partial.
    pub legacy_sync: bool,
}

/// A replica waiting for the next snapshot.
pub struct PendingSync {
    sinks: Vec<mpsc::Sender<SyncMsg>>,
}

enum SyncMsg {
    /// The snapshot begins at this stream position; the replica's consumer starts there.
    Start {
        offset: u64,
        replid: String,
        consumer: u64,
    },
    Chunk(Bytes),
    End,
}

/// How much stream is written to a replica per wake-up.
const STREAM_READ: usize = 1024 * 1024;

/// Serves a replica until it goes away, is killed, falls too far behind or the server stops.
pub async fn serve_replica(
    server: Arc<Server>,
    mut stream: TcpStream,
    handle: Arc<ClientHandle>,
    req: PsyncRequest,
    input: BytesMut,
) {
    handle.set_kind(ClientKind::Replica);
    let peer = handle.addr;
    let timeout = repl_timeout(&server);
    register(&server, &handle, peer, req.listening_port);
    // After a streamed (`$EOF:`) snapshot a Redis replica finds the end mark only at the end
    // of a read: nothing may follow it until the replica says it is ready (its first ack).
    let mut wait_first_ack = false;
    let consumer = match partial(&server, &req) {
        Some((consumer, replid)) => {
            let reply = format!("+CONTINUE {replid}\r\n");
            if write(&mut stream, reply.as_bytes(), timeout).await.is_err() {
                finish(&server, &handle, Some(consumer));
                return;
            }
            info!(replica = %peer, offset = req.offset, "partial resynchronization accepted");
            Some(consumer)
        }
        None => match full_sync(&server, &mut stream, &handle, &req, timeout).await {
            Ok(consumer) => {
                wait_first_ack = req.capa_eof;
                Some(consumer)
            }
            Err(e) => {
                warn!(replica = %peer, error = %e, "full resynchronization failed");
                None
            }
        },
    };
    if let Some(consumer) = consumer {
        set_state(&server, handle.id, "online");
        server.repl.acked.notify_waiters();
        if let Err(e) = stream_to(
            &server,
            &mut stream,
            &handle,
            consumer,
            input,
            timeout,
            wait_first_ack,
        )
        .await
        {
            info!(replica = %peer, reason = %e, "connection with replica lost");
        }
    }
    finish(&server, &handle, consumer);
}

fn repl_timeout(server: &Server) -> Duration {
    Duration::from_secs(server.config.read().get_u64("repl-timeout").max(1))
}

fn register(server: &Server, handle: &ClientHandle, peer: SocketAddr, listening_port: u16) {
    let mut s = server.repl.state.lock();
    s.replicas.push(ReplicaEntry {
        client_id: handle.id,
        ip: peer.ip(),
        listening_port: if listening_port == 0 {
            peer.port()
        } else {
            listening_port
        },
        state: "wait_bgsave",
        ack_offset: 0,
        last_ack: Instant::now(),
    });
}

fn set_state(server: &Server, id: u64, state: &'static str) {
    if let Some(r) = server
        .repl
        .state
        .lock()
        .replicas
        .iter_mut()
        .find(|r| r.client_id == id)
    {
        r.state = state;
    }
}

fn finish(server: &Server, handle: &ClientHandle, consumer: Option<u64>) {
    if let Some(c) = consumer {
        server.repl.backlog.lock().remove_consumer(c);
    }
    server
        .repl
        .state
        .lock()
        .replicas
        .retain(|r| r.client_id != handle.id);
    server.repl.acked.notify_waiters();
}

/// `+CONTINUE` if the replica's history is ours and its offset still in the backlog: returns
/// its consumer and our replication id.
fn partial(server: &Server, req: &PsyncRequest) -> Option<(u64, String)> {
    if req.legacy_sync {
        return None;
    }
    let mut s = server.repl.state.lock();
    let ours = req.replid == s.replid || (req.replid == s.replid2 && req.offset <= s.second_offset);
    if ours && server.repl.backlog_active() && req.offset >= 1 {
        if let Some(c) = server
            .repl
            .backlog
            .lock()
            .add_consumer((req.offset - 1) as u64)
        {
            s.sync_partial_ok += 1;
            return Some((c, s.replid.clone()));
        }
    }
    // A replica that named a history we cannot continue is a failed partial resync.
    if req.replid != "?" {
        s.sync_partial_err += 1;
    }
    None
}

/// Sends a snapshot and returns the consumer the stream continues from.
async fn full_sync(
    server: &Arc<Server>,
    stream: &mut TcpStream,
    handle: &ClientHandle,
    req: &PsyncRequest,
    timeout: Duration,
) -> std::io::Result<u64> {
    server.repl.state.lock().sync_full += 1;
    let (tx, mut rx) = mpsc::channel::<SyncMsg>(8);
    let leader = {
        let mut hub = server.repl.sync_hub.lock();
        match hub.as_mut() {
            Some(pending) => {
                pending.sinks.push(tx);
                false
            }
            None => {
                *hub = Some(PendingSync { sinks: vec![tx] });
                true
            }
        }
    };
    if leader {
        tokio::spawn(run_shared_snapshot(server.clone()));
    }
    // Until the snapshot starts, keep the replica's connection alive the way Valkey does
    // (a newline it ignores), and notice if it goes away.
    let mut consumer = None;
    let mark: [u8; 40] = {
        let hex = crate::server::random_hex40();
        let mut m = [0u8; 40];
        m.copy_from_slice(&hex.as_bytes()[..40]);
        m
    };
    let mut buffered: Option<Vec<u8>> = (!req.capa_eof).then(Vec::new);
    let mut keepalive = tokio::time::interval(Duration::from_secs(1));
    keepalive.tick().await;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = keepalive.tick(), if consumer.is_none() => {
                write(stream, b"\n", timeout).await?;
                continue;
            }
            _ = handle.killed() => return Err(std::io::Error::other("killed")),
        };
        match msg {
            Some(SyncMsg::Start {
                offset,
                replid,
                consumer: c,
            }) => {
                consumer = Some(c);
                set_state(server, handle.id, "send_bulk");
                if !req.legacy_sync {
                    let line = format!("+FULLRESYNC {replid} {offset}\r\n");
                    write(stream, line.as_bytes(), timeout).await?;
                }
                if buffered.is_none() {
                    let mut head = b"$EOF:".to_vec();
                    head.extend_from_slice(&mark);
                    head.extend_from_slice(b"\r\n");
                    write(stream, &head, timeout).await?;
                }
            }
            Some(SyncMsg::Chunk(bytes)) => match buffered.as_mut() {
                Some(buf) => buf.extend_from_slice(&bytes),
                None => write(stream, &bytes, timeout).await?,
            },
            Some(SyncMsg::End) => {
                match buffered.take() {
                    Some(buf) => {
                        write(stream, format!("${}\r\n", buf.len()).as_bytes(), timeout).await?;
                        write(stream, &buf, timeout).await?;
                    }
                    None => write(stream, &mark, timeout).await?,
                }
                let c = consumer.ok_or_else(|| std::io::Error::other("snapshot never started"))?;
                info!(replica = %handle.addr, "synchronization with replica succeeded");
                return Ok(c);
            }
            None => {
                if let Some(c) = consumer {
                    server.repl.backlog.lock().remove_consumer(c);
                }
                return Err(std::io::Error::other("snapshot failed"));
            }
        }
    }
}

/// Waits `repl-diskless-sync-delay` for more replicas, then takes one snapshot for all of
/// them and hands it out.
async fn run_shared_snapshot(server: Arc<Server>) {
    let delay = server.config.read().get_u64("repl-diskless-sync-delay");
    if delay > 0 {
        tokio::time::sleep(Duration::from_secs(delay)).await;
    }
    // One snapshot at a time (a BGSAVE may be running): wait for it to finish.
    while server.lock_db().snapshot_running() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(pending) = server.repl.sync_hub.lock().take() else {
        return;
    };
    let mut sinks = Vec::new();
    {
        let mut db = server.lock_db();
        if db.snapshot_running() {
            // Lost a race with a BGSAVE: the replicas will retry.
            return;
        }
        // The stream must hold everything from the snapshot's moment on: turn it on if
        // nobody needed it yet, and publish what is staged so the offset is exact.
        if !server.repl.backlog_active() {
            server.repl.set_backlog_active();
        }
        if !server.repl.is_replica() {
            db.repl.set_enabled(true);
        }
        db.flush();
        db.repl.select_next();
        let offset = server.repl.backlog.lock().end();
        let replid = server.repl.state.lock().replid.clone();
        for tx in pending.sinks {
            if let Some(c) = server.repl.backlog.lock().add_consumer(offset) {
                sinks.push((tx, c, offset, replid.clone()));
            }
        }
        db.begin_snapshot(Capture::new(&snapshot::aux(&replid, offset, false)));
    }
    let mut live = Vec::new();
    for (tx, consumer, offset, replid) in sinks {
        if tx
            .send(SyncMsg::Start {
                offset,
                replid,
                consumer,
            })
            .await
            .is_ok()
        {
            live.push(tx);
        } else {
            server.repl.backlog.lock().remove_consumer(consumer);
        }
    }
    let result = snapshot::drive(&server, |chunk| {
        let chunk = Bytes::from(chunk);
        let sinks = live.clone();
        async move {
            let mut any = false;
            for tx in &sinks {
                any |= tx.send(SyncMsg::Chunk(chunk.clone())).await.is_ok();
            }
            if any {
                Ok(())
            } else {
                Err(std::io::Error::other("every replica went away"))
            }
        }
    })
    .await;
    if result.is_ok() {
        for tx in &live {
            let _ = tx.send(SyncMsg::End).await;
        }
    }
}

/// The replica is in sync: send it the stream and read its acks, until one side stops.
async fn stream_to(
    server: &Server,
    stream: &mut TcpStream,
    handle: &ClientHandle,
    consumer: u64,
    mut input: BytesMut,
    timeout: Duration,
    wait_first_ack: bool,
) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let first_ack = tokio::sync::Notify::new();
    let acked = std::sync::atomic::AtomicBool::new(!wait_first_ack);
    let mut shutdown = server.shutdown_listener();
    let reader = async {
        let mut decoder = RequestDecoder::new(1024 * 1024);
        decoder.set_authenticated(true);
        loop {
            while let Some(req) = decoder
                .decode(&mut input)
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                let args = &req.args;
                if args.len() >= 3
                    && args[0].eq_ignore_ascii_case(b"REPLCONF")
                    && args[1].eq_ignore_ascii_case(b"ACK")
                {
                    if let Some(offset) = std::str::from_utf8(&args[2])
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        ack(server, handle.id, offset);
                        if !acked.swap(true, std::sync::atomic::Ordering::AcqRel) {
                            first_ack.notify_one();
                        }
                    }
                }
            }
            // A replica acks every second: silence for repl-timeout means it is gone.
            match tokio::time::timeout(timeout, rd.read_buf(&mut input)).await {
                Ok(Ok(0)) => return Err(std::io::Error::other("replica closed the connection")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("timeout: no ack from replica")),
            }
            if input.len() > 1024 * 1024 {
                return Err(std::io::Error::other("replica sent too much"));
            }
        }
    };
    let writer = async {
        while !acked.load(std::sync::atomic::Ordering::Acquire) {
            first_ack.notified().await;
        }
        loop {
            let notified = server.repl.new_data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let read = server.repl.backlog.lock().read(consumer, STREAM_READ);
            match read {
                Read::Data(chunks) => {
                    for c in chunks {
                        match tokio::time::timeout(timeout, wr.write_all(&c)).await {
                            Ok(r) => r?,
                            Err(_) => {
                                return Err(std::io::Error::other("timeout writing to replica"))
                            }
                        }
                    }
                }
                Read::Empty => notified.await,
                Read::Dropped => {
                    return Err(std::io::Error::other(
                        "replica fell further behind than client-output-buffer-limit",
                    ))
                }
            }
        }
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
        _ = handle.killed() => Err(std::io::Error::other("killed by CLIENT KILL")),
        _ = shutdown.wait() => Ok(()),
    }
}

fn ack(server: &Server, id: u64, offset: u64) {
    {
        let mut s = server.repl.state.lock();
        if let Some(r) = s.replicas.iter_mut().find(|r| r.client_id == id) {
            r.ack_offset = r.ack_offset.max(offset);
            r.last_ack = Instant::now();
        }
    }
    server.repl.acked.notify_waiters();
}

async fn write(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("timeout writing to replica")),
    }
}
