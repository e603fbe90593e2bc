//! Copies to and from memory that another process may write at the same
//! time (ring data areas; later, the registry's shared read side).
//!
//! A plain `memcpy` over such memory is a data race by the letter of the
//! memory model, whatever the caller does with the bytes afterwards. These
//! copies stay outside it: short ones use relaxed atomic loads and stores
//! (8-byte words where the address is aligned, single bytes at the
//! unaligned ends); long ones, on x86-64, one `rep movsb` in inline
//! assembly, which the compiler treats as an opaque access (as it would a
//! volatile one) and which moves a 4 KiB value about three times faster
//! than word-by-word atomics. The bytes may be torn (the caller validates
//! them, e.g. by a sequence number), but the copy itself is defined
//! behaviour.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const WORD: usize = 8;

/// Copies at least this long go through [`bulk`] where there is one.
const BULK_MIN: usize = 256;

/// `len` bytes from `src` to `dst` in one string move.
///
/// # Safety
/// Both ranges are valid for the whole call (another process may access
/// them), and they do not overlap.
#[cfg(all(target_arch = "x86_64", not(hreg_loom)))]
#[inline]
unsafe fn bulk(src: *const u8, dst: *mut u8, len: usize) -> bool {
    // SAFETY: the caller guarantees both ranges; `rep movsb` reads
    // `[rsi, rsi + rcx)` and writes `[rdi, rdi + rcx)` forwards (the
    // direction flag is clear at every function boundary by the ABI), and
    // touches nothing else but the three registers, which are declared.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
    true
}

#[cfg(not(all(target_arch = "x86_64", not(hreg_loom))))]
#[inline]
unsafe fn bulk(_src: *const u8, _dst: *mut u8, _len: usize) -> bool {
    false
}

/// Fills `out` from `out.len()` bytes at `src`.
///
/// # Safety
/// `src .. src + out.len()` must be mapped and readable for the whole call.
/// Other threads or processes may write it concurrently, but only through
/// atomic operations or from another process.
#[inline]
pub unsafe fn load(src: *const u8, out: &mut [u8]) {
    let len = out.len();
    // SAFETY: `src` is as the caller guarantees; `out` is ours, disjoint.
    if len >= BULK_MIN && unsafe { bulk(src, out.as_mut_ptr(), len) } {
        return;
    }
    let head = src.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    for (i, byte) in out[..head].iter_mut().enumerate() {
        // SAFETY: inside the caller's readable range; AtomicU8 has no
        // alignment requirement.
        *byte = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
    for w in 0..words {
        let at = head + w * WORD;
        // SAFETY: `src + at` is 8-aligned (head aligned it) and the 8 bytes
        // lie inside the caller's readable range.
        let word =
            unsafe { AtomicU64::from_ptr(src.add(at).cast_mut().cast()) }.load(Ordering::Relaxed);
        out[at..at + WORD].copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in out.iter_mut().enumerate().skip(head + words * WORD) {
        // SAFETY: inside the caller's readable range.
        *byte = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
}

/// Writes `bytes` at `dst`.
///
/// # Safety
/// `dst .. dst + bytes.len()` must be mapped and writable for the whole
/// call, and no Rust reference may point into it. Other threads or
/// processes may access it concurrently, but only through atomic operations
/// or from another process.
#[inline]
pub unsafe fn store(dst: *mut u8, bytes: &[u8]) {
    let len = bytes.len();
    // SAFETY: `dst` is as the caller guarantees; `bytes` is ours, disjoint.
    if len >= BULK_MIN && unsafe { bulk(bytes.as_ptr(), dst, len) } {
        return;
    }
    let head = dst.align_offset(WORD).min(len);
    let words = (len - head) / WORD;
    for (i, &byte) in bytes[..head].iter().enumerate() {
        // SAFETY: inside the caller's writable range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
    for w in 0..words {
        let at = head + w * WORD;
        let word = u64::from_ne_bytes(bytes[at..at + WORD].try_into().expect("8 bytes"));
        // SAFETY: `dst + at` is 8-aligned and the word lies inside the
        // caller's writable range.
        unsafe { AtomicU64::from_ptr(dst.add(at).cast()) }.store(word, Ordering::Relaxed);
    }
    for (i, &byte) in bytes.iter().enumerate().skip(head + words * WORD) {
        // SAFETY: inside the caller's writable range.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(byte, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_alignment_and_length() {
        let mut memory = vec![0u64; 64];
        let base = memory.as_mut_ptr().cast::<u8>();
        for offset in 0..9 {
            for len in (0..40).chain(250..270) {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| ((i * 7 + offset) as u8).wrapping_add(1))
                    .collect();
                // SAFETY: offset + len < 512 bytes of `memory`, which
                // nothing else references during the test.
                unsafe { store(base.add(offset), &bytes) };
                let mut out = vec![0u8; len];
                // SAFETY: as above.
                unsafe { load(base.add(offset), &mut out) };
                assert_eq!(out, bytes, "offset {offset}, len {len}");
            }
        }
    }
}
