//! Ferry's global allocator.
//!
//! Protocol decoders (the `kafka-protocol` crate among them) size a `Vec` from a length
//! read off the wire before they read the elements. A 10-byte request can declare an
//! array of `i32::MAX` elements. If the allocator fails such a request, Rust aborts the
//! whole process: an allocation failure is not a catchable panic.
//!
//! [`GuardedAllocator`] serves every allocation of [`LAZY_ALLOCATION_BYTES_MIN`] or more
//! with an anonymous `MAP_NORESERVE` mapping. The kernel commits memory only for pages
//! that are actually touched. A forged capacity therefore costs address space, not
//! memory. The decoder then fails on the short buffer and the untouched mapping is
//! returned. Smaller allocations go to the system allocator unchanged. No request Ferry
//! accepts comes near the threshold (requests are capped far below it), so normal
//! operation never takes the mapped path.
//!
//! Limit: under strict overcommit (`vm.overcommit_memory = 2`) the kernel ignores
//! `MAP_NORESERVE`. There, a forged length still fails the allocation.
//!
//! Each binary that decodes network input installs it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: ferry_alloc::GuardedAllocator = ferry_alloc::GuardedAllocator;
//! ```

// A global allocator cannot be written without `unsafe`: `GlobalAlloc` is an unsafe
// trait and mmap/munmap are FFI calls. This crate is the one place in Ferry that needs it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are lazily committed mappings.
pub const LAZY_ALLOCATION_BYTES_MIN: usize = 1 << 30;

/// Alignment a fresh mapping always satisfies (a page).
const MAPPING_ALIGNMENT_BYTES: usize = 4096;

/// The system allocator, except that huge allocations are lazily committed mappings.
pub struct GuardedAllocator;

fn is_mapped(layout: &Layout) -> bool {
    layout.size() >= LAZY_ALLOCATION_BYTES_MIN && layout.align() <= MAPPING_ALIGNMENT_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if pointer == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        pointer.cast()
    }
}

unsafe fn unmap(pointer: *mut u8, size: usize) {
    // SAFETY: `pointer` and `size` describe a mapping made by `map` (caller's contract).
    let result = unsafe { libc::munmap(pointer.cast(), size) };
    debug_assert_eq!(result, 0, "munmap of an allocator mapping failed");
}

// SAFETY: every pointer handed out is either the system allocator's (and returned to it)
// or a fresh page-aligned anonymous mapping of at least `layout.size()` bytes (and
// unmapped with the same size); `is_mapped` depends only on the layout, so `dealloc`
// and `realloc` always know which of the two a pointer came from.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_mapped(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_mapped(&layout) {
            // Anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if is_mapped(&layout) {
            unsafe { unmap(pointer, layout.size()) }
        } else {
            unsafe { System.dealloc(pointer, layout) }
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_mapped(&layout) && !is_mapped(&new_layout) {
            return unsafe { System.realloc(pointer, layout, new_size) };
        }
        let new_pointer = unsafe { self.alloc(new_layout) };
        if !new_pointer.is_null() {
            let copied = layout.size().min(new_size);
            // SAFETY: both regions are valid for `copied` bytes and distinct allocations.
            unsafe { std::ptr::copy_nonoverlapping(pointer, new_pointer, copied) };
            unsafe { self.dealloc(pointer, layout) };
        }
        new_pointer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: GuardedAllocator = GuardedAllocator;

    #[test]
    fn forged_capacity_does_not_abort() {
        // 2^31 elements of 128 bytes: 256 GiB, far beyond this machine's memory.
        let huge: Vec<[u8; 128]> = Vec::with_capacity(i32::MAX as usize);
        assert!(huge.capacity() >= i32::MAX as usize);
        drop(huge);
    }

    #[test]
    fn mapped_memory_is_usable_and_survives_realloc() {
        let mut bytes: Vec<u8> = Vec::with_capacity(LAZY_ALLOCATION_BYTES_MIN);
        bytes.extend_from_slice(b"ferry");
        bytes.shrink_to_fit(); // mapped -> system allocator
        assert_eq!(bytes, b"ferry");
        bytes.reserve_exact(LAZY_ALLOCATION_BYTES_MIN); // system -> mapped
        bytes.push(b'!');
        assert_eq!(bytes, b"ferry!");
        let zeroed = vec![0u8; LAZY_ALLOCATION_BYTES_MIN];
        assert_eq!(zeroed[LAZY_ALLOCATION_BYTES_MIN - 1], 0);
    }

    #[test]
    fn small_allocations_use_the_system_allocator() {
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
    }
}
