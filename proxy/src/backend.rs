//! Connections to cluster nodes: pipelined, bounded, shared by every client session.
//!
//! A `BackendConn` is two tasks around one TCP connection. The writer takes requests from a
//! bounded queue, tells the reader how many replies each expects (before writing, so the reader
//! always knows what a reply belongs to), and writes them in batches; the reader frames replies
//! and hands each to its waiter, in order. Many clients' requests share one pipeline, which is
//! what makes a proxy cheaper for the servers than direct unpipelined clients.
//!
//! A connection that fails fails everything in flight and is replaced on next use, after a
//! backoff; a full queue fails fast instead of buffering without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use lagwise_shared::topology::NodeAddr;

use crate::reply::{frame_len, Protocol};

/// Why a backend request failed. `sent` says whether the request may have reached the node:
/// a write that may have been applied must not be retried blindly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {0}: {1}")]
    Connect(NodeAddr, String),
    #[error("connection to {0} lost")]
    Lost(NodeAddr),
    #[error("too many requests queued for {0}")]
    Busy(NodeAddr),
    #[error("protocol error from {0}: {1}")]
    Protocol(NodeAddr, String),
    #[error("timed out waiting for {0}")]
    Timeout(NodeAddr),
}

impl BackendError {
    /// Whether the request certainly did not reach the node (safe to retry anywhere).
    pub fn not_sent(&self) -> bool {
        matches!(self, BackendError::Connect(..) | BackendError::Busy(..))
    }
}

/// One request: its encoded commands, and how many replies to read (the last is returned;
/// e.g. ASKING + command expects two).
struct Job {
    payload: Bytes,
    replies: usize,
    respond: oneshot::Sender<Result<Bytes, BackendError>>,
}

struct Pending {
    /// When the request went into the write buffer: its reply time starts here.
    sent: Instant,
    replies: usize,
    respond: oneshot::Sender<Result<Bytes, BackendError>>,
    /// Replies of a request that expects several, moved out of the read buffer because they
    /// are large (see `reader`).
    got: BytesMut,
}

/// Settings for backend connections.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub connect_timeout: Duration,
    pub max_queued: usize,
    pub max_reply_bytes: usize,
    pub password: Option<String>,
    pub username: Option<String>,
}

/// A pipelined connection to one node; a clone is one more handle to it (one reference
/// count: the pool hands one out per request).
#[derive(Clone)]
pub struct BackendConn(Arc<Handle>);

