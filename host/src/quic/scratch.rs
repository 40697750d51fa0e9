//! Scratch buffers lent to a connection for one round of sending or
//! reading, instead of one owned by every connection for its whole life.
//!
//! A heap profile of 2,000 idle connections (`heaptrack`, bench idle
//! scenario) showed two 64 KiB buffers per connection, the worker's send
//! batch and the HTTP/3 body read buffer, among the largest costs of a
//! connection that sends and reads nothing. Lent buffers exist only as many
//! times as connections are in the middle of a round at once.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Freed buffers of one length each thread keeps for the next round;
/// more are freed. Per length, so that send buffers and read buffers
/// (two lengths, both about 64 KiB) never crowd each other out.
const KEPT_PER_THREAD: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of exactly the length asked for, back to its thread's free list
/// when dropped (which may be another thread than the one it came from).
///
/// Its bytes are whatever its previous user left there: read only what this
/// use wrote.
pub(crate) struct Scratch(Option<Box<[u8]>>);

impl Scratch {
    /// Lends a buffer of `len` bytes: a freed one of that length if this
    /// thread has one, else a new one.
    pub(crate) fn take(len: usize) -> Self {
        let reused = FREE
            .try_with(|free| {
                let mut free = free.borrow_mut();
                let i = free.iter().position(|b| b.len() == len)?;
                Some(free.swap_remove(i))
            })
            .ok()
            .flatten();
        Self(Some(
            reused.unwrap_or_else(|| vec![0u8; len].into_boxed_slice()),
        ))
    }
}

impl Deref for Scratch {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // During thread teardown the list may be gone: then just free.
            let _ = FREE.try_with(|free| {
                let mut free = free.borrow_mut();
                let same = free.iter().filter(|b| b.len() == buf.len()).count();
                if same < KEPT_PER_THREAD {
                    free.push(buf);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_lent_again_and_lengths_never_mix() {
        let mut a = Scratch::take(1000);
        assert_eq!(a.len(), 1000);
        a[0] = 7;
        let ptr = a.as_ptr();
        drop(a);
        let b = Scratch::take(1000);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        let c = Scratch::take(1000);
        assert_ne!(c.as_ptr(), ptr, "a lent buffer is never lent twice");
        let d = Scratch::take(500);
        assert_eq!(d.len(), 500);
    }

    #[test]
    fn one_length_never_crowds_out_another() {
        let sends: Vec<Scratch> = (0..2 * KEPT_PER_THREAD)
            .map(|_| Scratch::take(3000))
            .collect();
        let read = Scratch::take(3001);
        let ptr = read.as_ptr();
        drop(sends);
        drop(read);
        assert_eq!(Scratch::take(3001).as_ptr(), ptr);
    }

    #[test]
    fn the_free_list_is_bounded() {
        let many: Vec<Scratch> = (0..3 * KEPT_PER_THREAD)
            .map(|_| Scratch::take(4096))
            .collect();
        drop(many);
        let kept = FREE.with(|f| f.borrow().iter().filter(|b| b.len() == 4096).count());
        assert_eq!(kept, KEPT_PER_THREAD);
    }
}
