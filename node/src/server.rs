//! The server: shared state, the listeners and the background cycle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use lagwise_shared::shutdown::{self, Shutdown, Trigger};

use crate::clients::Clients;
use crate::config::Config;
use crate::connection;
use crate::db::Db;
use crate::replication::Replication;
use crate::value::EncodingLimits;

/// Counters for INFO stats. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub commands_processed: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
    pub unexpected_error_replies: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        for c in [
            &self.connections_received,
            &self.commands_processed,
            &self.rejected_connections,
            &self.net_input_bytes,
            &self.net_output_bytes,
            &self.unexpected_error_replies,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// What `CLIENT PAUSE` is holding back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    Write,
    All,
}

#[derive(Debug, Default)]
pub struct Pause {
    /// Set while a pause may be in force: the per-command check is one atomic load.
    active: AtomicBool,
    state: Mutex<Option<(PauseKind, Instant)>>,
    /// Woken when the pause ends early (CLIENT UNPAUSE).
    pub ended: Notify,
}

impl Pause {
    pub fn pause(&self, kind: PauseKind, until: Instant) {
        let mut s = self.state.lock();
        // A second pause can only extend or widen, as in Valkey.
        let merged = match *s {
            Some((k, u)) if u > Instant::now() => {
                let kind = if k == PauseKind::All || kind == PauseKind::All {
                    PauseKind::All
                } else {
                    PauseKind::Write
                };
                (kind, u.max(until))
            }
            _ => (kind, until),
        };
        *s = Some(merged);
        self.active.store(true, Ordering::Release);
    }

    pub fn unpause(&self) {
        *self.state.lock() = None;
        self.active.store(false, Ordering::Release);
        self.ended.notify_waiters();
    }

    /// The instant until which a command of this kind must wait, if it must.
    pub fn blocks(&self, is_write: impl FnOnce() -> bool) -> Option<Instant> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let s = *self.state.lock();
        match s {
            Some((kind, until)) if until > Instant::now() => match kind {
                PauseKind::All => Some(until),
                PauseKind::Write if is_write() => Some(until),
                PauseKind::Write => None,
            },
            _ => None,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.blocks(|| true).is_some()
    }
}

/// State shared by every connection and task.
pub struct Server {
    db: Mutex<Db>,
    pub config: RwLock<Config>,
    pub clients: Clients,
    pub stats: Stats,
    /// Calls and time per command (Valkey's INFO commandstats numbers), for `/metrics`.
    pub command_stats: crate::cmd::CommandStats,
    /// Set until the dataset of the start (RDB or AOF) is loaded (`/ready`, `/metrics`).
    pub loading: AtomicBool,
    pub pause: Pause,
    pub repl: Replication,
    pub persistence: crate::persistence::Persistence,
    pub aof: crate::aof::Aof,
    /// Cluster membership, with `cluster-enabled yes`.
    pub cluster: Option<crate::cluster::Cluster>,
    pub pubsub: Mutex<crate::pubsub::PubSub>,
    pub run_id: String,
    pub started: Instant,
    pub tcp_port: u16,
    pub config_file: Option<String>,
    /// Commands per second over the last second, sampled by the background cycle.
    pub ops_per_sec: AtomicU64,
    pub memory_peak: AtomicU64,
    /// DEBUG SET-ACTIVE-EXPIRE: tests turn the active cycle off to observe lazy expiry.
    pub active_expire: AtomicBool,
    last_replica_ping: Mutex<Instant>,
    shutdown: Trigger,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("run_id", &self.run_id)
            .finish()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// 40 random hex characters (run ids, replication ids).
pub fn random_hex40() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..40)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// The keyspace, locked. On release, the changes its holder staged for the replication
/// stream are appended to the backlog: the stream follows the lock's order, and no code path
/// that changes keys can forget to publish.
pub struct DbGuard<'a> {
    db: MutexGuard<'a, Db>,
    replication: &'a Replication,
}

impl DbGuard<'_> {
    /// Publishes what is staged so far, keeping the lock.
    pub fn flush(&mut self) {
        publish_staged(self.replication, &mut self.db);
    }
}