struct Handle {
    addr: NodeAddr,
    jobs: mpsc::Sender<Job>,
    alive: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

impl BackendConn {
    /// Connects, authenticates and (for RESP3) says HELLO 3; `readonly` sends READONLY, for
    /// replica connections.
    pub async fn connect(
        addr: NodeAddr,
        protocol: Protocol,
        readonly: bool,
        settings: &BackendSettings,
    ) -> Result<BackendConn, BackendError> {
        let connect = TcpStream::connect(addr.as_str());
        let stream = tokio::time::timeout(settings.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::Connect(addr.clone(), "timed out".into()))?
            .map_err(|e| BackendError::Connect(addr.clone(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (jobs, job_rx) = mpsc::channel(settings.max_queued);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let alive = Arc::new(AtomicBool::new(true));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let latency = crate::metrics::get()
            .backend_duration
            .with_label_values(&[addr.as_str()]);
        tokio::spawn(writer(
            addr.clone(),
            write,
            job_rx,
            pending_tx,
            alive.clone(),
        ));
        tokio::spawn(reader(
            addr.clone(),
            ReplyFraming {
                protocol,
                max_reply_bytes: settings.max_reply_bytes,
                latency,
            },
            read,
            pending_rx,
            alive.clone(),
            in_flight.clone(),
        ));
        let conn = BackendConn(Arc::new(Handle {
            addr: addr.clone(),
            jobs,
            alive,
            in_flight,
        }));
        // The handshake goes through the pipeline like any request.
        let mut hello = Vec::new();
        match (&settings.username, &settings.password) {
            (Some(u), Some(p)) => hello.push(crate::reply::encode(&[
                b"AUTH" as &[u8],
                u.as_bytes(),
                p.as_bytes(),
            ])),
            (None, Some(p)) => hello.push(crate::reply::encode(&[b"AUTH" as &[u8], p.as_bytes()])),
            _ => {}
        }
        if protocol == Protocol::Resp3 {
            hello.push(crate::reply::encode(&[b"HELLO" as &[u8], b"3"]));
        }
        if readonly {
            hello.push(crate::reply::encode(&[b"READONLY"]));
        }
        for cmd in hello {
            let reply = tokio::time::timeout(settings.connect_timeout, conn.request(cmd, 1))
                .await
                .map_err(|_| BackendError::Timeout(addr.clone()))??;
            if reply.first() == Some(&b'-') {
                return Err(BackendError::Connect(
                    addr.clone(),
                    String::from_utf8_lossy(&reply).trim_end().to_string(),
                ));
            }
        }
        Ok(conn)
    }

    pub fn is_alive(&self) -> bool {
        self.0.alive.load(Ordering::Acquire)
    }

    /// Sends `payload` (one or more commands) and returns its `replies` replies, back to back.
    pub async fn request(&self, payload: Bytes, replies: usize) -> Result<Bytes, BackendError> {
        let reply = self.send(payload, replies)?;
        reply
            .await
            .unwrap_or_else(|_| Err(BackendError::Lost(self.0.addr.clone())))
    }

    /// Queues `payload` (`replies` commands) at once, in the order of the calls, and returns
    /// where its replies (back to back) will arrive.
    pub fn send(&self, payload: Bytes, replies: usize) -> Result<ReplyReceiver, BackendError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            payload,
            replies,
            respond: tx,
        };
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.0.jobs.try_send(job) {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => BackendError::Busy(self.0.addr.clone()),
                mpsc::error::TrySendError::Closed(_) => BackendError::Lost(self.0.addr.clone()),
            });
        }
        Ok(rx)
    }

    pub fn addr(&self) -> &NodeAddr {
        &self.0.addr
    }

    /// Whether both are handles to the same connection.
    pub fn same(&self, other: &BackendConn) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Where the replies of a request sent with [`BackendConn::send`] arrive; closed (an error)
/// if the connection ends first.
pub type ReplyReceiver = oneshot::Receiver<Result<Bytes, BackendError>>;

async fn writer(
    addr: NodeAddr,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut jobs: mpsc::Receiver<Job>,
    pending: mpsc::UnboundedSender<Pending>,
    alive: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut batch = Vec::new();
    while let Some(job) = jobs.recv().await {
        batch.push(job);
        // Let the clients whose requests arrived with this one queue theirs too (a yield
        // runs after the runtime's next look at the sockets): one write for all of them.
        tokio::task::yield_now().await;
        // Everything queued meanwhile goes out in the same write.
        while buf.len() < 256 * 1024 {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let sent = Instant::now();
        for job in batch.drain(..) {
            buf.extend_from_slice(&job.payload);
            let p = Pending {
                sent,
                replies: job.replies,
                respond: job.respond,
                got: BytesMut::new(),
            };
            if pending.send(p).is_err() {
                return;
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            tracing::debug!(node = %addr, error = %e, "backend write failed");
            alive.store(false, Ordering::Release);
            return;
        }
        buf.clear();
    }
}

/// How the reader frames and times replies.
struct ReplyFraming {
    protocol: Protocol,
    max_reply_bytes: usize,
    /// This backend's reply-time histogram.
    latency: prometheus::Histogram,
}

async fn reader(
    addr: NodeAddr,
    framing: ReplyFraming,
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    alive: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
) {
    let ReplyFraming {
        protocol,
        max_reply_bytes,
        latency,
    } = framing;
    // Observed here and published once per pass: a batch's replies cost one update.
    let latency = latency.local();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    // The front request's replies framed so far, and where they end in `buf`: a request of
    // several replies is handed over as one slice of the buffer, not copied together.
    let (mut framed, mut end) = (0usize, 0usize);
    let error = loop {
        // Frame every complete reply in the buffer; they all arrived by `now`.
        let now = Instant::now();
        loop {
            let len = match frame_len(&buf[end..], protocol) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    let err = BackendError::Protocol(addr.clone(), e);
                    fail_all(&mut waiting, &mut pending, &err);
                    alive.store(false, Ordering::Release);
                    return;
                }
            };
            if waiting.is_empty() {
                match pending.try_recv() {
                    Ok(p) => waiting.push_back(p),
                    Err(_) => {
                        // A reply nobody asked for: the stream is out of step.
                        let err = BackendError::Protocol(addr.clone(), "unexpected reply".into());
                        fail_all(&mut waiting, &mut pending, &err);
                        alive.store(false, Ordering::Release);
                        return;
                    }
                }
            }
            let Some(front) = waiting.front_mut() else {
                break;
            };
            end += len;
            framed += 1;
            if framed < front.replies {
                continue;
            }
            let reply = if front.got.is_empty() {
                buf.split_to(end).freeze()
            } else {
                front.got.extend_from_slice(&buf[..end]);
                buf.advance(end);
                std::mem::take(&mut front.got).freeze()
            };
            (framed, end) = (0, 0);
            if let Some(p) = waiting.pop_front() {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                latency.observe(now.saturating_duration_since(p.sent).as_secs_f64());
                let _ = p.respond.send(Ok(reply));
            }
        }
        latency.flush();
        // Large replies of a request not complete yet leave the buffer, which then holds
        // at most one reply in the making.
        if end >= 64 * 1024 {
            if let Some(front) = waiting.front_mut() {
                front.got.extend_from_slice(&buf[..end]);
                buf.advance(end);
                end = 0;
            }
        }
        if buf.len() - end > max_reply_bytes {
            break BackendError::Protocol(addr.clone(), "reply larger than the limit".into());
        }
        tokio::select! {
            r = read.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break BackendError::Lost(addr.clone()),
                Ok(_) => {}
            },
            p = pending.recv(), if waiting.is_empty() => match p {
                Some(p) => waiting.push_back(p),
                None => return,
            },
        }
    };
    alive.store(false, Ordering::Release);
    fail_all(&mut waiting, &mut pending, &error);
}

