//! INFO: the server's state as `field:value` lines in `# Section` groups, with Valkey's field
//! names so that tools and dashboards that read Valkey read us too. Every line ends in CRLF.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::db::Db;
use crate::replication::LinkState;
use crate::server::{now_ms, Server};

/// Every section, in the order Redis 7.0 prints them (it also has modules, errorstats and
/// latencystats, which we do not).
const ALL_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "commandstats",
    "cluster",
    "keyspace",
];

/// The sections INFO with no argument (or `default`) leaves out.
const NOT_DEFAULT: &[&str] = &["commandstats"];

/// Bytes allocated by this process, as jemalloc counts them (Valkey's `used_memory`).
pub fn used_memory() -> u64 {
    use tikv_jemalloc_ctl::{epoch, stats};
    let _ = epoch::advance();
    stats::allocated::read().map(|n| n as u64).unwrap_or(0)
}

/// Resident set size from /proc (0 where there is no /proc).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// User and system CPU seconds from /proc/self/stat.
fn cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (ticks(11), ticks(12))
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b < 1024.0 {
        format!("{bytes}B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}M", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2}G", b / (1024.0 * 1024.0 * 1024.0))
    }
}

/// Renders the requested sections (lowercase names), in Redis's order: none or "default"
/// for the default set, "all" or "everything" for all of them, and any section by name
/// (several words add up, as in Redis 7.0).
pub fn render(server: &Server, db: &Db, requested: &[String]) -> String {
    let asked = |name: &str| requested.iter().any(|r| r == name);
    let all = asked("all") || asked("everything");
    let default = requested.is_empty() || asked("default");
    let wanted: Vec<&str> = ALL_SECTIONS
        .iter()
        .copied()
        .filter(|s| all || asked(s) || (default && !NOT_DEFAULT.contains(s)))
        .collect();
    let mut out = String::with_capacity(4096);
    for (i, section) in wanted.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        match *section {
            "server" => server_section(server, &mut out),
            "clients" => clients_section(server, db, &mut out),
            "memory" => memory_section(server, &mut out),
            "persistence" => persistence_section(server, db, &mut out),
            "stats" => stats_section(server, db, &mut out),
            "replication" => replication_section(server, &mut out),
            "cpu" => cpu_section(&mut out),
            "commandstats" => commandstats_section(server, &mut out),
            "cluster" => cluster_section(server, &mut out),
            "keyspace" => keyspace_section(db, &mut out),
            _ => {}
        }
    }
    out
}

macro_rules! field {
    ($out:expr, $name:expr, $value:expr) => {
        let _ = write!($out, "{}:{}\r\n", $name, $value);
    };
}

