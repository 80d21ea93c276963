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

use lagwise_shared::codec::make_room;
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
    deadline: Option<Instant>,
    respond: oneshot::Sender<Result<Bytes, BackendError>>,
}

struct Pending {
    /// When the request went into the write buffer: its reply time starts here.
    sent: Instant,
    replies: usize,
    /// Replies that have not come by then are of no use: the waiter gets `Timeout` then
    /// (and the replies are read and dropped when they come).
    deadline: Option<Instant>,
    /// None once the waiter has been answered (its deadline passed).
    respond: Option<oneshot::Sender<Result<Bytes, BackendError>>>,
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
        self.send_by(payload, replies, None)
    }

    /// As `send`, but replies that have not all come by `deadline` are `Timeout` instead.
    /// The connection keeps one timer for all its requests' deadlines, where a timeout per
    /// request would register and cancel a timer each time.
    pub fn send_by(
        &self,
        payload: Bytes,
        replies: usize,
        deadline: Option<Instant>,
    ) -> Result<ReplyReceiver, BackendError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            payload,
            replies,
            deadline,
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
                deadline: job.deadline,
                respond: Some(job.respond),
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
    // The earliest deadline of a waiting request, and the timer set for it.
    let mut expiry = Expiry::new();
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
                if let Some(respond) = p.respond {
                    // Framed after its deadline (this pass started late): as good as none.
                    let late = p.deadline.is_some_and(|d| now > d);
                    let _ = respond.send(if late {
                        Err(BackendError::Timeout(addr.clone()))
                    } else {
                        Ok(reply)
                    });
                }
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
        // Every request written is waited for here, so that its deadline is known.
        while let Ok(p) = pending.try_recv() {
            expiry.track(&p);
            waiting.push_back(p);
        }
        make_room(&mut buf);
        tokio::select! {
            r = read.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break BackendError::Lost(addr.clone()),
                Ok(_) => {}
            },
            p = pending.recv(), if waiting.is_empty() => match p {
                Some(p) => {
                    expiry.track(&p);
                    waiting.push_back(p);
                }
                None => return,
            },
            () = expiry.passed() => expiry.expire(&mut waiting, &addr),
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
        if let Some(respond) = p.respond {
            let _ = respond.send(Err(err.clone()));
        }
    }
}

/// One timer for the deadlines of a connection's waiting requests. Set for the earliest; on
/// a request that comes with a later deadline (or the same: usually all requests between two
/// replication polls share one), nothing is done.
struct Expiry {
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Expiry {
    fn new() -> Expiry {
        Expiry {
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed: None,
        }
    }

    fn track(&mut self, p: &Pending) {
        if let Some(d) = p.deadline {
            if self.armed.is_none_or(|a| d < a) {
                self.armed = Some(d);
                self.timer.as_mut().reset(d.into());
            }
        }
    }

    /// Completes once the armed deadline has passed (never, when none is).
    async fn passed(&mut self) {
        if self.armed.is_none() {
            std::future::pending::<()>().await;
        }
        self.timer.as_mut().await;
    }

    /// Answers every waiting request whose deadline has passed with `Timeout`, and sets the
    /// timer for the earliest deadline left.
    fn expire(&mut self, waiting: &mut VecDeque<Pending>, addr: &NodeAddr) {
        let now = Instant::now();
        self.armed = None;
        for p in waiting.iter_mut() {
            let Some(d) = p.deadline.filter(|_| p.respond.is_some()) else {
                continue;
            };
            if d <= now {
                if let Some(respond) = p.respond.take() {
                    let _ = respond.send(Err(BackendError::Timeout(addr.clone())));
                }
            } else if self.armed.is_none_or(|a| d < a) {
                self.armed = Some(d);
            }
        }
        if let Some(d) = self.armed {
            self.timer.as_mut().reset(d.into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn settings() -> BackendSettings {
        BackendSettings {
            connect_timeout: Duration::from_secs(5),
            max_queued: 16,
            max_reply_bytes: 1 << 20,
            password: None,
            username: None,
        }
    }

    /// A connection to a node that answers the first `n` requests only when told to, back to
    /// back.
    async fn held_node(n: usize) -> (BackendConn, oneshot::Sender<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = NodeAddr(listener.local_addr().expect("addr").to_string().into());
        let (tx, rx) = oneshot::channel::<Vec<u8>>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while seen.iter().filter(|&&b| b == b'*').count() < n {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => seen.extend_from_slice(&buf[..k]),
                }
            }
            if let Ok(replies) = rx.await {
                let _ = stream.write_all(&replies).await;
            }
            // Stay connected until the client goes.
            let _ = stream.read(&mut buf).await;
        });
        let conn = BackendConn::connect(addr, Protocol::Resp2, false, &settings())
            .await
            .expect("connect");
        (conn, tx)
    }

    #[tokio::test]
    async fn a_reply_after_its_deadline_is_a_timeout_and_later_replies_stay_in_step() {
        let (conn, release) = held_node(2).await;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        let first = conn
            .send_by(
                crate::reply::encode(&[b"GET" as &[u8], b"a"]),
                1,
                Some(deadline),
            )
            .expect("queued");
        let second = conn
            .send(crate::reply::encode(&[b"GET" as &[u8], b"b"]), 1)
            .expect("queued");
        let first = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .expect("answered by the deadline, not by the node")
            .expect("not dropped");
        assert!(matches!(first, Err(BackendError::Timeout(_))), "{first:?}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        // The node answers both now: the first reply is read and dropped, the second is the
        // second request's.
        release
            .send(b"$1\r\nA\r\n$1\r\nB\r\n".to_vec())
            .expect("node waiting");
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("answered")
            .expect("not dropped")
            .expect("a reply");
        assert_eq!(&second[..], b"$1\r\nB\r\n");
        assert!(conn.is_alive());
    }

    #[tokio::test]
    async fn a_reply_within_its_deadline_is_delivered() {
        let (conn, release) = held_node(1).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let rx = conn
            .send_by(
                crate::reply::encode(&[b"GET" as &[u8], b"a"]),
                1,
                Some(deadline),
            )
            .expect("queued");
        release.send(b"$1\r\nA\r\n".to_vec()).expect("node waiting");
        let reply = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("answered")
            .expect("not dropped")
            .expect("a reply");
        assert_eq!(&reply[..], b"$1\r\nA\r\n");
    }
}
