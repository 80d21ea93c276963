//! One client connection: read what has arrived, run every complete request under one
//! acquisition of the keyspace lock, write all the replies, repeat.
//!
//! Batching is what makes pipelining cheap: a client that sends 16 commands in one write
//! takes the lock once, not 16 times. The lock is a plain mutex held only while commands run,
//! never across an `.await`: a command that must wait (CLIENT PAUSE, a blocking pop) ends the
//! batch, the connection waits with the lock released, and then resumes the rest of the
//! pipeline in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tracing::debug;

use lagwise_shared::codec::{make_room, DecodeError, ProtocolError, Request, RequestDecoder};
use lagwise_shared::resp::{Protocol, ReplyWriter};
use lagwise_shared::shutdown::Shutdown;

use crate::clients::ClientHandle;
use crate::cmd::pubsub::Subscriptions;
use crate::cmd::transactions::MultiState;
use crate::cmd::{self, Blocking, Ctx, Outcome};
use crate::pubsub::Kind;
use crate::server::{now_ms, Server, Stats};

/// Most commands run in one hold of the lock, so one deep pipeline cannot starve others.
const MAX_BATCH: usize = 1024;
/// Replies are flushed once this much is buffered, even mid-batch.
const FLUSH_AT: usize = 64 * 1024;
/// How long a write to a client that stopped reading may take before we give up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-connection state that commands read and change.
#[derive(Debug)]
pub struct ClientState {
    pub id: u64,
    pub protocol: Protocol,
    pub authenticated: bool,
    pub handle: Arc<ClientHandle>,
    /// Inside MULTI: the queued commands.
    pub multi: Option<MultiState>,
    /// Keys this client WATCHes.
    pub watching: Vec<Vec<u8>>,
    pub subscriptions: Subscriptions,
    /// Where PUBLISH puts messages for this client; the connection task drains it.
    pub push_tx: mpsc::Sender<Bytes>,
    /// EXEC is running this client's queue: blocking commands must not block.
    pub in_exec: bool,
    /// This is the link to our primary applying its stream: writes are allowed on a
    /// replica, expired keys are still there, nothing is propagated again.
    pub is_primary_link: bool,
    /// The stream position after this client's last write (what WAIT waits for).
    pub woff: u64,
    /// What a replica told us with REPLCONF before its PSYNC.
    pub replica_port: u16,
    pub replica_capa_eof: bool,
    /// Cluster mode: READONLY (reads of our primary's slots are served here) and ASKING
    /// (the next command may touch a slot being imported).
    pub readonly: bool,
    pub asking: bool,
    /// Reused for key positions, so the cluster check allocates nothing per command.
    pub key_scratch: Vec<usize>,
}

impl ClientState {
    pub fn new(handle: Arc<ClientHandle>, push_tx: mpsc::Sender<Bytes>) -> ClientState {
        ClientState {
            id: handle.id,
            protocol: Protocol::Resp2,
            authenticated: false,
            handle,
            multi: None,
            watching: Vec::new(),
            subscriptions: Subscriptions::default(),
            push_tx,
            in_exec: false,
            is_primary_link: false,
            woff: 0,
            replica_port: 0,
            replica_capa_eof: false,
            readonly: false,
            asking: false,
            key_scratch: Vec::new(),
        }
    }
}

