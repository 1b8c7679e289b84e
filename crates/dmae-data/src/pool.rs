//! Recycled pixel buffers.
//!
//! A 256x256 RGB image is 768 KiB of f32; allocating and freeing one per sample makes the allocator return the
//! memory to the kernel and fault it back in, which costs more than decoding. The loader hands the buffers of
//! collated samples back here and the image decoder takes from here. Bounded in count and bytes; small buffers
//! are left to the allocator.

use std::sync::Mutex;

/// Buffers below this many f32 are not worth pooling.
const MIN_LEN: usize = 16 * 1024;
/// At most this many buffers are kept.
const MAX_BUFFERS: usize = 256;
/// At most this many bytes are kept.
const MAX_BYTES: usize = 256 << 20;

struct Pool {
    buffers: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    bytes: 0,
});

/// An empty vector with capacity for at least `len` values, recycled when one is available.
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        if let Ok(mut p) = POOL.lock() {
            // Smallest buffer that fits, so large buffers stay available for large images.
            let best = p
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut v = p.buffers.swap_remove(i);
                p.bytes -= v.capacity() * 4;
                v.clear();
                return v;
            }
        }
    }
    Vec::with_capacity(len)
}

/// Returns a buffer for reuse (dropped instead when the pool is full or the buffer is small).
pub(crate) fn give(v: Vec<f32>) {
    let cap = v.capacity();
    if cap < MIN_LEN {
        return;
    }
    if let Ok(mut p) = POOL.lock() {
        if p.buffers.len() < MAX_BUFFERS && p.bytes + cap * 4 <= MAX_BYTES {
            p.bytes += cap * 4;
            p.buffers.push(v);
        }
    }
}