fn publish_staged(replication: &Replication, db: &mut Db) {
    if !db.repl.staged().is_empty() {
        replication.append(db.repl.staged());
        db.repl.clear_staged();
    }
}

impl Drop for DbGuard<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl std::ops::Deref for DbGuard<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl std::ops::DerefMut for DbGuard<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        &mut self.db
    }
}

impl Server {
    pub fn lock_db(&self) -> DbGuard<'_> {
        DbGuard {
            db: self.db.lock(),
            replication: &self.repl,
        }
    }

    /// The keyspace, if its lock comes within `wait`: for readers that must not hang behind
    /// a long holder (the dataset load at start holds it throughout), such as a metrics
    /// scrape.
    pub fn try_lock_db_for(&self, wait: Duration) -> Option<DbGuard<'_>> {
        self.db.try_lock_for(wait).map(|db| DbGuard {
            db,
            replication: &self.repl,
        })
    }

    /// Publishes what `db`'s holder has staged (for code that holds the keyspace through a
    /// plain `&mut Db`, such as a command that must know the exact stream position).
    pub fn flush_staged(&self, db: &mut Db) {
        publish_staged(&self.repl, db);
    }

    /// The replication stream's position including what the lock holder has staged.
    pub fn stream_position(&self, db: &Db) -> u64 {
        self.repl.offset() + db.repl.staged().len() as u64
    }

    pub fn shutdown_listener(&self) -> Shutdown {
        self.shutdown.subscribe()
    }

    /// Starts a graceful shutdown (SHUTDOWN, SIGTERM).
    pub fn request_shutdown(&self) {
        self.shutdown.fire();
    }
}

/// Binds the listeners. Failing to bind is fatal, as for valkey-server.
async fn bind(config: &Config) -> std::io::Result<Vec<TcpListener>> {
    let port = config.port();
    let mut listeners = Vec::new();
    for (host, optional) in config.bind_addrs() {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        match TcpListener::bind(&addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if optional => debug!(%addr, error = %e, "optional bind address unavailable"),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("Could not create server TCP listening socket {addr}: {e}"),
                ))
            }
        }
    }
    Ok(listeners)
}

/// Binds `admin-listen`, if set. Failing to bind is fatal too, and the error names the
/// directive.
async fn bind_admin(config: &Config) -> std::io::Result<Option<TcpListener>> {
    let addr = config.get("admin-listen");
    if addr.is_empty() {
        return Ok(None);
    }
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("admin-listen {addr}: could not create the admin HTTP listening socket: {e}"),
        )),
    }
}

