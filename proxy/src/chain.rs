//! One link of a connection's chain of operations on a shard (what keeps its reads monotonic
//! and its own writes visible to it): an operation says once, when it completes, what it
//! showed; the next operation there takes that at once if it is settled, or waits for it.
//!
//! A cell rather than a channel: most reads find the previous one settled (a client waits
//! for its replies before it reads again), and then taking what it showed is one load.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::freshness::Seen;

struct Link {
    /// What the operation showed; `None` inside: nothing yet (e.g. no read on the shard).
    seen: OnceLock<Option<Seen>>,
    set: Notify,
    /// Someone has waited: setting must wake (usually no one has, and waking costs a lock).
    waited: AtomicBool,
}

/// The operation's side. Dropped before it said anything (the operation never completed, e.g.
/// its session is closing), the operation may have shown anything: `Seen::unknown()`.
pub struct Showing(Arc<Link>);

/// The next operation's side: what the operation showed, once it completed.
#[derive(Clone)]
pub struct Shown(Arc<Link>);

/// A new link: the operation's side and the next operation's.
pub fn link() -> (Showing, Shown) {
    let link = Arc::new(Link {
        seen: OnceLock::new(),
        set: Notify::new(),
        waited: AtomicBool::new(false),
    });
    (Showing(link.clone()), Shown(link))
}

impl Showing {
    /// Says what the operation showed.
    pub fn done(self, seen: Option<Seen>) {
        self.say(seen);
    }

    fn say(&self, seen: Option<Seen>) {
        if self.0.seen.set(seen).is_ok() {
            // Against the fence in `wait`: either the waiter sees the value, or this sees
            // that it waits.
            fence(Ordering::SeqCst);
            if self.0.waited.load(Ordering::Relaxed) {
                self.0.set.notify_waiters();
            }
        }
    }
}

impl Drop for Showing {
    fn drop(&mut self) {
        if self.0.seen.get().is_none() {
            self.say(Some(Seen::unknown()));
        }
    }
}

impl Shown {
    /// What the operation showed, if it has completed.
    pub fn settled(&self) -> Option<Option<Seen>> {
        self.0.seen.get().cloned()
    }

    /// What the operation showed, once it has completed.
    pub async fn wait(&self) -> Option<Seen> {
        loop {
            // Created before the check: `notify_waiters` wakes a `Notified` from its creation.
            let set = self.0.set.notified();
            self.0.waited.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(seen) = self.0.seen.get() {
                return seen.clone();
            }
            set.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freshness::Served;

    #[tokio::test]
    async fn the_next_operation_gets_what_was_shown_settled_or_awaited() {
        let (showing, shown) = link();
        assert!(shown.settled().is_none());
        let waiter = tokio::spawn({
            let shown = shown.clone();
            async move { shown.wait().await }
        });
        tokio::task::yield_now().await;
        showing.done(None);
        assert_eq!(shown.settled().map(|s| s.is_none()), Some(true));
        let awaited = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken")
            .expect("the waiter completes");
        assert!(awaited.is_none());
    }

    #[tokio::test]
    async fn an_operation_that_never_completed_may_have_shown_anything() {
        let (showing, shown) = link();
        drop(showing);
        let seen = shown.wait().await.expect("something unknown");
        assert_eq!(seen.by, Served::Primary);
        assert!(seen.at.is_none(), "unknown: as new as can be");
    }
}
