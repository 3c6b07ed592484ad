//! Per-thread reuse of the large temporaries of a layer (im2col operands) and of the runtime's feature maps: a
//! fresh multi-100-KB `Vec` per layer made the allocator hand pages back and fault them in again on every image
//! (~15 % of batch-1 time; the maps alone 10 % of ResNet-20 W2A2 on the table kernel, 8000 `brk` calls in 1300
//! images).
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

/// Spare buffers kept per type and thread: one layer's temporaries and a network's live maps (up to 8 of the
/// largest maps stay allocated per worker thread: 25 MB for ResNet-18's 112×112×64 at 224²).
const SPARES: usize = 8;

/// `len` copies of `x`, in a spare buffer of this thread's pool when it has one (hand it back with [`recycle`]).
pub(crate) fn filled<T: Pooled>(len: usize, x: T) -> Vec<T> {
    let mut v = spare(len);
    v.clear();
    v.resize(len, x);
    v
}

/// `len` values with unspecified (initialised, stale) contents, in a spare buffer when the pool has one that fits:
/// for outputs the caller overwrites entirely (zero-filling a layer's output first had cost ~2 % of a batch-1
/// ResNet-20).
pub(crate) fn reused<T: Pooled>(len: usize) -> Vec<T> {
    let mut v = spare(len);
    v.truncate(len);
    v.resize(len, T::default());
    v
}

/// The smallest spare of this thread's pool that holds `len` values (growing a smaller one would copy its old
/// contents), else a new empty buffer of that capacity.
fn spare<T: Pooled>(len: usize) -> Vec<T> {
    let fits = T::with_pool(|p| {
        let i = (0..p.len()).filter(|&i| p[i].capacity() >= len).min_by_key(|&i| p[i].capacity());
        i.map(|i| p.swap_remove(i))
    });
    fits.unwrap_or_else(|| Vec::with_capacity(len))
}

/// Keeps `v`'s memory for this thread's next [`filled`] or [`Buf`], while the pool has room. Buffers under 4 KB
/// (small outputs, a fused conv's empty value) are not kept: the allocator serves them well, and they would hold
/// slots that maps need.
pub(crate) fn recycle<T: Pooled>(v: Vec<T>) {
    if v.capacity() * std::mem::size_of::<T>() < 4096 {
        return;
    }
    T::with_pool(|p| {
        if p.len() < SPARES {
            p.push(v);
        }
    });
}

/// A zero-filled buffer that returns its memory to this thread's pool when dropped.
pub(crate) struct Buf<T: Pooled>(Vec<T>);

impl<T: Pooled> Buf<T> {
    /// `len` zeros, in a spare buffer when the pool has one that fits.
    pub fn zeroed(len: usize) -> Self {
        Buf(filled(len, T::default()))
    }
}

impl<T: Pooled> Buf<T> {
    /// `len` values with unspecified (initialised, stale) contents, for buffers the caller overwrites entirely.
    pub fn reused(len: usize) -> Self {
        Buf(reused(len))
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer from the pool holds exactly `len` copies of the value, whatever spares (stale contents, larger or
    /// smaller capacity) the pool held, and the smallest spare that fits is the one taken; buffers under 4 KB
    /// (empty ones included) never take a slot.
    #[test]
    fn filled_buffers_hold_only_the_value() {
        let at = |v: &Vec<f32>| v.as_ptr() as usize;
        let (mid, big) = (vec![7.0f32; 2000], vec![9.0f32; 6000]);
        let (mid_at, big_at) = (at(&mid), at(&big));
        recycle(mid);
        recycle(big);
        recycle(vec![8.0f32; 1100]);
        let a = filled(1500, 0.5f32);
        assert!(a.len() == 1500 && a.iter().all(|&x| x == 0.5) && at(&a) == mid_at, "{a:?}");
        let b = filled(8000, 1.5f32);
        assert!(b.len() == 8000 && b.iter().all(|&x| x == 1.5));
        let z = Buf::<f32>::zeroed(2500);
        assert!(z.len() == 2500 && z.iter().all(|&x| x == 0.0) && at(&z.0) == big_at);
        let held = f32::with_pool(|p| p.len());
        (0..2 * SPARES).for_each(|i| recycle(vec![0.0f32; i * 60]));
        assert_eq!(f32::with_pool(|p| p.len()), held, "a buffer under 4 KB took a slot");
    }
}