/// Runs the node until shutdown. Returns once every connection has finished.
pub async fn run(config: Config, config_file: Option<String>) -> std::io::Result<()> {
    let listeners = bind(&config).await?;
    let admin_listener = bind_admin(&config).await?;
    let tcp_port = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
        .unwrap_or(config.port());
    let (trigger, _) = shutdown::channel();
    let started_unix = now_ms() / 1000;
    let backlog_size = config.get_u64("repl-backlog-size") as usize;
    let replicaof = config.get("replicaof").to_string();
    let appendonly = config.get_bool("appendonly");
    let db = Db::with_limits(EncodingLimits::from_config(&config));
    let cluster = if config.get_bool("cluster-enabled") {
        Some(crate::cluster::Cluster::init(&config, tcp_port).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let server = Arc::new(Server {
        db: Mutex::new(db),
        config: RwLock::new(config),
        clients: Clients::default(),
        stats: Stats::default(),
        command_stats: crate::cmd::CommandStats::default(),
        loading: AtomicBool::new(true),
        pause: Pause::default(),
        pubsub: Mutex::new(crate::pubsub::PubSub::default()),
        repl: Replication::new(random_hex40(), backlog_size),
        persistence: crate::persistence::Persistence::new(started_unix),
        aof: crate::aof::Aof::default(),
        cluster,
        run_id: random_hex40(),
        started: Instant::now(),
        tcp_port,
        config_file,
        ops_per_sec: AtomicU64::new(0),
        memory_peak: AtomicU64::new(0),
        active_expire: AtomicBool::new(true),
        last_replica_ping: Mutex::new(Instant::now()),
        shutdown: trigger,
    });

    // The admin endpoints answer from here on: `/ready` says "loading" until the dataset is
    // in.
    let admin = match admin_listener {
        Some(listener) => {
            info!(addr = %listener.local_addr()?, "admin listener ready: /live, /ready, /metrics");
            let state = Arc::new(crate::metrics::Admin::new(server.clone()));
            Some(tokio::spawn(lagwise_shared::admin::serve(
                listener,
                state,
                server.shutdown_listener(),
            )))
        }
        None => None,
    };

    // The dataset comes first: a file that cannot be loaded stops the start. With
    // `appendonly yes` the AOF is the record, as in Valkey; otherwise the RDB. Loaded on a
    // blocking thread, so that the admin endpoints answer (503, loading) meanwhile even with
    // `io-threads 1`: a Kubernetes liveness probe must not kill a node loading a big dataset.
    let (aof_file, history) = {
        let server = server.clone();
        let keep_expired = !replicaof.is_empty();
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut history = None;
            let aof_file = if appendonly {
                crate::aof::load_at_start(&server)?
            } else {
                None
            };
            if aof_file.is_none() {
                let config = server.config.read().clone();
                history = crate::persistence::load_at_start(
                    &config,
                    &mut server.lock_db(),
                    keep_expired,
                )?;
            }
            Ok((aof_file, history))
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?
    };
    if let Some(h) = history {
        // The file records where this dataset stands in its replication history: a
        // replica (or this node's replicas) can continue from there.
        server.repl.state.lock().replid = h.replid;
        server.repl.reset_backlog(h.offset);
    }
    server.loading.store(false, Ordering::Release);
    if let Some((host, port)) = replicaof.split_once(' ') {
        let port = port.parse().unwrap_or(6379);
        crate::cmd::start_replica(&server, &mut server.lock_db(), host.to_string(), port);
    }
    if appendonly {
        crate::aof::start(&server, aof_file);
    }
    if let Some(cluster) = server.cluster.as_ref() {
        // A replica in the saved configuration follows its primary again.
        let primary = {
            let st = cluster.state.lock();
            let me = st.me();
            me.primary_id
                .as_ref()
                .filter(|_| me.flags.replica)
                .and_then(|id| st.nodes.get(id))
                .map(|p| (p.ip.clone(), p.port))
        };
        let mut db = server.lock_db();
        if let Some((ip, port)) = primary.filter(|(ip, _)| !ip.is_empty()) {
            crate::cmd::start_replica(&server, &mut db, ip, port);
        }
        crate::cluster::publish_routing(&server, &mut db);
        drop(db);
        tokio::spawn(crate::cluster::bus::run(server.clone()));
    }

    let mut tasks = JoinSet::new();
    {
        let server = server.clone();
        tasks.spawn(async move {
            let reason = shutdown::signal().await;
            info!(signal = reason, "received signal, shutting down");
            crate::persistence::save_before_exit(&server);
            server.request_shutdown();
        });
    }
    tasks.spawn(cron(server.clone()));
    let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    for listener in listeners {
        info!(addr = %listener.local_addr()?, "ready to accept connections");
        tasks.spawn(accept_loop(server.clone(), listener, connections.clone()));
    }

    server.shutdown_listener().wait().await;
    info!("shutdown: no longer accepting connections, finishing replies in flight");
    tasks.abort_all();
    let drain = async {
        let mut conns = connections.lock().await;
        while conns.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        warn!("shutdown: connections still open after 10 s, closing them");
    }
    if let Some(admin) = admin {
        // It stops on the same signal; its connections are closed, not drained.
        if tokio::time::timeout(Duration::from_secs(5), admin)
            .await
            .is_err()
        {
            warn!("shutdown: the admin listener did not stop within 5 s");
        }
    }
    info!("shutdown complete, bye");
    Ok(())
}

/// Valkey's reply to a remote client when no password is set and no address is bound.
const PROTECTED_MODE_DENIED: &str = "DENIED Running in protected mode because protected mode is enabled, no bind address was specified and no authentication password is requested to clients. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers, you may: 1) Disable protected mode with CONFIG SET protected-mode no from the loopback interface, or set protected-mode no in the configuration file and restart the server. 2) Use the bind directive to list the addresses to listen on, or 3) Set a password with requirepass.";

async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
) {
    let mut shutdown = server.shutdown_listener();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => return,
        };
        let (stream, addr) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        Stats::add(&server.stats.connections_received, 1);
        // Read per connection so that CONFIG SET maxclients applies at once.
        let (maxclients, protected) = {
            let config = server.config.read();
            let protected = config.get_bool("protected-mode")
                && config.get("requirepass").is_empty()
                && config.get("bind") == "* -::*";
            (config.get_int("maxclients").max(1) as usize, protected)
        };
        if server.clients.count() >= maxclients {
            Stats::add(&server.stats.rejected_connections, 1);
            tokio::spawn(connection::refuse(
                stream,
                "ERR max number of clients reached",
            ));
            continue;
        }
        if protected && !addr.ip().is_loopback() {
            Stats::add(&server.stats.rejected_connections, 1);
            tokio::spawn(connection::refuse(stream, PROTECTED_MODE_DENIED));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let laddr = stream.local_addr().unwrap_or(addr);
        let handle = server.clients.register(addr, laddr);
        let server = server.clone();
        let mut conns = connections.lock().await;
        // A JoinSet keeps finished tasks until they are joined: reap them as we go, or a
        // server with many short connections would hold one entry per connection ever made.
        while conns.try_join_next().is_some() {}
        conns.spawn(connection::serve(server, stream, handle));
    }
}