/// Tells a client it cannot be served, then closes.
pub async fn refuse(mut stream: TcpStream, message: &str) {
    let reply = format!("-{message}\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
}

/// Whether the connection goes on.
enum Flow {
    Continue,
    Stop,
}

struct Conn {
    server: Arc<Server>,
    stream: TcpStream,
    handle: Arc<ClientHandle>,
    client: ClientState,
    push_rx: mpsc::Receiver<Bytes>,
    decoder: RequestDecoder,
    shutdown: Shutdown,
    input: BytesMut,
    output: BytesMut,
    /// Framed requests; `next` is the first not yet run.
    requests: Vec<Request>,
    next: usize,
    /// Set by PSYNC: the connection becomes a replica's stream.
    handover: Option<crate::replication::primary::PsyncRequest>,
}

/// Serves one client until it leaves, is killed, or the server shuts down. The client was
/// registered at accept, so ids follow the order of connection.
pub async fn serve(server: Arc<Server>, stream: TcpStream, handle: Arc<ClientHandle>) {
    let (requirepass, max_bulk) = {
        let config = server.config.read();
        (
            !config.get("requirepass").is_empty(),
            config.get_u64("proto-max-bulk-len"),
        )
    };
    let (push_tx, push_rx) = mpsc::channel::<Bytes>(crate::pubsub::QUEUE_LIMIT);
    let mut client = ClientState::new(handle.clone(), push_tx);
    client.authenticated = !requirepass;
    let mut decoder = RequestDecoder::new(max_bulk);
    decoder.set_authenticated(client.authenticated);
    let mut conn = Conn {
        shutdown: server.shutdown_listener(),
        server,
        stream,
        handle,
        client,
        push_rx,
        decoder,
        input: BytesMut::with_capacity(16 * 1024),
        output: BytesMut::with_capacity(16 * 1024),
        requests: Vec::with_capacity(16),
        next: 0,
        handover: None,
    };
    conn.run().await;
    if let Some(req) = conn.handover.take() {
        // PSYNC: from here on this connection carries the replication stream.
        let Conn {
            server,
            stream,
            handle,
            input,
            ..
        } = conn;
        crate::replication::primary::serve_replica(
            server.clone(),
            stream,
            handle.clone(),
            req,
            input,
        )
        .await;
        server.clients.unregister(handle.id);
        return;
    }
    conn.close().await;
}

impl Conn {
    async fn run(&mut self) {
        loop {
            let protocol_error = self.frame();
            if self.next >= self.requests.len() && protocol_error.is_none() {
                match self.wait_for_input().await {
                    Flow::Continue => continue,
                    Flow::Stop => return,
                }
            }
            if let Flow::Stop = self.run_requests().await {
                let _ = self.flush().await;
                return;
            }
            if let Some(e) = protocol_error {
                ReplyWriter::new(&mut self.output, self.client.protocol)
                    .error(format!("ERR Protocol error: {}", e.0));
                let _ = self.flush().await;
                return;
            }
            if self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Frames every complete request in the input buffer.
    fn frame(&mut self) -> Option<ProtocolError> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(req)) => self.requests.push(req),
                Ok(None) => break,
                Err(DecodeError::Protocol(e)) => return Some(e),
                Err(DecodeError::Io(e)) => return Some(ProtocolError(e.to_string().into())),
            }
        }
        self.handle.info.lock().qbuf = self.input.len();
        None
    }

    async fn wait_for_input(&mut self) -> Flow {
        let idle_timeout = self.server.config.read().get_u64("timeout");
        let idle = async {
            if idle_timeout == 0 {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(Duration::from_secs(idle_timeout)).await
            }
        };
        make_room(&mut self.input);
        tokio::select! {
            r = self.stream.read_buf(&mut self.input) => match r {
                Ok(0) | Err(_) => Flow::Stop,
                Ok(n) => {
                    Stats::add(&self.server.stats.net_input_bytes, n as u64);
                    Flow::Continue
                }
            },
            Some(msg) = self.push_rx.recv() => {
                self.output.extend_from_slice(&msg);
                while self.output.len() < FLUSH_AT {
                    match self.push_rx.try_recv() {
                        Ok(msg) => self.output.extend_from_slice(&msg),
                        Err(_) => break,
                    }
                }
                match self.flush().await {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Stop,
                }
            }
            _ = self.handle.killed() => Flow::Stop,
            _ = self.shutdown.wait() => Flow::Stop,
            _ = idle => {
                debug!(client = self.client.id, "closing idle client");
                Flow::Stop
            }
        }
    }

    /// Runs the framed requests in order, in batches under the lock, waiting in between where
    /// a command must wait.
    async fn run_requests(&mut self) -> Flow {
        let mut flow = Flow::Continue;
        let mut last_cmd = "";
        let first = self.next;
        while self.next < self.requests.len() {
            // CLIENT PAUSE: wait outside the lock until this command may run.
            let pause = self
                .server
                .pause
                .blocks(|| cmd::is_write_request(&self.requests[self.next]));
            if let Some(until) = pause {
                if self.flush().await.is_err() {
                    return Flow::Stop;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = self.server.pause.ended.notified() => {}
                    _ = self.handle.killed() => return Flow::Stop,
                }
                continue;
            }
            let outcome = self.run_batch(&mut last_cmd);
            match outcome {
                Outcome::Continue => {}
                Outcome::Close => {
                    flow = Flow::Stop;
                    break;
                }
                Outcome::Freeze(_) => {}
                Outcome::Block(b) => {
                    if self.flush().await.is_err() {
                        return Flow::Stop;
                    }
                    if let Flow::Stop = self.wait_blocked(b).await {
                        return Flow::Stop;
                    }
                }
                Outcome::WaitAcks(w) => {
                    if self.flush().await.is_err() {
                        return Flow::Stop;
                    }
                    if let Flow::Stop = self.wait_acks(w).await {
                        return Flow::Stop;
                    }
                }
                Outcome::Replicate(req) => {
                    self.handover = Some(req);
                    flow = Flow::Stop;
                    break;
                }
            }
            if self.output.len() >= FLUSH_AT && self.flush().await.is_err() {
                return Flow::Stop;
            }
        }
        Stats::add(
            &self.server.stats.commands_processed,
            (self.next - first) as u64,
        );
        self.requests.clear();
        self.next = 0;
        self.handle.touch();
        if !last_cmd.is_empty() {
            self.handle.info.lock().last_cmd = last_cmd;
        }
        flow
    }

    /// Runs requests under one hold of the lock until the batch ends, a command asks the
    /// connection to do something else, or a pause applies to the next one.
    fn run_batch(&mut self, last_cmd: &mut &'static str) -> Outcome {
        let server = &self.server;
        let mut db = server.lock_db();
        // Messages published before this batch took the lock go out before its replies.
        while let Ok(msg) = self.push_rx.try_recv() {
            self.output.extend_from_slice(&msg);
        }
        let now = now_ms();
        let start = self.next;
        let end = (self.next + MAX_BATCH).min(self.requests.len());
        let mut out = ReplyWriter::new(&mut self.output, self.client.protocol);
        let mut outcome = Outcome::Continue;
        let mut clock = cmd::CommandClock::start();
        while self.next < end {
            let req = &self.requests[self.next];
            // The first command's pause was checked before the lock was taken.
            if self.next > start && server.pause.blocks(|| cmd::is_write_request(req)).is_some() {
                break;
            }
            let mut ctx = Ctx {
                server,
                db: &mut db,
                client: &mut self.client,
                out: &mut out,
                now_ms: now,
                outcome: Outcome::Continue,
                clock: &mut clock,
            };
            let staged = ctx.db.repl.staged().len();
            if let Some(name) = cmd::execute(&mut ctx, req) {
                *last_cmd = name;
            }
            outcome = std::mem::replace(&mut ctx.outcome, Outcome::Continue);
            if db.repl.staged().len() != staged {
                self.client.woff = server.stream_position(&db);
            }
            self.next += 1;
            // Clients blocked on keys this command changed get their turn before the next
            // command, as in Valkey.
            if db.blocked.has_ready() {
                crate::blocking::serve_ready(&mut db, now);
            }
            if !matches!(outcome, Outcome::Continue) || out.out.len() >= FLUSH_AT {
                break;
            }
        }
        self.decoder.set_authenticated(self.client.authenticated);
        if let Outcome::Freeze(d) = outcome {
            // DEBUG SLEEP stops the whole server, as in Valkey: hold the lock (and, with one
            // thread, the thread itself).
            let flavor = tokio::runtime::Handle::current().runtime_flavor();
            if flavor == tokio::runtime::RuntimeFlavor::CurrentThread {
                std::thread::sleep(d);
            } else {
                tokio::task::block_in_place(|| std::thread::sleep(d));
            }
        }
        outcome
    }

    /// Waits, lock released, for a blocking command to be served, time out or be given up.
    async fn wait_blocked(&mut self, mut b: Blocking) -> Flow {
        let at = b.deadline;
        let deadline = async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = &mut b.reply => {
                    if let Ok(reply) = r {
                        self.output.extend_from_slice(&reply);
                    }
                    return Flow::Continue;
                }
                _ = &mut deadline => {
                    self.end_wait(&mut b);
                    return Flow::Continue;
                }
                // Keep reading while blocked: later pipelined requests wait their turn, and a
                // client that goes away must not stay registered.
                r = self.stream.read_buf(&mut self.input) => match r {
                    Ok(0) | Err(_) => {
                        self.end_wait(&mut b);
                        return Flow::Stop;
                    }
                    Ok(n) => Stats::add(&self.server.stats.net_input_bytes, n as u64),
                },
                _ = self.handle.killed() => {
                    self.end_wait(&mut b);
                    return Flow::Stop;
                }
                _ = self.shutdown.wait() => {
                    self.end_wait(&mut b);
                    return Flow::Stop;
                }
            }
        }
    }

    /// WAIT: until enough replicas acknowledged this client's writes, or the timeout.
    async fn wait_acks(&mut self, w: cmd::WaitAcks) -> Flow {
        let deadline = async move {
            match w.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(deadline);
        let count = loop {
            let acked = self.server.repl.acked.notified();
            tokio::pin!(acked);
            acked.as_mut().enable();
            let count = self.server.repl.acked_count(w.offset);
            if count >= w.replicas {
                break count;
            }
            tokio::select! {
                _ = &mut acked => {}
                _ = &mut deadline => break self.server.repl.acked_count(w.offset),
                _ = self.handle.killed() => return Flow::Stop,
                _ = self.shutdown.wait() => return Flow::Stop,
            }
        };
        ReplyWriter::new(&mut self.output, self.client.protocol).int(count as i64);
        Flow::Continue
    }

    /// Takes the client off the wait list; it gets its timeout reply, unless it was served in
    /// the meantime, in which case it gets that reply.
    fn end_wait(&mut self, b: &mut Blocking) {
        let mut db = self.server.lock_db();
        match db.blocked.remove(self.client.id) {
            Some(w) => self.output.extend_from_slice(&w.timeout_reply),
            None => {
                if let Ok(reply) = b.reply.try_recv() {
                    self.output.extend_from_slice(&reply);
                }
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        // appendfsync always: replies to writes go out once the writes are on disk.
        self.server.aof.durable(self.client.woff).await;
        let n = self.output.len();
        match tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(&self.output)).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.output.clear();
        Stats::add(&self.server.stats.net_output_bytes, n as u64);
        Ok(())
    }

    /// Leaves no trace: registry, watches, waits, subscriptions.
    async fn close(&mut self) {
        let id = self.client.id;
        // Gone from CLIENT LIST before the peer can see the close.
        self.server.clients.unregister(id);
        {
            let mut db = self.server.lock_db();
            if !self.client.watching.is_empty() {
                db.unwatch(id, &self.client.watching);
            }
            db.blocked.remove(id);
        }
        if self.client.subscriptions.is_subscribed() {
            let mut registry = self.server.pubsub.lock();
            let subs = &self.client.subscriptions;
            for (kind, names) in [
                (Kind::Channel, &subs.channels),
                (Kind::Pattern, &subs.patterns),
                (Kind::Shard, &subs.shard),
            ] {
                for name in names {
                    registry.unsubscribe(kind, name, id);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}
