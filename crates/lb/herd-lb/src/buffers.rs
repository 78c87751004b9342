//! The proxy's copy buffers, kept per thread and reused.
//!
//! Why: every proxied connection copies through two buffers of `buffer_size` (16 KiB by
//! default). Allocating and zeroing them for each connection cost about 7 % of the load
//! balancer's CPU with short-lived connections (`memset`, `malloc` and `free` in `perf` of
//! `herd bench lb --shape 64:close`). A buffer taken here is reused without zeroing: the proxy
//! reads into its spare capacity (`read_buf`) and writes on only the bytes a read returned, so
//! old bytes are never sent. A thread keeps at most [`POOLED_PER_THREAD`] idle buffers.

use std::cell::RefCell;

/// Idle buffers one thread keeps (at 16 KiB, 8 MiB).
pub(crate) const POOLED_PER_THREAD: usize = 512;

thread_local! {
    static IDLE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `size` bytes; it returns to its thread's pool when
/// dropped.
pub(crate) struct Buffer(Vec<u8>);

impl Buffer {
    pub fn take(size: usize) -> Buffer {
        let reused = IDLE.with(|idle| idle.borrow_mut().pop());
        match reused {
            Some(v) if v.capacity() >= size => Buffer(v),
            _ => Buffer(Vec::with_capacity(size)),
        }
    }

    /// The bytes read since the last [`clear`](Self::clear), and the room behind them.
    pub fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        v.clear();
        // `try_with`: during thread teardown the pool may already be gone; then just free.
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.len() < POOLED_PER_THREAD {
                idle.push(v);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_reused_empty_and_the_pool_is_bounded() {
        let mut b = Buffer::take(1024);
        b.vec().extend_from_slice(b"old bytes");
        let ptr = b.vec().as_ptr();
        drop(b);
        let mut again = Buffer::take(1024);
        assert_eq!(again.vec().as_ptr(), ptr, "the same allocation comes back");
        assert!(again.vec().is_empty(), "and it is empty");
        assert!(again.vec().capacity() >= 1024);
        // A larger request than the pooled buffer gets a new one.
        drop(again);
        assert!(Buffer::take(1 << 20).vec().capacity() >= 1 << 20);
        let many: Vec<Buffer> = (0..POOLED_PER_THREAD + 10).map(|_| Buffer::take(16)).collect();
        drop(many);
        assert_eq!(IDLE.with(|i| i.borrow().len()), POOLED_PER_THREAD);
    }
}
