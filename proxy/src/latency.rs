//! Per-backend latency: a peak-EWMA estimate of reply times and a count of requests in flight,
//! for choosing among replicas by power of two choices; and a sliding window of reply times
//! (hdrhistogram, one per second, the last `WINDOW_SECS`) whose p99 is held against the read
//! SLO. A backend whose windowed p99 breaks the SLO is out of rotation until a window
//! within it: the replication monitor's polls and a small share of reads keep measuring it.
//!
//! Peak-EWMA (as in Finagle and linkerd): a reply slower than the estimate replaces it at once
//! (a node that turns slow is avoided from its first slow reply), a faster one pulls it down
//! with a weight that depends on the time since the last sample (so the estimate forgets at
//! the same speed whatever the request rate). The cost of a node is the estimate times
//! (requests in flight + 1): a node with a queue costs more before its replies show it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use lagwise_shared::topology::NodeAddr;

/// How fast the estimate forgets a peak.
const DECAY: Duration = Duration::from_secs(1);
/// The estimate of a node never measured: modest, so that it gets tried.
const INITIAL: Duration = Duration::from_millis(1);

/// At most one reply time per this interval goes into a backend's window and estimate (but
/// every reply slower than the estimate goes into the estimate): a thousand a second is
/// plenty for a p99 over `WINDOW_SECS` and for an estimate that forgets in `DECAY`, and the
/// replies in between cost no lock.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// Seconds of reply times the SLO is judged on.
const WINDOW_SECS: usize = 3;
/// Fewer samples than this in the window: no verdict (the previous one stays).
const MIN_SAMPLES: u64 = 20;

/// Reply times of the last `WINDOW_SECS` seconds, one histogram per second, in microseconds.
struct Window {
    seconds: Vec<hdrhistogram::Histogram<u64>>,
    /// Start of the current second and its index.
    current_start: Instant,
    current: usize,
}

impl Window {
    fn new() -> Window {
        Window {
            seconds: (0..WINDOW_SECS)
                .map(|_| {
                    // 1 µs to 60 s at 2 significant digits: a few KB each.
                    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                        .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).expect("valid sigfig"))
                })
                .collect(),
            current_start: Instant::now(),
            current: 0,
        }
    }

    /// Moves to the second `now` is in; true when at least one second was completed.
    fn rotate(&mut self, now: Instant) -> bool {
        let passed = now.saturating_duration_since(self.current_start).as_secs() as usize;
        if passed == 0 {
            return false;
        }
        for _ in 0..passed.min(WINDOW_SECS) {
            self.current = (self.current + 1) % WINDOW_SECS;
            self.seconds[self.current].reset();
        }
        self.current_start += Duration::from_secs(passed as u64);
        true
    }

    /// (p95, p99) over the completed seconds (not the one being filled), with the sample
    /// count.
    fn quantiles(&self) -> (u64, u64, u64) {
        let mut merged = self.seconds[(self.current + 1) % WINDOW_SECS].clone();
        for i in 2..WINDOW_SECS {
            let _ = merged.add(&self.seconds[(self.current + i) % WINDOW_SECS]);
        }
        (
            merged.value_at_quantile(0.95),
            merged.value_at_quantile(0.99),
            merged.len(),
        )
    }
}

/// One backend's latency and counters, and its identity: there is one per address for the
/// proxy's life (see `Freshness::backend`), shared by every snapshot that lists the node.
pub struct Backend {
    /// (estimate in nanoseconds, time of the last sample). A parking_lot mutex: held for a few
    /// arithmetic operations, never across an `.await`.
    estimate: Mutex<(f64, Instant)>,
    /// The estimate, in whole nanoseconds, for a reply to compare itself with unlocked.
    estimate_ns: AtomicU64,
    /// When the next reply time is to be sampled, in nanoseconds since `epoch()`.
    next_sample_ns: AtomicU64,
    in_flight: AtomicUsize,
    /// Reads this node answered (for PROXY INFO).
    pub reads: AtomicU64,
    window: Mutex<Window>,
    /// Within the read SLO by the last verdict (true until judged otherwise).
    slo_ok: AtomicBool,
    /// p99 of the last completed window, in µs (for PROXY INFO and metrics).
    last_p99_us: AtomicU64,
    last_p95_us: AtomicU64,
    /// The SLO (p99, µs) this backend is judged against; 0: none.
    slo_us: AtomicU64,
    pub addr: NodeAddr,
}

