//! One reader of the ring buffer, many listeners: each `oxlay monitor` subscribes with
//! its filter, and the programs emit what the union of the filters asks for (nothing
//! once the last one leaves).
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use oxlay_common::monitor::MonitorConfig;
use tokio::sync::{broadcast, Notify};

use super::{EventView, Filter};

/// Events buffered per listener before a slow one loses some (counted).
const BACKLOG: usize = 4096;

/// What the reader passes to listeners.
#[derive(Clone, Debug)]
pub enum Item {
    Event(Arc<EventView>),
    /// The kernel's count of lost events went up (read `Hub::kernel_lost`).
    Lost,
    /// The reader stopped.
    Closed,
}

pub struct Hub {
    items: broadcast::Sender<Item>,
    filters: Mutex<BTreeMap<u64, Filter>>,
    next_id: AtomicU64,
    /// Signalled when the filters change: the reader rewrites the programs' switch.
    pub changed: Notify,
    /// Events the programs could not emit (ring buffer full), since the daemon started.
    kernel_lost: AtomicU64,
    /// Set when the reader stopped: nothing will come any more.
    closed: std::sync::atomic::AtomicBool,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            items: broadcast::channel(BACKLOG).0,
            filters: Mutex::default(),
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
            kernel_lost: AtomicU64::new(0),
            closed: Default::default(),
        }
    }
}

impl Hub {
    /// The reader stopped: listeners' streams end, new ones are refused.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.lock().clear();
        // Receivers see the channel closed once the last sender is gone; tell them now.
        self.publish(Item::Closed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, filter.clone());
        self.changed.notify_one();
        Subscription {
            hub: self.clone(),
            id,
            items: self.items.subscribe(),
            filter,
            lost_before: self.kernel_lost(),
            lagged: 0,
        }
    }

    /// What the programs must emit now.
    pub fn switch(&self) -> MonitorConfig {
        Filter::switch(self.lock().values())
    }

    pub fn publish(&self, item: Item) {
        // No receiver is no error: nobody listens.
        let _ = self.items.send(item);
    }

    pub fn kernel_lost(&self) -> u64 {
        self.kernel_lost.load(Ordering::Relaxed)
    }

    /// The kernel's count of lost events, as last read.
    pub fn set_kernel_lost(&self, total: u64) {
        if self.kernel_lost.swap(total, Ordering::Relaxed) != total {
            self.publish(Item::Lost);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Filter>> {
        self.filters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One listener; leaves the hub when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    items: broadcast::Receiver<Item>,
    pub filter: Filter,
    lost_before: u64,
    lagged: u64,
}

impl Subscription {
    /// The next event this listener's filter shows (None: the hub is gone). Lost
    /// events are counted meanwhile, see [`Subscription::lost`].
    pub async fn next(&mut self) -> Option<Option<Arc<EventView>>> {
        match self.items.recv().await {
            Ok(Item::Event(e)) => Some(self.filter.matches(&e).then_some(e)),
            Ok(Item::Lost) => Some(None),
            Ok(Item::Closed) => None,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.lagged += n;
                Some(None)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Events lost since this listener came: the ring buffer's and its own backlog's.
    pub fn lost(&self) -> u64 {
        self.hub.kernel_lost().saturating_sub(self.lost_before) + self.lagged
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
        self.hub.changed.notify_one();
    }
}
