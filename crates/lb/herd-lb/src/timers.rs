//! The deadlines of one data-plane thread: a min-heap of (instant, key), checked once per turn
//! of the thread's event loop.
//!
//! Why this and not a timer per connection: the event loop (see `proxy`) owns every
//! connection of its thread, so one heap serves them all without locks or wake-ups; the loop
//! sleeps in `epoll_wait` until the earliest deadline. Entries are never removed early:
//! a connection keeps one entry, its earliest possible deadline (connect timeout, or idle
//! timeout from its last activity, or its backend's drain deadline). Activity does not touch
//! the heap; when the entry comes due the connection re-checks and, if it was active since,
//! pushes its next deadline. So a busy connection costs one push per idle timeout, not one per
//! read.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Keys with deadlines; [`Timers::pop_due`] returns them earliest first (ties in push order).
pub(crate) struct Timers<K> {
    heap: BinaryHeap<Entry<K>>,
    pushed: u64,
}

struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K> Eq for Entry<K> {}

impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Entry<K> {
    /// Reversed, so that `BinaryHeap` (a max-heap) yields the earliest entry first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<K> Timers<K> {
    pub fn new() -> Self {
        Timers { heap: BinaryHeap::new(), pushed: 0 }
    }

    pub fn push(&mut self, at: Instant, key: K) {
        self.pushed += 1;
        self.heap.push(Entry { at, seq: self.pushed, key });
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The earliest entry if it is due at `now`, with its deadline.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.heap.peek()?.at > now {
            return None;
        }
        self.heap.pop().map(|e| (e.at, e.key))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_entries_come_out_earliest_first_and_later_ones_stay() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = Timers::new();
        assert_eq!(timers.next(), None);
        assert!(timers.pop_due(ms(1_000)).is_none());
        for (at, key) in [(30, "c"), (10, "a"), (50, "e"), (20, "b"), (10, "a2")] {
            timers.push(ms(at), key);
        }
        assert_eq!(timers.next(), Some(ms(10)));
        assert!(timers.pop_due(ms(9)).is_none(), "nothing is due before the earliest deadline");
        let mut due = Vec::new();
        while let Some((at, key)) = timers.pop_due(ms(30)) {
            due.push((at, key));
        }
        assert_eq!(due, vec![(ms(10), "a"), (ms(10), "a2"), (ms(20), "b"), (ms(30), "c")], "ties in push order");
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next(), Some(ms(50)));
        timers.push(ms(40), "d");
        assert_eq!(timers.pop_due(ms(100)), Some((ms(40), "d")));
        assert_eq!(timers.pop_due(ms(100)), Some((ms(50), "e")));
        assert_eq!(timers.len(), 0);
    }
}
