//! Locking without poison: a panic while a lock is held leaves the daemon's
//! data consistent at every point where a lock can be released (each
//! critical section completes or changes nothing), so poisoning is ignored
//! rather than spread to every thread.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
