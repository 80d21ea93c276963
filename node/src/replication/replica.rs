//! The replica side: follow a primary, as Valkey's replica does.
//!
//! One task per `REPLICAOF host port` (a newer REPLICAOF ends it): connect, handshake
//! (PING, AUTH, REPLCONF listening-port, REPLCONF capa eof psync2), PSYNC with the history
//! we hold, then either continue from our offset or receive a snapshot. A snapshot is read
//! whole and loaded into a fresh keyspace on a blocking thread while clients keep reading
//! the old one; it replaces the old one in one step, and a snapshot that fails to arrive or
//! to load leaves the old one in place. Then the stream: commands are applied in batches
//! under the keyspace lock, the offset advances by whole commands, and the bytes are relayed
//! into our own backlog so that our replicas, and our siblings after a promotion, can follow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use tracing::{info, warn};

use lagwise_shared::codec::{Request, RequestDecoder};
use lagwise_shared::resp::{Protocol, ReplyWriter};

use super::LinkState;
use crate::clients::{ClientHandle, ClientKind};
use crate::cmd::{self, Ctx, Outcome};
use crate::connection::ClientState;
use crate::db::{Db, ExpiryMode};
use crate::server::{now_ms, Server};

/// Handshake replies are short; anything longer is not a primary.
const MAX_LINE: usize = 64 * 1024;
/// The largest command the stream may carry, as `proto-max-bulk-len` allows by default.
const MAX_BULK: u64 = 512 * 1024 * 1024;
/// Backoff between connection attempts.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("primary replied to {step}: {reply}")]
    Refused { step: &'static str, reply: String },
    #[error("{0}")]
    Protocol(String),
    #[error("error loading the primary's snapshot: {0}")]
    Load(String),
    #[error("timeout: nothing from the primary for {0:?}")]
    Timeout(Duration),
    #[error("replication was reconfigured")]
    Superseded,
}