fn fail_all(
    waiting: &mut VecDeque<Pending>,
    pending: &mut mpsc::UnboundedReceiver<Pending>,
    err: &BackendError,
) {
    pending.close();
    while let Ok(p) = pending.try_recv() {
        waiting.push_back(p);
    }
    for p in waiting.drain(..) {
        let _ = p.respond.send(Err(err.clone()));
    }
}

/// The connections to every node: per node, `per_node` lanes for each client thread and for
/// the control thread, each lane one connection, created on first use and replaced when it
/// fails. A client session always uses the same lane, so its requests to one node travel one
/// pipeline and run in the order it sent them; and its thread's own lanes, so the connection's
/// tasks run on the session's thread (they are spawned by the first use).
pub struct Pool {
    settings: BackendSettings,
    per_node: usize,
    /// Client threads; the control thread's lanes come after theirs.
    threads: usize,
    /// By node, then by `kind` (protocol and read-only).
    lanes: RwLock<HashMap<NodeAddr, [Option<Arc<NodeLanes>>; 4]>>,
}

/// Which of a node's connection sets: by protocol, and read-only (replica) or not.
fn kind(protocol: Protocol, readonly: bool) -> usize {
    usize::from(protocol == Protocol::Resp3) * 2 + usize::from(readonly)
}

struct NodeLanes {
    lanes: Vec<Lane>,
}

#[derive(Default)]
struct Lane {
    /// The connection, taken without waiting (a short lock, never held across an await).
    conn: parking_lot::Mutex<Option<BackendConn>>,
    /// Held while connecting: concurrent users of a lane wait for one connect, in order.
    connecting: tokio::sync::Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    /// After a failed connect, no new attempt before this.
    retry_after: Option<Instant>,
    failures: u32,
}

impl Lane {
    fn live(&self) -> Option<BackendConn> {
        self.conn.lock().as_ref().filter(|c| c.is_alive()).cloned()
    }
}

impl Pool {
    pub fn new(settings: BackendSettings, per_node: usize, threads: usize) -> Pool {
        Pool {
            settings,
            per_node: per_node.max(1),
            threads: threads.max(1),
            lanes: RwLock::new(HashMap::new()),
        }
    }

