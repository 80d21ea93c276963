//! lagwise-proxy: one endpoint in front of a Valkey/Redis cluster.
//!
//! Layout:
//! - `config`: flags, environment and TOML file, checked once.
//! - `topology`: learning and refreshing the slot map (ArcSwap snapshot).
//! - `backend`: pipelined, bounded connections to the nodes, and their pool.
//! - `freshness`: the replication monitor (offsets → lag in bytes and time, eligibility),
//!   published as an ArcSwap snapshot; read policies and the choice of a replica.
//! - `latency`: per-backend peak-EWMA reply times, power of two choices, the read SLO window.
//! - `route`: forwarding to a slot's owner with redirects followed; fan-out; replica reads.
//! - `session`: one client: planning each request, replies in request order.
//! - `workers`: the client threads (one single-threaded runtime each); the main thread runs
//!   the control tasks (accept, topology, replication monitor, admin, reloads).
//! - `reply`: framing, encoding, redirect parsing.
//! - `demo`: `--demo`, a local lagwise-node cluster started and served in one command.
//! - `metrics`: the Prometheus metrics; `admin`: readiness, scrapes and config reloads.
//! - `auth`: the proxy's own client users; `commands`: commands learned from the backends.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod admin;
mod auth;
mod backend;
mod batch;
mod chain;
mod commands;
mod config;
mod demo;
mod freshness;
mod latency;
mod metrics;
mod reply;
mod route;
mod session;
mod subscription;
mod topology;
mod workers;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{info, warn};

use lagwise_shared::shutdown;

/// jemalloc: a request's small allocations (arguments, futures, replies) are cheaper than with
/// glibc malloc, which took a fifth of the proxy's time with pipelined clients.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = config::Args::parse();
    let config = match config::Config::load(args.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lagwise-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = lagwise_shared::telemetry::init_logging_as(&config.log_level, None, config.log_format);
    // The control thread's runtime; clients are served on threads of their own (`workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lagwise-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lagwise-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: config::Args, mut config: config::Config) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("listen {}: {e}", config.listen)))?;
    let admin_listener = match config.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("admin {addr}: {e}")))?,
        ),
        None => None,
    };
    let demo = match config.demo.clone() {
        Some(dir) => {
            let cluster = demo::DemoCluster::start(dir)
                .await
                .map_err(std::io::Error::other)?;
            config.seeds = cluster.seeds();
            println!(
                "lagwise demo: a 3-primary, 3-replica lagwise-node cluster is up (data and logs in {}).\nlagwise demo: connect to the proxy at {} (e.g. redis-cli -p {}); Ctrl-C stops everything.",
                cluster.dir.display(),
                listener.local_addr()?,
                listener.local_addr()?.port()
            );
            Some(cluster)
        }
        None => None,
    };
    let (trigger, shutdown_rx) = shutdown::channel();
    let pool = Arc::new(backend::Pool::new(
        backend::BackendSettings {
            connect_timeout: config.connect_timeout,
            max_queued: config.max_queued_per_connection,
            max_reply_bytes: 1024 * 1024 * 1024,
            password: config.backend_password.clone(),
            username: config.backend_username.clone(),
        },
        config.connections_per_node,
        config.threads,
    ));
    let topology = Arc::new(topology::TopologyHandle::new(config.seeds.clone()));
    let refresher = tokio::spawn(topology::refresher(
        topology.clone(),
        pool.clone(),
        config.topology_refresh,
        shutdown_rx.clone(),
    ));
    let fresh = Arc::new(freshness::Freshness::new(
        freshness::Settings {
            poll_interval: config.replication_poll_interval,
            zone: config.zone.as_deref().map(Arc::from),
            node_zones: config
                .node_zones
                .iter()
                .map(|(a, z)| (a.clone(), Arc::from(z.as_str())))
                .collect(),
            auth: config
                .backend_password
                .clone()
                .map(|p| (config.backend_username.clone(), p)),
        },
        config.live.read,
    ));
    fresh.set_slo(config.live.read_slo);
    if config.replication_poll_interval * 2 > config.live.read.bounds.max_lag {
        // Measured lag includes up to one poll interval: near the end of each interval even a
        // fully caught-up replica looks as old as the interval.
        warn!(
            poll_ms = config.replication_poll_interval.as_millis() as u64,
            max_lag_ms = config.live.read.bounds.max_lag.as_millis() as u64,
            "the replication poll interval is over half the lag bound: replicas will be \
             unusable for part of every interval (lower --replication-poll-interval-ms)"
        );
    }
    let monitor = tokio::spawn(freshness::monitor(
        fresh.clone(),
        topology.clone(),
        shutdown_rx.clone(),
    ));
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let proxy = Arc::new(route::Proxy {
        fresh,
        topology,
        pool,
        live: arc_swap::ArcSwap::from_pointee(config.live.clone()),
        draining: std::sync::atomic::AtomicBool::new(false),
        reload: reload_tx,
        commands: Default::default(),
        hedge_budget: Default::default(),
        backend_auth: config
            .backend_password
            .clone()
            .map(|p| (config.backend_username.clone(), p)),
    });
    // The admin endpoints outlive the client listener: /ready says 503 while draining.
    let (admin_trigger, admin_shutdown) = shutdown::channel();
    let admin = admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            info!(addr = %a, "admin endpoints (/live, /ready, /metrics) listening");
        }
        tokio::spawn(lagwise_shared::admin::serve(
            l,
            Arc::new(admin::Admin {
                proxy: proxy.clone(),
            }),
            admin_shutdown.clone(),
        ))
    });
    let reloader = tokio::spawn(admin::reloader(
        args,
        config.clone(),
        proxy.clone(),
        reload_rx,
        shutdown_rx.clone(),
    ));
    info!(
        addr = %listener.local_addr()?,
        seeds = ?config.seeds,
        read_policy = config.live.read.policy.as_str(),
        max_lag_ms = config.live.read.bounds.max_lag.as_millis() as u64,
        "lagwise-proxy listening"
    );

    let mut workers =
        workers::Workers::start(config.threads, &proxy, &shutdown_rx, config.shutdown_grace)?;
    let mut accept_shutdown = shutdown_rx.clone();
    let signal = shutdown::signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let max_clients = proxy.live.load().max_clients;
                    if session::CONNECTED.load(std::sync::atomic::Ordering::Relaxed) as usize >= max_clients {
                        metrics::get().clients_rejected.inc();
                        metrics::get().error(metrics::ErrorKind::Refused);
                        warn!(client = %addr, "max clients reached, refusing");
                        tokio::spawn(async move {
                            use tokio::io::AsyncWriteExt;
                            let mut stream = stream;
                            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                        });
                        continue;
                    }
                    metrics::get().clients_accepted.inc();
                    session::CONNECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    workers.hand(stream);
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            },
            name = &mut signal => {
                info!(signal = name, "shutting down: no new clients, finishing requests in flight");
                break;
            }
            _ = accept_shutdown.wait() => break,
        }
    }
    // Not ready from now on; the listener closes, so new clients are refused at once.
    proxy
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    drop(listener);
    trigger.fire();
    workers
        .finish(config.shutdown_grace + std::time::Duration::from_secs(1))
        .await;
    refresher.abort();
    monitor.abort();
    reloader.abort();
    admin_trigger.fire();
    if let Some(a) = admin {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), a).await;
    }
    if let Some(cluster) = demo {
        cluster.stop().await;
    }
    info!("bye");
    Ok(())
}