/// Follows the primary named by REPLICAOF `generation` until a later REPLICAOF or shutdown.
pub async fn run_link(server: Arc<Server>, generation: u64) {
    let mut shutdown = server.shutdown_listener();
    let mut backoff = RETRY_MIN;
    loop {
        let Some((host, port)) = current(&server, generation) else {
            return;
        };
        let started = Instant::now();
        let outcome = tokio::select! {
            r = session(&server, generation, &host, port) => r,
            _ = shutdown.wait() => return,
        };
        match outcome {
            Err(LinkError::Superseded) => return,
            Err(e) => {
                warn!(primary = %format!("{host}:{port}"), error = %e, "replication link down")
            }
            Ok(()) => {}
        }
        link_down(&server, generation);
        // A link that lived a while reconnects at once; repeated failures back off.
        if started.elapsed() > Duration::from_secs(5) {
            backoff = RETRY_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// The primary of `generation`, unless REPLICAOF has changed since.
fn current(server: &Server, generation: u64) -> Option<(String, u16)> {
    let s = server.repl.state.lock();
    if s.generation != generation {
        return None;
    }
    s.primary.as_ref().map(|p| (p.host.clone(), p.port))
}

fn set_link(server: &Server, generation: u64, state: LinkState) -> Result<(), LinkError> {
    let mut s = server.repl.state.lock();
    if s.generation != generation {
        return Err(LinkError::Superseded);
    }
    if let Some(p) = s.primary.as_mut() {
        if p.state == LinkState::Up && state != LinkState::Up {
            p.down_since = Instant::now();
        }
        p.state = state;
        p.last_io = Instant::now();
    }
    server.repl.set_link_up(state == LinkState::Up);
    Ok(())
}

fn link_down(server: &Server, generation: u64) {
    let _ = set_link(server, generation, LinkState::Connect);
}

/// The handshake's line reader: replies are single lines; the primary may send blank
/// keepalive lines while it prepares a snapshot.
struct Link {
    stream: TcpStream,
    input: BytesMut,
    timeout: Duration,
}

impl Link {
    async fn fill(&mut self) -> Result<(), LinkError> {
        match tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.input)).await {
            Ok(Ok(0)) => Err(LinkError::Protocol("primary closed the connection".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LinkError::Timeout(self.timeout)),
        }
    }

    /// The next non-blank line, without its line ending.
    async fn line(&mut self) -> Result<String, LinkError> {
        loop {
            while self.input.first() == Some(&b'\n') {
                self.input.advance(1);
            }
            if let Some(pos) = self.input.iter().position(|&b| b == b'\n') {
                let raw = self.input.split_to(pos + 1);
                let text = String::from_utf8_lossy(&raw[..pos]);
                return Ok(text.trim_end_matches('\r').to_string());
            }
            if self.input.len() > MAX_LINE {
                return Err(LinkError::Protocol("primary sent an overlong line".into()));
            }
            self.fill().await?;
        }
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), LinkError> {
        let mut out = Vec::new();
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        match tokio::time::timeout(self.timeout, self.stream.write_all(&out)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(LinkError::Timeout(self.timeout)),
        }
    }

    async fn command(&mut self, step: &'static str, args: &[&[u8]]) -> Result<String, LinkError> {
        self.send(args).await?;
        self.line().await.map_err(|e| match e {
            LinkError::Protocol(m) => LinkError::Protocol(format!("{step}: {m}")),
            other => other,
        })
    }
}

async fn session(
    server: &Arc<Server>,
    generation: u64,
    host: &str,
    port: u16,
) -> Result<(), LinkError> {
    let (timeout, masterauth, masteruser, my_port) = {
        let c = server.config.read();
        let announced = c.get_u64("replica-announce-port");
        (
            Duration::from_secs(c.get_u64("repl-timeout").max(1)),
            c.get("masterauth").to_string(),
            c.get("masteruser").to_string(),
            if announced > 0 {
                announced as u16
            } else {
                server.tcp_port
            },
        )
    };
    set_link(server, generation, LinkState::Connect)?;
    info!(primary = %format!("{host}:{port}"), "connecting to primary");
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(r) => r?,
        Err(_) => return Err(LinkError::Timeout(timeout)),
    };
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    let mut link = Link {
        stream,
        input: BytesMut::with_capacity(64 * 1024),
        timeout,
    };
    set_link(server, generation, LinkState::Handshake)?;

    // PING: an error other than NOAUTH means the primary cannot serve us now.
    let pong = link.command("PING", &[b"PING"]).await?;
    if pong.starts_with('-') && !pong.starts_with("-NOAUTH") && !pong.starts_with("-NOPERM") {
        return Err(LinkError::Refused {
            step: "PING",
            reply: pong,
        });
    }
    if !masterauth.is_empty() {
        let reply = if masteruser.is_empty() {
            link.command("AUTH", &[b"AUTH", masterauth.as_bytes()])
                .await?
        } else {
            link.command(
                "AUTH",
                &[b"AUTH", masteruser.as_bytes(), masterauth.as_bytes()],
            )
            .await?
        };
        if reply.starts_with('-') {
            return Err(LinkError::Refused {
                step: "AUTH",
                reply,
            });
        }
    }
    // Older primaries may not know these; Valkey goes on regardless.
    let port_text = my_port.to_string();
    let _ = link
        .command(
            "REPLCONF listening-port",
            &[b"REPLCONF", b"listening-port", port_text.as_bytes()],
        )
        .await?;
    let _ = link
        .command(
            "REPLCONF capa",
            &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
        )
        .await?;

    // PSYNC with the history we hold: a previous primary's, or our own when we were one.
    let (replid, offset) = {
        let s = server.repl.state.lock();
        (s.replid.clone(), server.repl.offset())
    };
    // Even a fresh node names its own (empty) history, as Valkey's replicas do; the primary
    // counts it as a failed partial resync.
    let psync_offset = (offset + 1).to_string();
    let reply = link
        .command(
            "PSYNC",
            &[b"PSYNC", replid.as_bytes(), psync_offset.as_bytes()],
        )
        .await?;
    if let Some(rest) = reply.strip_prefix("+FULLRESYNC ") {
        let mut parts = rest.split_whitespace();
        let (Some(new_id), Some(new_offset)) = (parts.next(), parts.next()) else {
            return Err(LinkError::Protocol(format!(
                "malformed reply to PSYNC: {reply}"
            )));
        };
        let new_offset: u64 = new_offset
            .parse()
            .map_err(|_| LinkError::Protocol(format!("malformed offset in: {reply}")))?;
        if new_id.len() != 40 {
            return Err(LinkError::Protocol(format!(
                "malformed replication id in: {reply}"
            )));
        }
        info!(
            replid = new_id,
            offset = new_offset,
            "full resync from primary"
        );
        set_link(server, generation, LinkState::Transfer)?;
        let rdb = receive_snapshot(server, &mut link).await?;
        install_snapshot(server, generation, rdb, new_id, new_offset).await?;
    } else if let Some(rest) = reply.strip_prefix("+CONTINUE") {
        let new_id = rest.trim();
        continue_history(server, new_id, offset);
        info!(offset, "partial resynchronization with primary succeeded");
    } else {
        return Err(LinkError::Refused {
            step: "PSYNC",
            reply,
        });
    }

    let handle = server.clients.register(peer, local);
    handle.set_kind(ClientKind::Master);
    let result = apply_stream(server, generation, &mut link, &handle).await;
    server.clients.unregister(handle.id);
    result
}

/// Reads the snapshot that follows `+FULLRESYNC`: `$<len>` then that many bytes, or
/// `$EOF:<40-byte mark>` then bytes up to the mark.
async fn receive_snapshot(server: &Server, link: &mut Link) -> Result<Vec<u8>, LinkError> {
    let head = link.line().await?;
    let Some(spec) = head.strip_prefix('$') else {
        return Err(LinkError::Protocol(format!(
            "expected a snapshot after FULLRESYNC, got: {}",
            head.chars().take(64).collect::<String>()
        )));
    };
    let mut rdb = Vec::new();
    if let Some(mark) = spec.strip_prefix("EOF:") {
        let mark = mark.as_bytes().to_vec();
        if mark.len() != 40 {
            return Err(LinkError::Protocol("malformed EOF mark".into()));
        }
        loop {
            // The mark may arrive split across reads, and the stream may follow it in the
            // same read: look for it where it could have completed, and leave what follows.
            let search_from = rdb.len().saturating_sub(mark.len() - 1);
            rdb.extend_from_slice(&link.input);
            link.input.clear();
            note_progress(server, rdb.len());
            if let Some(at) = rdb[search_from..]
                .windows(mark.len())
                .position(|w| w == mark.as_slice())
            {
                let end = search_from + at;
                link.input.extend_from_slice(&rdb[end + mark.len()..]);
                rdb.truncate(end);
                return Ok(rdb);
            }
            link.fill().await?;
        }
    }
    let len: usize = spec
        .parse()
        .map_err(|_| LinkError::Protocol(format!("malformed snapshot length: {spec}")))?;
    rdb.reserve(len.min(1 << 30));
    loop {
        let want = len - rdb.len();
        let take = want.min(link.input.len());
        rdb.extend_from_slice(&link.input[..take]);
        link.input.advance(take);
        note_progress(server, rdb.len());
        if rdb.len() == len {
            return Ok(rdb);
        }
        link.fill().await?;
    }
}

fn note_progress(server: &Server, read: usize) {
    if let Some(p) = server.repl.state.lock().primary.as_mut() {
        p.sync_bytes_read = read as u64;
        p.last_io = Instant::now();
    }
}

/// Loads the snapshot into a fresh keyspace off the runtime, then swaps it in. On any error
/// the old keyspace stays.
async fn install_snapshot(
    server: &Arc<Server>,
    generation: u64,
    rdb: Vec<u8>,
    replid: &str,
    offset: u64,
) -> Result<(), LinkError> {
    let limits = server.lock_db().limits;
    let started = Instant::now();
    let loaded = tokio::task::spawn_blocking(move || {
        let mut fresh = Db::with_limits(limits);
        crate::persistence::load_into(&rdb, &mut fresh, true).map(|_| fresh)
    })
    .await
    .map_err(|e| LinkError::Load(e.to_string()))?
    .map_err(LinkError::Load)?;
    let keys = loaded.len();
    {
        let mut db = server.lock_db();
        let mut s = server.repl.state.lock();
        if s.generation != generation {
            return Err(LinkError::Superseded);
        }
        db.replace_keyspace(loaded);
        db.repl.set_enabled(false);
        s.replid = replid.to_string();
        s.replid2 = "0".repeat(40);
        s.second_offset = -1;
        if let Some(p) = s.primary.as_mut() {
            p.read_offset = offset;
        }
        server.repl.reset_backlog(offset);
    }
    // Our own replicas followed a history that just ended: they must resync.
    super::disconnect_replicas(server);
    info!(
        keys,
        ms = started.elapsed().as_millis() as u64,
        "primary's snapshot loaded"
    );
    Ok(())
}

/// `+CONTINUE [id]`: if the primary's history has a new id (it was promoted), ours follows;
/// the old id stays valid up to here, as on the primary.
fn continue_history(server: &Server, new_id: &str, offset: u64) {
    let changed = {
        let mut s = server.repl.state.lock();
        if let Some(p) = s.primary.as_mut() {
            p.read_offset = offset;
        }
        if new_id.len() == 40 && new_id != s.replid {
            s.replid2 = std::mem::replace(&mut s.replid, new_id.to_string());
            s.second_offset = offset as i64 + 1;
            true
        } else {
            false
        }
    };
    if changed {
        super::disconnect_replicas(server);
    }
}

/// Applies the primary's stream until the link ends.
async fn apply_stream(
    server: &Arc<Server>,
    generation: u64,
    link: &mut Link,
    handle: &Arc<ClientHandle>,
) -> Result<(), LinkError> {
    set_link(server, generation, LinkState::Up)?;
    info!("primary <-> replica sync: finished, streaming");
    let (push_tx, _push_rx) = tokio::sync::mpsc::channel(1);
    let mut client = ClientState::new(handle.clone(), push_tx);
    client.authenticated = true;
    client.is_primary_link = true;
    let mut decoder = RequestDecoder::new(MAX_BULK);
    decoder.set_authenticated(true);
    let mut shutdown = server.shutdown_listener();
    let mut ack_timer = tokio::time::interval(Duration::from_secs(1));
    let mut scratch = BytesMut::new();
    let mut pending: Vec<(Request, Bytes)> = Vec::new();
    // The stream's bytes as received, kept in step with `link.input` (each byte is copied
    // once): the decoder splits arguments apart, and the relay needs the exact bytes.
    let mut raw = BytesMut::from(&link.input[..]);
    // The decoder consumes a large command piece by piece: bytes taken from `link.input`
    // since the current command began.
    let mut frame_used = 0usize;
    let mut last_data = Instant::now();
    loop {
        if pending.is_empty() {
            loop {
                let had = link.input.len();
                let decoded = decoder.decode(&mut link.input);
                frame_used += had - link.input.len();
                match decoded {
                    Ok(Some(req)) => {
                        pending.push((req, raw.split_to(frame_used).freeze()));
                        frame_used = 0;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(LinkError::Protocol(format!("bad data from primary: {e:?}")))
                    }
                }
            }
        }
        if !pending.is_empty() {
            let wait = apply_batch(
                server,
                generation,
                &mut client,
                &mut pending,
                &mut scratch,
                link,
            )
            .await?;
            if let Some(until) = wait {
                // CLIENT PAUSE WRITE holds the stream back too, as in Valkey: lag grows.
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = server.pause.ended.notified() => {}
                    _ = ack_timer.tick() => send_ack(server, link).await?,
                    _ = handle.killed() => return Err(LinkError::Protocol("killed by CLIENT KILL".into())),
                    _ = shutdown.wait() => return Ok(()),
                }
            }
            continue;
        }
        // The primary PINGs every repl-ping-replica-period: silence for repl-timeout since
        // the last byte means the link is dead, however often we wake to send acks.
        let silent_until = tokio::time::Instant::from_std(last_data) + link.timeout;
        tokio::select! {
            r = link.stream.read_buf(&mut link.input) => match r {
                Ok(0) => return Err(LinkError::Protocol("primary closed the connection".into())),
                Ok(n) => {
                    last_data = Instant::now();
                    raw.extend_from_slice(&link.input[link.input.len() - n..]);
                    let mut s = server.repl.state.lock();
                    if let Some(p) = s.primary.as_mut() {
                        p.read_offset += n as u64;
                        p.last_io = last_data;
                    }
                }
                Err(e) => return Err(e.into()),
            },
            _ = tokio::time::sleep_until(silent_until) => return Err(LinkError::Timeout(link.timeout)),
            _ = ack_timer.tick() => send_ack(server, link).await?,
            _ = handle.killed() => return Err(LinkError::Protocol("killed by CLIENT KILL".into())),
            _ = shutdown.wait() => return Ok(()),
        }
    }
}

