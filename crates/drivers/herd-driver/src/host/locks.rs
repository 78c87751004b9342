//! One async lock per instance: every acting driver call on an instance holds it, so calls on
//! one instance are serialised while calls on different instances run in parallel.

use herd_model::InstanceKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// The per-instance locks of one driver.
#[derive(Debug, Default)]
pub struct InstanceLocks(Mutex<HashMap<InstanceKey, Arc<tokio::sync::Mutex<()>>>>);

impl InstanceLocks {
    fn entry(&self, key: &InstanceKey) -> Arc<tokio::sync::Mutex<()>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }

    /// Waits for `key`'s lock.
    pub async fn lock(&self, key: &InstanceKey) -> OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// `key`'s lock if nobody holds it now.
    pub fn try_lock(&self, key: &InstanceKey) -> Option<OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }

    /// Forgets the lock of a destroyed instance unless someone else is waiting on it (call it
    /// while holding the lock).
    pub fn forget(&self, key: &InstanceKey) {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // The map and the caller's guard hold one reference each.
        if locks.get(key).is_some_and(|m| Arc::strong_count(m) <= 2) {
            locks.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_instance_and_forgotten_when_idle() {
        let locks = InstanceLocks::default();
        let (a, b) = (InstanceKey::parse_path("g/s/1").unwrap(), InstanceKey::parse_path("g/s/2").unwrap());
        let held = locks.lock(&a).await;
        assert!(locks.try_lock(&a).is_none(), "held");
        assert!(locks.try_lock(&b).is_some(), "another instance is independent");
        locks.forget(&a);
        assert_eq!(locks.0.lock().unwrap().len(), 1, "forgotten: only b's entry is left");
        drop(held);
        assert!(locks.try_lock(&a).is_some());
    }
}
