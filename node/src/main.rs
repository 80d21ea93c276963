//! lagwise-node: a Valkey-compatible storage node.
//!
//! Layout:
//! - `config`: Valkey-style directives from a file and the command line.
//! - `server`: shared state, listeners, the background cycle.
//! - `connection`: one client: framing, batched execution, replies.
//! - `cmd`: dispatch and the command families (`cmd/strings.rs`, `cmd/keys.rs`, ...).
//! - `db`: the keyspace, partitioned by hash slot, with expiry.
//! - `value`: the value types.
//! - `rdb`: the RDB value encoding (DUMP/RESTORE, snapshots).
//! - `clients`: the registry behind CLIENT LIST/KILL.
//! - `info`: the INFO text.
//! - `metrics`: the admin endpoints' view of the node (`/ready`, Prometheus `/metrics`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod aof;
mod blocking;
mod clients;
mod cluster;
mod cmd;
mod config;
mod connection;
mod db;
mod info;
mod metrics;
mod persistence;
mod propagate;
mod pubsub;
mod rdb;
mod replication;
mod server;
mod snapshot;
mod value;

use std::process::ExitCode;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v" || a == "--version") {
        println!(
            "lagwise-node v={} (compatible with {})",
            env!("CARGO_PKG_VERSION"),
            cmd::COMPAT_VERSION
        );
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("Usage: lagwise-node [/path/to/config] [--directive value ...]\n\nDirectives are those of valkey-server (port, bind, dir, save, requirepass, cluster-enabled, replicaof, ...).");
        return ExitCode::SUCCESS;
    }
    let config = match config::Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let level = match config.get("loglevel") {
        "debug" => "debug",
        "verbose" => "info",
        "warning" => "warn",
        "nothing" => "off",
        _ => "info",
    };
    let logfile = Some(config.get("logfile"))
        .filter(|f| !f.is_empty())
        .map(std::path::PathBuf::from);
    if let Err(e) = lagwise_shared::telemetry::init_logging(level, logfile.as_deref()) {
        eprintln!("cannot open logfile: {e}");
        return ExitCode::FAILURE;
    }
    let config_file = args.first().filter(|a| !a.starts_with("--")).map(|f| {
        std::fs::canonicalize(f)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| f.clone())
    });
    if let Err(e) = std::env::set_current_dir(config.get("dir")) {
        eprintln!("Can't chdir to '{}': {e}", config.get("dir"));
        return ExitCode::FAILURE;
    }
    // `io-threads` sets how many threads serve connections, as in Valkey (default 1). One
    // thread is Valkey's own model: no cross-thread wake-ups, no contention on the keyspace
    // lock. More threads parallelise reading, parsing and writing; commands still run one at a
    // time under the lock.
    let threads = config.get_int("io-threads").max(1) as usize;
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config, config_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