/// Applies pending commands under one hold of the lock, relaying each one's bytes as it is
/// applied. Stops early at a write held back by CLIENT PAUSE and returns until when.
async fn apply_batch(
    server: &Arc<Server>,
    generation: u64,
    client: &mut ClientState,
    pending: &mut Vec<(Request, Bytes)>,
    scratch: &mut BytesMut,
    link: &mut Link,
) -> Result<Option<std::time::Instant>, LinkError> {
    let mut ack_now = false;
    let mut applied = 0;
    let mut paused = None;
    {
        let mut db = server.lock_db();
        if server.repl.state.lock().generation != generation {
            return Err(LinkError::Superseded);
        }
        db.expiry = ExpiryMode::Keep;
        let now = now_ms();
        let mut clock = cmd::CommandClock::start();
        for (req, raw) in pending.iter() {
            if let Some(until) = server.pause.blocks(|| cmd::is_write_request(req)) {
                paused = Some(until);
                break;
            }
            if is_getack(req) {
                ack_now = true;
            } else {
                scratch.clear();
                let mut out = ReplyWriter::new(scratch, Protocol::Resp2);
                let mut ctx = Ctx {
                    server,
                    db: &mut db,
                    client,
                    out: &mut out,
                    now_ms: now,
                    outcome: Outcome::Continue,
                    clock: &mut clock,
                };
                cmd::execute(&mut ctx, req);
            }
            server.repl.append(raw);
            applied += 1;
        }
        db.expiry = ExpiryMode::Hide;
    }
    pending.drain(..applied);
    if ack_now {
        send_ack(server, link).await?;
    }
    Ok(paused)
}

fn is_getack(req: &Request) -> bool {
    req.args.len() >= 2
        && req.args[0].eq_ignore_ascii_case(b"REPLCONF")
        && req.args[1].eq_ignore_ascii_case(b"GETACK")
}

async fn send_ack(server: &Server, link: &mut Link) -> Result<(), LinkError> {
    let offset = server.repl.offset().to_string();
    link.send(&[b"REPLCONF", b"ACK", offset.as_bytes()]).await
}
