//! Following the store: list once, then apply each watch event to the snapshot and
//! reconcile; retries with backoff and a periodic drift check.
use std::{sync::Arc, time::Duration};

use log::warn;

use super::{
    health::{store_failed, store_ok},
    state::Routing,
    Daemon,
};
use crate::{
    model::{self, BlockRecord},
    reconcile::Snapshot,
    store::{WatchEvent, WatchItem},
};

type WatchStream = tokio::sync::mpsc::Receiver<WatchItem>;

/// When to look at the kernel's maps again without a store event: after a failed
/// reconcile, from 1 s, doubling up to [`RETRY_MAX`]; while all is well, a drift check
/// [`DRIFT_CHECK_EVERY`] after the last one. Each look compares against the kernel's
/// maps themselves (not the shadow), so no divergence outlives it.
#[derive(Debug)]
struct Resync {
    delay: Duration,
    failing: bool,
}

const RETRY_MAX: Duration = Duration::from_secs(30);
/// Events within 20 ms that make a burst worth gathering further.
const BURST_EVENTS: usize = 16;
const DRIFT_CHECK_EVERY: Duration = Duration::from_secs(300);

impl Resync {
    fn new() -> Self {
        Self {
            delay: DRIFT_CHECK_EVERY,
            failing: false,
        }
    }
    /// The delay until the next look, given whether the last reconcile succeeded.
    fn after(&mut self, ok: bool) -> Duration {
        self.delay = match (ok, self.failing) {
            (true, _) => DRIFT_CHECK_EVERY,
            (false, false) => Duration::from_secs(1),
            (false, true) => (self.delay * 2).min(RETRY_MAX),
        };
        self.failing = !ok;
        self.delay
    }
    fn failing(&self) -> bool {
        self.failing
    }
}

/// Reconciles everything, or only the routes of `blocks`; logs a failure; whether it
/// succeeded.
async fn reconcile_logged(d: &Daemon, blocks: Option<&[(String, Option<BlockRecord>)]>) -> bool {
    let mut s = d.state.lock().await;
    let result = match blocks {
        Some(blocks) => s.reconcile_blocks(blocks).await,
        None => s.reconcile().await,
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            warn!("reconcile failed: {e:#}");
            s.last_reconcile_error = Some(format!("{e:#}"));
            false
        }
    }
}

/// Follows the store: lists its routing records once, then applies each watch event
/// to that snapshot and reconciles the maps (events are batched). A change costs the
/// change: no relisting, no map dump. Failed map writes are retried with backoff; a
/// drift check compares with the kernel's maps every [`DRIFT_CHECK_EVERY`].
pub(super) async fn watch_store(d: Arc<Daemon>) {
    let mut resync = Resync::new();
    let retry = d.state.lock().await.retry.clone();
    loop {
        // Listed without the lock; the snapshot is swapped in whole.
        let start = match Snapshot::list(&*d.store).await {
            Ok((snapshot, revision)) => {
                store_ok(&d.health);
                let mut s = d.state.lock().await;
                s.snapshot = snapshot;
                // The maps follow this listing (the watch goes on from here).
                s.control.watch_revision.set(revision);
                revision
            }
            Err(e) => {
                store_failed(&d.health, "listing", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Listed after the snapshot: the watch replays what changed in between.
        match crate::names::Directory::list(&*d.store, &d.host.name).await {
            Ok(directory) => d.resolver.replace_directory(directory),
            Err(e) => {
                store_failed(&d.health, "listing", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let ok = reconcile_logged(&d, None).await;
        // A deadline, not a sleep per turn: events do not postpone it.
        let mut due = tokio::time::Instant::now() + resync.after(ok);
        match d.store.watch(model::PREFIX, start).await {
            Ok(events) => follow(&d, events, &retry, &mut resync, &mut due).await,
            Err(e) => store_failed(&d.health, "watch", &e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies watch events until the watch breaks (then the caller lists anew), and
/// retries or re-checks the maps when `due`.
async fn follow(
    d: &Daemon,
    mut events: WatchStream,
    retry: &tokio::sync::Notify,
    resync: &mut Resync,
    due: &mut tokio::time::Instant,
) {
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            // A reconcile on an API path failed: retry soon.
            _ = retry.notified() => {
                if !resync.failing() {
                    *due = tokio::time::Instant::now() + resync.after(false);
                }
                continue;
            }
            _ = tokio::time::sleep_until(*due) => {
                d.state.lock().await.forget_what_was_written();
                *due = tokio::time::Instant::now() + resync.after(reconcile_logged(d, None).await);
                continue;
            }
        };
        let first = match event {
            Some(Ok(first)) => first,
            Some(Err(e)) => {
                store_failed(&d.health, "watch", &e);
                return;
            }
            None => return,
        };
        let arrived = std::time::Instant::now();
        let (batch, broken) = gather(first, &mut events).await;
        {
            let mut directory = d.resolver.directory_mut();
            let names = batch
                .iter()
                .filter(|e| crate::names::directory::tracks(e.key()));
            names.for_each(|event| directory.apply(event));
        }
        let routing = d.state.lock().await.apply_events(&batch);
        let ok = match routing {
            Routing::Unchanged => None,
            Routing::Blocks(blocks) => Some(reconcile_logged(d, Some(&blocks)).await),
            Routing::All => Some(reconcile_logged(d, None).await),
        };
        if ok != Some(false) {
            let control = d.state.lock().await.control.clone();
            control
                .watch_lag_seconds
                .observe(arrived.elapsed().as_secs_f64());
            let revision = batch.iter().map(|e| e.revision()).max().unwrap_or(0);
            control.watch_revision.set(revision);
        }
        // A failure starts the retries; a success ends them. Otherwise the drift check
        // stays where it was.
        if let Some(ok) = ok.filter(|ok| *ok == resync.failing()) {
            *due = tokio::time::Instant::now() + resync.after(ok);
        }
        if broken {
            return;
        }
    }
}

/// Takes whatever else arrived with `first`. While a burst goes on (many hosts
/// joining), keeps gathering, up to 250 ms: one reconcile per burst, not one per few
/// events. Also says whether the watch broke meanwhile.
async fn gather(first: WatchEvent, events: &mut WatchStream) -> (Vec<WatchEvent>, bool) {
    let mut batch = vec![first];
    let mut broken = false;
    let gathering = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = batch.len();
        while let Ok(item) = events.try_recv() {
            match item {
                Ok(event) => batch.push(event),
                Err(_) => broken = true,
            }
        }
        let burst = batch.len() - before >= BURST_EVENTS;
        if broken || !burst || gathering.elapsed() > Duration::from_millis(250) {
            return (batch, broken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_backs_off_after_failures_and_relaxes_after_success() {
        let mut r = Resync::new();
        let secs = |d: Duration| d.as_secs();
        assert_eq!(secs(r.after(false)), 1);
        assert_eq!(secs(r.after(false)), 2);
        assert_eq!(secs(r.after(false)), 4);
        for _ in 0..10 {
            r.after(false);
        }
        assert_eq!(r.after(false), RETRY_MAX, "capped");
        assert!(r.failing());
        assert_eq!(r.after(true), DRIFT_CHECK_EVERY);
        assert!(!r.failing());
        assert_eq!(secs(r.after(false)), 1, "a new failure retries soon");
    }
}