/// A record with no address (tests of the estimate and the window).
#[cfg(test)]
impl Default for Backend {
    fn default() -> Self {
        Backend::new(NodeAddr("".into()))
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.addr)
    }
}

impl Backend {
    pub fn new(addr: NodeAddr) -> Backend {
        Backend {
            estimate: Mutex::new((INITIAL.as_nanos() as f64, Instant::now())),
            estimate_ns: AtomicU64::new(INITIAL.as_nanos() as u64),
            next_sample_ns: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            reads: AtomicU64::new(0),
            window: Mutex::new(Window::new()),
            slo_ok: AtomicBool::new(true),
            last_p99_us: AtomicU64::new(0),
            last_p95_us: AtomicU64::new(0),
            slo_us: AtomicU64::new(0),
            addr,
        }
    }

    /// Sets the read SLO (p99) it is judged against; zero turns the SLO off.
    pub fn set_slo(&self, p99: Duration) {
        let us = p99.as_micros() as u64;
        if self.slo_us.swap(us, Ordering::Relaxed) != us && us == 0 {
            self.slo_ok.store(true, Ordering::Relaxed);
        }
    }

    /// Within the read SLO (always, when there is none).
    pub fn slo_ok(&self) -> bool {
        self.slo_us.load(Ordering::Relaxed) == 0 || self.slo_ok.load(Ordering::Relaxed)
    }

    /// Sets the SLO verdict directly (tests of the routing that reads it).
    #[cfg(test)]
    pub fn set_slo_verdict(&self, ok: bool) {
        self.slo_us.store(1000, Ordering::Relaxed);
        self.slo_ok.store(ok, Ordering::Relaxed);
    }

    /// p95 of the last completed window (zero before one completed).
    pub fn window_p95(&self) -> Duration {
        Duration::from_micros(self.last_p95_us.load(Ordering::Relaxed))
    }

    /// p99 of the last completed window.
    pub fn window_p99(&self) -> Duration {
        Duration::from_micros(self.last_p99_us.load(Ordering::Relaxed))
    }

    /// Records a reply time in the SLO window only (a probe: the monitor's poll), not in the
    /// routing estimate.
    pub fn probe(&self, rtt: Duration) {
        self.record_window(rtt, Instant::now());
    }

    fn record_window(&self, rtt: Duration, now: Instant) {
        let mut w = self.window.lock();
        if w.rotate(now) {
            let (p95, p99, n) = w.quantiles();
            self.last_p99_us.store(p99, Ordering::Relaxed);
            self.last_p95_us.store(p95, Ordering::Relaxed);
            let slo = self.slo_us.load(Ordering::Relaxed);
            if slo > 0 && n >= MIN_SAMPLES {
                let ok = p99 <= slo;
                if !ok {
                    crate::metrics::get()
                        .slo_breaches
                        .with_label_values(&[self.addr.as_str()])
                        .inc();
                }
                if self.slo_ok.swap(ok, Ordering::Relaxed) != ok {
                    tracing::info!(
                        node = %self.addr,
                        p99_us = p99,
                        slo_us = slo,
                        within = ok,
                        "read SLO verdict changed"
                    );
                }
            }
        }
        let us = (rtt.as_micros() as u64).clamp(1, 60_000_000);
        let i = w.current;
        let _ = w.seconds[i].record(us);
    }

