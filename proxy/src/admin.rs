//! Operating the proxy: what its admin endpoints report (readiness, metrics filled in from the
//! live snapshots) and reloading its configuration on SIGHUP or when the file changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use lagwise_shared::admin::{encode_registry, AdminState};
use lagwise_shared::shutdown::Shutdown;
use lagwise_shared::slot::SLOT_COUNT as SLOTS;

use crate::config::{Args, Config};
use crate::metrics;
use crate::route::Proxy;

/// The admin endpoints' view of the proxy.
pub struct Admin {
    pub proxy: Arc<Proxy>,
}

impl AdminState for Admin {
    fn ready(&self) -> Result<(), String> {
        let r = ready(&self.proxy);
        metrics::get().ready.set(r.is_ok() as i64);
        r
    }

    fn metrics(&self) -> Vec<u8> {
        let m = metrics::get();
        let _ = self.ready();
        let p = &self.proxy;
        if let Some(t) = p.topology.load() {
            m.slots_covered.set(t.slots_covered() as i64);
            m.shards.set(t.shards().len() as i64);
            m.topology_epoch.set(t.max_epoch() as i64);
        }
        m.client_connections
            .set(crate::session::CONNECTED.load(Ordering::Relaxed) as i64);
        m.backend_in_flight.reset();
        let mut connections = 0;
        for (addr, conns, in_flight) in p.pool.stats() {
            connections += conns;
            m.backend_in_flight
                .with_label_values(&[addr.as_str()])
                .set(in_flight as i64);
        }
        m.backend_connections.set(connections as i64);
        // Replicas come and go with the topology: the gauges are rebuilt from the snapshot.
        m.replica_lag_bytes.reset();
        m.replica_lag_seconds.reset();
        m.replica_eligible.reset();
        let now = Instant::now();
        for shard in p.fresh.load().shards.values() {
            for r in &shard.replicas {
                let labels = [shard.primary.as_str(), r.addr.as_str()];
                m.replica_lag_bytes
                    .with_label_values(&labels)
                    .set(r.lag_bytes.min(i64::MAX as u64) as i64);
                if let Some(lag) = r.lag(now) {
                    m.replica_lag_seconds
                        .with_label_values(&labels)
                        .set(lag.as_secs_f64());
                }
                m.replica_eligible
                    .with_label_values(&labels)
                    .set(r.eligible as i64);
            }
        }
        encode_registry(&m.registry)
    }
}

/// Ready: not draining, and a slot map that covers every slot from a refresh that succeeded.
pub fn ready(proxy: &Proxy) -> Result<(), String> {
    if proxy.draining.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    let Some(t) = proxy.topology.load() else {
        return Err("the slot map is not known yet".into());
    };
    let covered = t.slots_covered();
    if covered < SLOTS {
        return Err(format!("{covered} of {SLOTS} slots have a primary"));
    }
    if !proxy.topology.last_refresh_ok() {
        return Err("the latest topology refresh failed: no node answered".into());
    }
    Ok(())
}

/// A `PROXY RELOAD`: answered with what the reload did, or why it was refused.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

/// Reloads the configuration on SIGHUP, on `PROXY RELOAD` and when the `--config` file's
/// contents change, until shutdown. A new configuration replaces the live settings whole;
/// one that does not load is refused and the old one stays.
pub async fn reloader(
    args: Args,
    started: Config,
    proxy: Arc<Proxy>,
    mut requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    mut shutdown: Shutdown,
) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let path = args.config.clone();
    let read = |p: &Option<std::path::PathBuf>| p.as_ref().and_then(|p| std::fs::read(p).ok());
    let mut last_text = read(&path);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut answer: Option<ReloadRequest> = None;
        let why = tokio::select! {
            _ = async {
                #[cfg(unix)]
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
                #[cfg(not(unix))]
                std::future::pending::<()>().await
            } => "SIGHUP",
            Some(reply) = requests.recv() => {
                answer = Some(reply);
                "PROXY RELOAD"
            }
            _ = poll.tick(), if path.is_some() => {
                let text = read(&path);
                if text == last_text || text.is_none() {
                    continue;
                }
                last_text = text;
                "the file changed"
            }
            _ = shutdown.wait() => return,
        };
        if answer.is_some() || why == "SIGHUP" {
            // What this reload reads is not a change for the watcher to apply again.
            last_text = read(&path);
        }
        let result = reload(&args, &started, &proxy, why);
        if let Some(a) = answer {
            let _ = a.send(result);
        }
    }
}

/// Loads the configuration again and swaps in its live settings. `started`: the settings the
/// proxy started with, which stay in force for everything a reload cannot change.
fn reload(args: &Args, started: &Config, proxy: &Proxy, why: &str) -> Result<String, String> {
    if args.config.is_none() {
        info!(
            trigger = why,
            "config reload: there is no --config file to read"
        );
    }
    let new = match Config::load(args.clone()) {
        Ok(new) => new,
        Err(e) => {
            metrics::get().reloads_error.inc();
            warn!(trigger = why, error = %e, "config reload refused; the running settings stay");
            return Err(e.to_string());
        }
    };
    let ignored = started.needs_restart(&new);
    if !ignored.is_empty() {
        warn!(
            settings = ?ignored,
            "config reload: these settings take effect only at a restart; kept as they were"
        );
    }
    let live = new.live;
    proxy.fresh.set_defaults(live.read);
    proxy.fresh.set_slo(live.read_slo);
    metrics::get().reloads_ok.inc();
    info!(
        trigger = why,
        read_policy = live.read.policy.as_str(),
        max_lag_ms = live.read.bounds.max_lag.as_millis() as u64,
        max_lag_bytes = live.read.bounds.max_lag_bytes,
        max_clients = live.max_clients,
        retry_deadline_ms = live.retry_deadline.as_millis() as u64,
        "config reloaded"
    );
    proxy.live.store(Arc::new(live));
    Ok(if ignored.is_empty() {
        "reloaded".to_string()
    } else {
        format!("reloaded; needs a restart: {}", ignored.join(", "))
    })
}
