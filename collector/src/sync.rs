//! Locks that survive a panic elsewhere: a poisoned mutex still holds
//! consistent data here (every critical section leaves it whole), so a panic
//! in one task must not take the collector's other tasks down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the data of a poisoned one.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
