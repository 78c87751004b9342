//! The proxy's copy buffers, kept per thread and reused.
//!
//! Why: every proxied connection copies through two buffers of `buffer_size` (16 KiB by
//! default). Allocating and zeroing them for each connection cost about 7 % of the load
//! balancer's CPU with short-lived connections (`memset`, `malloc` and `free` in `perf` of
//! `herd bench lb --shape 64:close`). A buffer is zeroed once, when it is allocated, and reused
//! as it is afterwards: the proxy reads into it and writes on only the bytes that read returned,
//! so old bytes are never sent (and the crate needs no `unsafe` to read into uninitialised
//! memory). A thread keeps at most [`POOLED_PER_THREAD`] idle buffers.

use std::cell::RefCell;

/// Idle buffers one thread keeps (at 16 KiB, 8 MiB).
pub(crate) const POOLED_PER_THREAD: usize = 512;

thread_local! {
    static IDLE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `size` initialised bytes (whatever an earlier user left in it); it
/// returns to its thread's pool when dropped.
pub(crate) struct Buffer(Vec<u8>);

impl Buffer {
    pub fn take(size: usize) -> Buffer {
        let reused = IDLE.with(|idle| idle.borrow_mut().pop());
        match reused {
            Some(v) if v.len() >= size => Buffer(v),
            _ => Buffer(vec![0; size]),
        }
    }

    /// The whole buffer, to read into.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
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
    fn a_dropped_buffer_is_reused_and_the_pool_is_bounded() {
        let mut b = Buffer::take(1024);
        assert_eq!(b.bytes().len(), 1024);
        let ptr = b.bytes().as_ptr();
        drop(b);
        let mut again = Buffer::take(1024);
        assert_eq!(again.bytes().as_ptr(), ptr, "the same allocation comes back");
        assert!(again.bytes().len() >= 1024);
        // A larger request than the pooled buffer gets a new one.
        drop(again);
        assert!(Buffer::take(1 << 20).bytes().len() >= 1 << 20);
        let many: Vec<Buffer> = (0..POOLED_PER_THREAD + 10).map(|_| Buffer::take(16)).collect();
        drop(many);
        assert_eq!(IDLE.with(|i| i.borrow().len()), POOLED_PER_THREAD);
    }
}
