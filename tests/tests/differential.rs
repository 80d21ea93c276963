#![allow(clippy::unwrap_used)]
//! Differential test: thousands of random (valid and invalid-ish) string, key and server
//! commands sent to both redis-server and lagwise-node over raw RESP2, then RESP3, with the
//! raw replies compared. See `lagwise_tests::differential` for the generator and the rules.
//!
//! Environment:
//! - `LAGWISE_DIFF_COMMANDS`: family draws per phase (default 5000).
//! - `LAGWISE_DIFF_SEED`: fix the seed (otherwise random, printed at the start and on failure).
//! - `LAGWISE_DIFF_SELF=1`: compare redis-server with a second redis-server (checks the
//!   harness: must report 0 mismatches).
//! - `LAGWISE_DIFF_KEEP_GOING=1`: don't stop at the first mismatch; report them all, grouped
//!   by command.

use lagwise_tests::differential::{self, Config};
use lagwise_tests::ServerProcess;

#[test]
fn differential_against_redis() {
    let cfg = Config::from_env();
    let subject_name = if cfg.self_check { "redis#2" } else { "lagwise" };
    println!(
        "differential: seed {} ({} draws per phase, subject {subject_name}); reproduce with {}",
        cfg.seed,
        cfg.commands,
        cfg.rerun_hint()
    );

    let reference = ServerProcess::redis(&["--enable-debug-command", "yes"]);
    let subject = if cfg.self_check {
        ServerProcess::redis(&["--enable-debug-command", "yes"])
    } else {
        ServerProcess::lagwise(&[])
    };

    let (runner, result) =
        differential::run(&cfg, subject_name, || (reference.raw(), subject.raw()));

    if let Err(report) = result {
        panic!("{report}\n{}", runner.summary());
    }
    if !runner.mismatches.is_empty() {
        panic!(
            "{}\n{}\nreproduce: {}",
            runner.grouped_report(),
            runner.summary(),
            cfg.rerun_hint()
        );
    }
    println!("{}", runner.summary());
}