    /// The lane of session `id` on client thread `thread`.
    pub fn lane(&self, thread: usize, id: u64) -> usize {
        (thread % self.threads) * self.per_node + (id % self.per_node as u64) as usize
    }

    /// The lane of the control thread (topology refreshes).
    pub fn control_lane(&self) -> usize {
        self.threads * self.per_node
    }

    fn node_lanes(&self, addr: &NodeAddr, protocol: Protocol, readonly: bool) -> Arc<NodeLanes> {
        let kind = kind(protocol, readonly);
        // Looked up without allocating; a node's first use inserts its entry.
        if let Some(l) = self.lanes.read().get(addr).and_then(|k| k[kind].clone()) {
            return l;
        }
        let mut map = self.lanes.write();
        let kinds = map.entry(addr.clone()).or_default();
        kinds[kind]
            .get_or_insert_with(|| {
                Arc::new(NodeLanes {
                    lanes: (0..(self.threads + 1) * self.per_node)
                        .map(|_| Lane::default())
                        .collect(),
                })
            })
            .clone()
    }

    /// The live connection of lane `lane` to `addr` if it is open; never connects.
    pub fn live(
        &self,
        addr: &NodeAddr,
        protocol: Protocol,
        readonly: bool,
        lane: usize,
    ) -> Option<BackendConn> {
        let node = self
            .lanes
            .read()
            .get(addr)
            .and_then(|k| k[kind(protocol, readonly)].clone())?;
        node.lanes[lane % node.lanes.len()].live()
    }

    /// The live connection of lane `lane` to `addr`, opening it if needed. Fails fast while
    /// the node is in its reconnect backoff.
    pub async fn get(
        &self,
        addr: &NodeAddr,
        protocol: Protocol,
        readonly: bool,
        lane: usize,
    ) -> Result<BackendConn, BackendError> {
        let node = self.node_lanes(addr, protocol, readonly);
        let lane = &node.lanes[lane % node.lanes.len()];
        if let Some(c) = lane.live() {
            return Ok(c);
        }
        let mut backoff = lane.connecting.lock().await;
        // Connected by whoever held the lock before.
        if let Some(c) = lane.live() {
            return Ok(c);
        }
        if backoff.retry_after.is_some_and(|t| Instant::now() < t) {
            return Err(BackendError::Connect(
                addr.clone(),
                "node is down (backing off)".into(),
            ));
        }
        // Boxed: the connect future is large and rare; inline, every request's future would
        // carry (and move) its size.
        match Box::pin(BackendConn::connect(
            addr.clone(),
            protocol,
            readonly,
            &self.settings,
        ))
        .await
        {
            Ok(conn) => {
                *backoff = Backoff::default();
                *lane.conn.lock() = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.retry_after =
                    Some(Instant::now() + Duration::from_millis(50u64 << backoff.failures.min(6)));
                *lane.conn.lock() = None;
                Err(e)
            }
        }
    }

    /// Per node: open pooled connections and requests in flight on them (for metrics).
    pub fn stats(&self) -> Vec<(NodeAddr, usize, usize)> {
        let nodes: Vec<(NodeAddr, Arc<NodeLanes>)> = self
            .lanes
            .read()
            .iter()
            .flat_map(|(addr, kinds)| kinds.iter().flatten().map(|l| (addr.clone(), l.clone())))
            .collect();
        let mut out: Vec<(NodeAddr, usize, usize)> = Vec::new();
        for (addr, lanes) in nodes {
            let (mut conns, mut in_flight) = (0, 0);
            for c in lanes.lanes.iter().filter_map(Lane::live) {
                conns += 1;
                in_flight += c.0.in_flight.load(Ordering::Relaxed);
            }
            match out.iter_mut().find(|(a, _, _)| *a == addr) {
                Some(e) => {
                    e.1 += conns;
                    e.2 += in_flight;
                }
                None => out.push((addr, conns, in_flight)),
            }
        }
        out
    }

    /// Opens a connection that belongs to one client (transactions, blocking commands,
    /// subscriptions), outside the shared pool.
    pub async fn dedicated(
        &self,
        addr: &NodeAddr,
        protocol: Protocol,
    ) -> Result<BackendConn, BackendError> {
        BackendConn::connect(addr.clone(), protocol, false, &self.settings).await
    }
}
