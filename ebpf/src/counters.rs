//! Per-CPU counters, indexed by the shared table in `oxlay_common::counters`.
use oxlay_common::Counter;

use crate::maps::OXLAY_COUNTERS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = OXLAY_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points
        // at this CPU's u64 slot; programs do not migrate CPUs while running, so no other
        // writer touches it concurrently.
        unsafe { *slot += 1 };
    }
}
