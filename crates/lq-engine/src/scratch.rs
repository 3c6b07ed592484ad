//! Per-thread reuse of the large temporaries of a layer (im2col operands): a fresh multi-100-KB `Vec` per layer
//! made the allocator hand pages back and fault them in again on every image (~15 % of batch-1 time).
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Element types with a per-thread pool of spare buffers.
pub(crate) trait Pooled: Copy + Default + 'static {
    fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R;
}

macro_rules! pooled {
    ($($t:ty),*) => {$(
        impl Pooled for $t {
            fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R {
                thread_local!(static POOL: RefCell<Vec<Vec<$t>>> = const { RefCell::new(Vec::new()) });
                POOL.with(|p| f(&mut p.borrow_mut()))
            }
        }
    )*};
}
pooled!(u8, u32, u64, f32);

/// A zero-filled buffer that returns its memory to this thread's pool when dropped.
pub(crate) struct Buf<T: Pooled>(Vec<T>);

impl<T: Pooled> Buf<T> {
    /// `len` zeros, in a spare buffer when the pool has one.
    pub fn zeroed(len: usize) -> Self {
        let mut v = T::with_pool(|p| p.pop()).unwrap_or_default();
        v.clear();
        v.resize(len, T::default());
        Buf(v)
    }
}

impl<T: Pooled> Buf<T> {
    /// `len` values with unspecified (initialised, stale) contents, for buffers the caller overwrites entirely.
    pub fn reused(len: usize) -> Self {
        let mut v = T::with_pool(|p| p.pop()).unwrap_or_default();
        v.truncate(len);
        v.resize(len, T::default());
        Buf(v)
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // A few spares per type cover one layer's temporaries; more would only pin memory.
        T::with_pool(|p| {
            if p.len() < 4 {
                p.push(v)
            }
        });
    }
}

impl<T: Pooled> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Pooled> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}
