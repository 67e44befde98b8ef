//! Cache prefetch hints, used to overlap the cache misses of a batch (see `ledger::table`).
//!
//! One of the engine's two `unsafe` blocks (the other is the `sync_file_range` call of
//! `snapshot::write`): the prefetch intrinsic takes a raw pointer. A prefetch is a hint; it
//! never faults and never changes program state, whatever the address.

/// Starts loading the cache lines that hold `value`.
#[inline]
pub(crate) fn prefetch_read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let first = std::ptr::from_ref(value).cast::<i8>();
        let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
        #[expect(unsafe_code, reason = "the prefetch intrinsic takes a pointer")]
        // SAFETY: `_mm_prefetch` only hints the cache; it does not dereference its argument in
        // a way that can fault or be observed, and SSE is part of the x86_64 baseline.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            _mm_prefetch::<_MM_HINT_T0>(last);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = value;
    }
}
