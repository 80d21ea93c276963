//! Per-backend latency: a peak-EWMA estimate of reply times and a count of requests in flight,
//! for choosing among replicas by power of two choices.
//!
//! Peak-EWMA (as in Finagle and linkerd): a reply slower than the estimate replaces it at once
//! (a node that turns slow is avoided from its first slow reply), a faster one pulls it down
//! with a weight that depends on the time since the last sample (so the estimate forgets at
//! the same speed whatever the request rate). The cost of a node is the estimate times
//! (requests in flight + 1): a node with a queue costs more before its replies show it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How fast the estimate forgets a peak.
const DECAY: Duration = Duration::from_secs(1);
/// The estimate of a node never measured: modest, so that it gets tried.
const INITIAL: Duration = Duration::from_millis(1);

/// One backend's latency and counters. Shared by every snapshot that lists the node.
pub struct Backend {
    /// (estimate in nanoseconds, time of the last sample). A parking_lot mutex: held for a few
    /// arithmetic operations, never across an `.await`.
    estimate: Mutex<(f64, Instant)>,
    in_flight: AtomicUsize,
    /// Reads this node answered (for PROXY INFO).
    pub reads: AtomicU64,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            estimate: Mutex::new((INITIAL.as_nanos() as f64, Instant::now())),
            in_flight: AtomicUsize::new(0),
            reads: AtomicU64::new(0),
        }
    }
}

impl Backend {
    /// The current estimate of a reply time.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate.lock().0 as u64)
    }

    /// Estimate × (in flight + 1): what power of two choices compares.
    pub fn cost(&self) -> f64 {
        let est = self.estimate.lock().0;
        est * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// Records one reply time.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        let mut e = self.estimate.lock();
        if sample > e.0 {
            e.0 = sample;
        } else {
            let elapsed = now.saturating_duration_since(e.1).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            e.0 = e.0 * w + sample * (1.0 - w);
        }
        e.1 = now;
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: self,
            started: Instant::now(),
        }
    }
}

/// A request in flight on a backend; `finish` records its reply time.
pub struct InFlight<'a> {
    backend: &'a Backend,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the time since `start` as a reply time.
    pub fn finish(self) {
        self.backend.observe(self.started.elapsed());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct candidates at random, the cheaper one wins. `None` for
/// no candidates.
pub fn p2c<T>(items: &[T], cost: impl Fn(&T) -> f64) -> Option<usize> {
    match items.len() {
        0 => None,
        1 => Some(0),
        n => {
            use rand::Rng;
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Some(if cost(&items[b]) < cost(&items[a]) {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_is_taken_at_once_and_forgotten_slowly() {
        let b = Backend::default();
        b.observe(Duration::from_millis(50));
        assert_eq!(b.estimate(), Duration::from_millis(50));
        // A fast reply right after the peak barely moves it.
        b.observe(Duration::from_micros(100));
        assert!(
            b.estimate() > Duration::from_millis(45),
            "{:?}",
            b.estimate()
        );
    }

    #[test]
    fn in_flight_requests_raise_the_cost() {
        let b = Backend::default();
        let idle = b.cost();
        let g = b.start();
        assert!(b.cost() > idle * 1.5);
        g.finish();
        assert!(b.cost() <= idle * 1.01 || b.estimate() < INITIAL);
    }

    #[test]
    fn p2c_prefers_the_cheaper_of_two() {
        let costs = [5.0, 1.0];
        for _ in 0..20 {
            assert_eq!(p2c(&costs, |c| *c), Some(1));
        }
        assert_eq!(p2c::<f64>(&[], |c| *c), None);
        assert_eq!(p2c(&[3.0], |c| *c), Some(0));
        // Among many, the most expensive is never chosen.
        let many = [1.0, 2.0, 3.0, 4.0];
        for _ in 0..50 {
            assert_ne!(p2c(&many, |c| *c), Some(3));
        }
    }
}