/// Once a second: the periodic PING that keeps replicas' links alive and measures their
/// lag, and the count of good replicas for min-replicas-to-write.
fn replication_cron(server: &Server) {
    let now = Instant::now();
    let (period, min_replicas, max_lag) = {
        let c = server.config.read();
        (
            c.get_u64("repl-ping-replica-period").max(1),
            c.get_u64("min-replicas-to-write") as usize,
            c.get_u64("min-replicas-max-lag"),
        )
    };
    server.repl.refresh_good_replicas(min_replicas, max_lag);
    let mut last = server.last_replica_ping.lock();
    if now.duration_since(*last) < Duration::from_secs(period) {
        return;
    }
    *last = now;
    drop(last);
    if !server.repl.is_replica() && !server.repl.state.lock().replicas.is_empty() {
        server.lock_db().repl.raw(b"*1\r\n$4\r\nPING\r\n");
    }
}

/// The background cycle (`hz` times a second): active expiry, with a bounded amount of work
/// per run so the lock is never held long.
async fn cron(server: Arc<Server>) {
    let mut shutdown = server.shutdown_listener();
    let mut last_sample = (Instant::now(), 0u64);
    loop {
        let hz = server.config.read().get_int("hz").clamp(1, 500) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1000 / hz)) => {}
            _ = shutdown.wait() => return,
        }
        // Expiry stands still while clients are paused, so a paused primary's data does not
        // change under the replicas catching up.
        let elapsed = last_sample.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let total = server.stats.commands_processed.load(Ordering::Relaxed);
            let rate = total.saturating_sub(last_sample.1) as f64 / elapsed.as_secs_f64();
            server.ops_per_sec.store(rate as u64, Ordering::Relaxed);
            last_sample = (Instant::now(), total);
        }
        replication_cron(&server);
        crate::persistence::cron(&server);
        crate::aof::cron(&server);
        if server.pause.is_paused() || !server.active_expire.load(Ordering::Relaxed) {
            continue;
        }
        let mut db = server.lock_db();
        let now = now_ms();
        let start = Instant::now();
        // Up to ~1 ms of work per run; keep going while a large share of what was examined
        // had expired (Valkey's rule of thumb), up to 25 ms.
        loop {
            let removed = db.active_expire(now, 2000);
            if removed < 500 || start.elapsed() > Duration::from_millis(25) {
                break;
            }
        }
    }
}