    /// The current estimate of a reply time.
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate.lock().0 as u64)
    }

    /// Estimate × (in flight + 1): what power of two choices compares.
    pub fn cost(&self) -> f64 {
        let est = self.estimate.lock().0;
        est * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// Records one reply time, now (tests of what the estimate steers).
    #[cfg(test)]
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        self.record_window(rtt, now);
        self.estimate_with(rtt, now);
    }

    /// Records one reply time, come at `now`: in the window and the estimate if none was
    /// sampled in the last `SAMPLE_EVERY` (so the window is a sample by arrival time, not by
    /// latency), else in the estimate only if it is a peak.
    fn observe_at(&self, rtt: Duration, now: Instant) {
        let at = now.saturating_duration_since(epoch()).as_nanos() as u64;
        let next = self.next_sample_ns.load(Ordering::Relaxed);
        let due = at >= next
            && self
                .next_sample_ns
                .compare_exchange(
                    next,
                    at + SAMPLE_EVERY.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            self.record_window(rtt, now);
        } else if rtt.as_nanos() as u64 <= self.estimate_ns.load(Ordering::Relaxed) {
            return;
        }
        self.estimate_with(rtt, now);
    }

    /// Takes one reply time into the estimate.
    fn estimate_with(&self, rtt: Duration, now: Instant) {
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
        self.estimate_ns.store(e.0 as u64, Ordering::Relaxed);
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.start_at(Instant::now())
    }

    /// Counts a request in flight, sent at `now`, until the guard is dropped.
    pub fn start_at(&self, now: Instant) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: self,
            started: now,
        }
    }
}

/// The instant reply sampling counts from (the first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A request in flight on a backend; `finish` records its reply time.
pub struct InFlight<'a> {
    backend: &'a Backend,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the time since `start` as a reply time.
    pub fn finish(self) {
        self.finish_at(Instant::now());
    }

    /// Records the time from `start` to `now` (when the reply came) as a reply time.
    pub fn finish_at(self, now: Instant) {
        self.backend
            .observe_at(now.saturating_duration_since(self.started), now);
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
    fn replies_are_sampled_once_per_interval_but_peaks_always_count() {
        let b = Backend::default();
        let t0 = Instant::now();
        b.observe_at(Duration::from_micros(300), t0);
        assert_eq!(
            b.window.lock().seconds[0].len(),
            1,
            "the first reply is sampled"
        );
        // Within the interval: a fast reply is not, a peak moves the estimate at once.
        b.observe_at(Duration::from_micros(100), t0 + SAMPLE_EVERY / 2);
        assert_eq!(b.window.lock().seconds[0].len(), 1);
        b.observe_at(Duration::from_millis(40), t0 + SAMPLE_EVERY / 2);
        assert_eq!(b.estimate(), Duration::from_millis(40));
        assert_eq!(
            b.window.lock().seconds[0].len(),
            1,
            "a peak is not in the window"
        );
        // After it: sampled again.
        b.observe_at(Duration::from_micros(100), t0 + SAMPLE_EVERY * 2);
        assert_eq!(b.window.lock().seconds[0].len(), 2);
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
    fn a_window_whose_p99_breaks_the_slo_takes_the_backend_out() {
        let b = Backend::new(NodeAddr("n:1".into()));
        b.set_slo(Duration::from_millis(2));
        let t0 = Instant::now();
        // One second of fast replies, then one of slow ones.
        for _ in 0..100 {
            b.record_window(Duration::from_micros(300), t0);
        }
        b.record_window(Duration::from_micros(300), t0 + Duration::from_millis(1001));
        assert!(b.slo_ok(), "p99 {:?}", b.window_p99());
        for _ in 0..100 {
            b.record_window(Duration::from_millis(8), t0 + Duration::from_millis(1500));
        }
        b.record_window(Duration::from_millis(8), t0 + Duration::from_millis(2001));
        assert!(!b.slo_ok(), "p99 {:?}", b.window_p99());
        // Fast again: back once the slow second has left the window.
        for s in 2..6 {
            for _ in 0..100 {
                b.record_window(
                    Duration::from_micros(200),
                    t0 + Duration::from_millis(s * 1000 + 500),
                );
            }
        }
        b.record_window(Duration::from_micros(200), t0 + Duration::from_millis(6001));
        assert!(b.slo_ok(), "p99 {:?}", b.window_p99());
        // No SLO: always within.
        b.set_slo(Duration::ZERO);
        assert!(b.slo_ok());
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