fn server_section(server: &Server, out: &mut String) {
    let config = server.config.read();
    let uptime = server.started.elapsed().as_secs();
    out.push_str("# Server\r\n");
    field!(out, "redis_version", crate::cmd::COMPAT_VERSION);
    field!(out, "lagwise_version", env!("CARGO_PKG_VERSION"));
    field!(out, "redis_git_sha1", "00000000");
    field!(out, "redis_git_dirty", 0);
    field!(out, "redis_build_id", "0");
    field!(
        out,
        "redis_mode",
        if config.get_bool("cluster-enabled") {
            "cluster"
        } else {
            "standalone"
        }
    );
    field!(
        out,
        "os",
        format!("{} {}", std::env::consts::OS, std::env::consts::ARCH)
    );
    field!(out, "arch_bits", 64);
    field!(out, "multiplexing_api", "epoll");
    field!(out, "process_id", std::process::id());
    field!(out, "process_supervised", "no");
    field!(out, "run_id", server.run_id);
    field!(out, "tcp_port", server.tcp_port);
    field!(out, "server_time_usec", now_ms() * 1000);
    field!(out, "uptime_in_seconds", uptime);
    field!(out, "uptime_in_days", uptime / 86400);
    field!(out, "hz", config.get("hz"));
    field!(out, "configured_hz", config.get("hz"));
    field!(
        out,
        "executable",
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    field!(
        out,
        "config_file",
        server.config_file.as_deref().unwrap_or("")
    );
    field!(out, "io_threads_active", 0);
    field!(out, "availability_zone", config.get("availability-zone"));
}

fn clients_section(server: &Server, db: &Db, out: &mut String) {
    let config = server.config.read();
    out.push_str("# Clients\r\n");
    field!(out, "connected_clients", server.clients.count());
    field!(out, "cluster_connections", 0);
    field!(out, "maxclients", config.get("maxclients"));
    field!(out, "blocked_clients", db.blocked.len());
    field!(out, "tracking_clients", 0);
    field!(out, "pubsub_clients", 0);
    field!(out, "clients_in_timeout_table", 0);
}

fn memory_section(server: &Server, out: &mut String) {
    let used = used_memory();
    let rss = rss_bytes();
    let peak = server
        .memory_peak
        .fetch_max(used, Ordering::Relaxed)
        .max(used);
    let config = server.config.read();
    let maxmemory = config.get_u64("maxmemory");
    out.push_str("# Memory\r\n");
    field!(out, "used_memory", used);
    field!(out, "used_memory_human", human(used));
    field!(out, "used_memory_rss", rss);
    field!(out, "used_memory_rss_human", human(rss));
    field!(out, "used_memory_peak", peak);
    field!(out, "used_memory_peak_human", human(peak));
    field!(out, "maxmemory", maxmemory);
    field!(out, "maxmemory_human", human(maxmemory));
    field!(out, "maxmemory_policy", config.get("maxmemory-policy"));
    field!(
        out,
        "mem_fragmentation_ratio",
        format!(
            "{:.2}",
            if used > 0 {
                rss as f64 / used as f64
            } else {
                0.0
            }
        )
    );
    field!(out, "mem_allocator", "jemalloc");
}

fn persistence_section(server: &Server, db: &Db, out: &mut String) {
    let config = server.config.read();
    let p = server.persistence.state.lock();
    out.push_str("# Persistence\r\n");
    field!(out, "loading", 0);
    field!(out, "async_loading", 0);
    field!(out, "current_cow_peak", 0);
    field!(out, "current_cow_size", 0);
    field!(out, "current_fork_perc", "0.00");
    field!(out, "current_save_keys_processed", 0);
    field!(out, "current_save_keys_total", 0);
    field!(out, "rdb_changes_since_last_save", db.dirty);
    field!(out, "rdb_bgsave_in_progress", p.bgsave_in_progress as u8);
    field!(out, "rdb_last_save_time", p.last_save_unix);
    field!(
        out,
        "rdb_last_bgsave_status",
        if p.last_bgsave_ok { "ok" } else { "err" }
    );
    field!(out, "rdb_last_bgsave_time_sec", p.last_bgsave_secs);
    field!(
        out,
        "rdb_current_bgsave_time_sec",
        p.bgsave_started
            .map_or(-1, |t| t.elapsed().as_secs() as i64)
    );
    field!(out, "rdb_saves", p.saves);
    field!(
        out,
        "aof_enabled",
        if config.get_bool("appendonly") { 1 } else { 0 }
    );
    let a = server.aof.state.lock();
    field!(out, "aof_rewrite_in_progress", a.rewrite_in_progress as u8);
    field!(out, "aof_rewrite_scheduled", a.rewrite_scheduled as u8);
    field!(out, "aof_last_rewrite_time_sec", a.last_rewrite_secs);
    field!(
        out,
        "aof_current_rewrite_time_sec",
        a.rewrite_started
            .map_or(-1, |t| t.elapsed().as_secs() as i64)
    );
    field!(
        out,
        "aof_last_bgrewrite_status",
        if a.last_rewrite_ok { "ok" } else { "err" }
    );
    field!(out, "aof_last_write_status", "ok");
    if a.enabled {
        field!(out, "aof_current_size", a.current_size);
        field!(out, "aof_base_size", a.base_size);
    }
}

fn stats_section(server: &Server, db: &Db, out: &mut String) {
    let s = &server.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    out.push_str("# Stats\r\n");
    field!(
        out,
        "total_connections_received",
        load(&s.connections_received)
    );
    field!(out, "total_commands_processed", load(&s.commands_processed));
    field!(out, "instantaneous_ops_per_sec", load(&server.ops_per_sec));
    field!(out, "total_net_input_bytes", load(&s.net_input_bytes));
    field!(out, "total_net_output_bytes", load(&s.net_output_bytes));
    field!(out, "rejected_connections", load(&s.rejected_connections));
    {
        let r = server.repl.state.lock();
        field!(out, "sync_full", r.sync_full);
        field!(out, "sync_partial_ok", r.sync_partial_ok);
        field!(out, "sync_partial_err", r.sync_partial_err);
    }
    field!(out, "expired_keys", db.stats.expired_keys);
    field!(out, "evicted_keys", 0);
    field!(out, "keyspace_hits", db.stats.keyspace_hits);
    field!(out, "keyspace_misses", db.stats.keyspace_misses);
    let (channels, patterns) = {
        let registry = server.pubsub.lock();
        (registry.channel_count(), registry.pattern_count())
    };
    field!(out, "pubsub_channels", channels);
    field!(out, "pubsub_patterns", patterns);
    field!(
        out,
        "total_error_replies",
        load(&s.unexpected_error_replies)
    );
}

fn replication_section(server: &Server, out: &mut String) {
    let (read_only, priority, announced) = {
        let c = server.config.read();
        (
            c.get_bool("replica-read-only"),
            c.get_int("replica-priority"),
            c.get_bool("replica-announced"),
        )
    };
    let r = server.repl.state.lock();
    let (end, start, histlen, size) = {
        let b = server.repl.backlog.lock();
        (b.end(), b.start(), b.histlen(), b.size_limit())
    };
    let active = server.repl.backlog_active();
    out.push_str("# Replication\r\n");
    match &r.primary {
        None => {
            field!(out, "role", "master");
        }
        Some(p) => {
            field!(out, "role", "slave");
            field!(out, "master_host", p.host);
            field!(out, "master_port", p.port);
            let up = p.state == LinkState::Up;
            field!(out, "master_link_status", if up { "up" } else { "down" });
            field!(
                out,
                "master_last_io_seconds_ago",
                if up || p.state == LinkState::Transfer {
                    p.last_io.elapsed().as_secs() as i64
                } else {
                    -1
                }
            );
            let syncing = p.state == LinkState::Transfer;
            field!(out, "master_sync_in_progress", syncing as u8);
            field!(out, "slave_read_repl_offset", p.read_offset.max(end));
            field!(out, "slave_repl_offset", end);
            if syncing {
                field!(out, "master_sync_total_bytes", p.sync_bytes_total);
                field!(out, "master_sync_read_bytes", p.sync_bytes_read);
                field!(out, "master_sync_left_bytes", -1);
                field!(out, "master_sync_perc", "0.00");
                field!(
                    out,
                    "master_sync_last_io_seconds_ago",
                    p.last_io.elapsed().as_secs()
                );
            }
            if !up {
                field!(
                    out,
                    "master_link_down_since_seconds",
                    p.down_since.elapsed().as_secs()
                );
            }
            field!(out, "slave_priority", priority);
            field!(out, "slave_read_only", read_only as u8);
            field!(out, "replica_announced", announced as u8);
        }
    }
    field!(out, "connected_slaves", r.replicas.len());
    for (i, rep) in r.replicas.iter().enumerate() {
        out.push_str(&format!(
            "slave{i}:ip={},port={},state={},offset={},lag={}\r\n",
            rep.ip,
            rep.listening_port,
            rep.state,
            rep.ack_offset,
            rep.last_ack.elapsed().as_secs()
        ));
    }
    field!(out, "master_failover_state", "no-failover");
    field!(out, "master_replid", r.replid);
    field!(out, "master_replid2", r.replid2);
    field!(out, "master_repl_offset", end);
    field!(out, "second_repl_offset", r.second_offset);
    field!(out, "repl_backlog_active", active as u8);
    field!(out, "repl_backlog_size", size);
    field!(
        out,
        "repl_backlog_first_byte_offset",
        if active { start + 1 } else { 0 }
    );
    field!(
        out,
        "repl_backlog_histlen",
        if active { histlen } else { 0 }
    );
}

fn cpu_section(out: &mut String) {
    let (user, sys) = cpu_seconds();
    out.push_str("# CPU\r\n");
    field!(out, "used_cpu_sys", format!("{sys:.6}"));
    field!(out, "used_cpu_user", format!("{user:.6}"));
}

/// `cmdstat_<name>:calls=..,usec=..,usec_per_call=..,rejected_calls=..,failed_calls=..` for
/// every command called or rejected since the start (or CONFIG RESETSTAT), subcommands as
/// `client|setname`, as Redis 7.0 prints them; in name order, where Redis's follows its
/// hash table. The time is the command's dispatch and handler (see `cmd::CommandClock`).
fn commandstats_section(server: &Server, out: &mut String) {
    out.push_str("# Commandstats\r\n");
    for c in server.command_stats.snapshot() {
        let usec = c.nanos / 1000;
        // Redis divides as C floats (`(float)usec / calls`): so do we, for the same digits.
        let per_call = if c.calls == 0 {
            0.0
        } else {
            f64::from(usec as f32 / c.calls as f32)
        };
        let _ = write!(
            out,
            "cmdstat_{}:calls={},usec={usec},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
            c.name, c.calls, c.rejected, c.failed
        );
    }
}

fn cluster_section(server: &Server, out: &mut String) {
    out.push_str("# Cluster\r\n");
    field!(
        out,
        "cluster_enabled",
        if server.config.read().get_bool("cluster-enabled") {
            1
        } else {
            0
        }
    );
}

fn keyspace_section(db: &Db, out: &mut String) {
    out.push_str("# Keyspace\r\n");
    if !db.is_empty() {
        let _ = write!(
            out,
            "db0:keys={},expires={},avg_ttl=0\r\n",
            db.len(),
            db.volatile_len()
        );
    }
}
