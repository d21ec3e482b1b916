//! Many whole leaves at once, one leaf per SIMD lane.
//!
//! `blake3::hash` of one 7168-byte chunk spreads its 7 BLAKE3 chunks over the SIMD
//! lanes: 7 of AVX2's 8, 7 of AVX-512's 16, then a serial tail of parent nodes. Hashing
//! many leaves side by side instead, lane *i* on leaf *i*, keeps every lane busy, which
//! is what lets the tree run near the speed of one-shot BLAKE3 (docs/design.md §4).
//!
//! This drives BLAKE3's compression through `blake3::platform`, which the crate marks
//! unstable; the workspace therefore pins blake3 to one exact version, and the tests
//! compare every leaf with `blake3::hash` of the same chunk.

use std::sync::LazyLock;

use blake3::IncrementCounter;
use blake3::platform::Platform;

use super::builder::{CHUNK_SIZE, Digest};

/// Leaves hashed side by side in one pass: the widest SIMD degree BLAKE3 has (AVX-512).
pub(super) const LEAF_BATCH: usize = 16;

/// Fewer leaves than this are hashed one by one: `blake3::hash` of a single leaf already
/// fills 7 lanes, so side by side pays only from about as many leaves as that.
const MIN_SIDE_BY_SIDE: usize = 8;

/// BLAKE3 chunks in one leaf.
const CHUNKS_PER_LEAF: usize = CHUNK_SIZE / blake3::CHUNK_LEN;
const _: () = assert!(CHUNKS_PER_LEAF * blake3::CHUNK_LEN == CHUNK_SIZE);
const _: () = assert!(
    CHUNKS_PER_LEAF == 7,
    "the parent layout below is that of 7 chunks"
);

/// The BLAKE3 IV, the key of unkeyed hashing (the BLAKE3 specification, §2.2).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

// Domain flags of the BLAKE3 specification, §2.1.
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;

static PLATFORM: LazyLock<Platform> = LazyLock::new(Platform::detect);

/// Hashes the whole leaves of `chunks` (a multiple of [`CHUNK_SIZE`] bytes) and hands
/// each `BLAKE3(chunk)` to `sink`, in order.
pub(super) fn for_each_leaf(chunks: &[u8], mut sink: impl FnMut(Digest)) {
    debug_assert_eq!(chunks.len() % CHUNK_SIZE, 0, "only whole leaves");
    for batch in chunks.chunks(LEAF_BATCH * CHUNK_SIZE) {
        hash_leaves(batch.chunks_exact(CHUNK_SIZE), &mut sink);
    }
}

/// Hashes up to [`LEAF_BATCH`] leaves of [`CHUNK_SIZE`] bytes each, wherever each lies,
/// and hands each `BLAKE3(leaf)` to `sink`, in order. The leaves need not be contiguous:
/// a batch may join leaves gathered earlier with leaves still in the caller's buffer.
pub(super) fn hash_leaves<'a>(
    leaves: impl IntoIterator<Item = &'a [u8]>,
    mut sink: impl FnMut(Digest),
) {
    let mut batch: [&[u8]; LEAF_BATCH] = [&[]; LEAF_BATCH];
    let mut n = 0;
    for leaf in leaves {
        debug_assert_eq!(leaf.len(), CHUNK_SIZE, "only whole leaves");
        batch[n] = leaf;
        n += 1;
    }
    let batch = &batch[..n];
    if n < MIN_SIDE_BY_SIDE {
        for leaf in batch {
            sink(*blake3::hash(leaf).as_bytes());
        }
        return;
    }
    let mut hashes = [[0_u8; 32]; LEAF_BATCH];
    hash_batch(batch, &mut hashes[..n]);
    hashes[..n].iter().for_each(|&leaf| sink(leaf));
}

/// `out[i] = BLAKE3(leaves[i])` for up to [`LEAF_BATCH`] whole leaves.
fn hash_batch(leaves: &[&[u8]], out: &mut [Digest]) {
    let n = out.len();
    if n == 0 {
        return;
    }
    debug_assert_eq!(leaves.len(), n);
    let platform = *PLATFORM;

    // Chaining values of chunk j of every leaf: the same chunk counter in every lane.
    let mut chunk_cvs = [[0_u8; 32 * LEAF_BATCH]; CHUNKS_PER_LEAF];
    for (j, cvs) in chunk_cvs.iter_mut().enumerate() {
        // Lanes past n repeat the last leaf; only the first n are hashed.
        let inputs: [&[u8; blake3::CHUNK_LEN]; LEAF_BATCH] = std::array::from_fn(|i| {
            leaves[i.min(n - 1)][j * blake3::CHUNK_LEN..]
                .first_chunk()
                .unwrap_or(&[0; blake3::CHUNK_LEN])
        });
        platform.hash_many(
            &inputs[..n],
            &IV,
            j as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut cvs[..32 * n],
        );
    }
    let cv = |j: usize, i: usize| -> &[u8] { &chunk_cvs[j][32 * i..32 * (i + 1)] };

    // BLAKE3's tree over 7 chunks: ((c0 c1) (c2 c3)) ((c4 c5) c6).
    let level1 = parents::<3>(platform, n, PARENT, |i, k| [cv(2 * k, i), cv(2 * k + 1, i)]);
    let level1_cv = |k: usize, i: usize| -> &[u8] { &level1[k][32 * i..32 * (i + 1)] };
    let level2 = parents::<2>(platform, n, PARENT, |i, k| match k {
        0 => [level1_cv(0, i), level1_cv(1, i)],
        _ => [level1_cv(2, i), cv(6, i)],
    });
    let level2_cv = |k: usize, i: usize| -> &[u8] { &level2[k][32 * i..32 * (i + 1)] };
    let roots = parents::<1>(platform, n, PARENT | ROOT, |i, _| {
        [level2_cv(0, i), level2_cv(1, i)]
    });
    for (i, leaf) in out.iter_mut().enumerate() {
        leaf.copy_from_slice(&roots[0][32 * i..32 * (i + 1)]);
    }
}

/// `K` parent nodes of each of `n` leaves in one SIMD pass: node k of leaf i joins the
/// two children `children(i, k)`. Returns, per k, the `n` chaining values.
fn parents<'a, const K: usize>(
    platform: Platform,
    n: usize,
    flags: u8,
    children: impl Fn(usize, usize) -> [&'a [u8]; 2],
) -> [[u8; 32 * LEAF_BATCH]; K] {
    let mut blocks = [[[0_u8; blake3::BLOCK_LEN]; LEAF_BATCH]; K];
    for (k, row) in blocks.iter_mut().enumerate() {
        for (i, block) in row.iter_mut().take(n).enumerate() {
            let [left, right] = children(i, k);
            block[..32].copy_from_slice(left);
            block[32..].copy_from_slice(right);
        }
    }
    let mut out = [[0_u8; 32 * LEAF_BATCH]; K];
    for (row, cvs) in blocks.iter().zip(&mut out) {
        let inputs: [&[u8; blake3::BLOCK_LEN]; LEAF_BATCH] = std::array::from_fn(|i| &row[i]);
        platform.hash_many(
            &inputs[..n],
            &IV,
            0,
            IncrementCounter::No,
            flags,
            0,
            0,
            &mut cvs[..32 * n],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves_of(data: &[u8]) -> Vec<Digest> {
        let mut leaves = Vec::new();
        for_each_leaf(data, |leaf| leaves.push(leaf));
        leaves
    }

    #[test]
    fn every_leaf_is_the_plain_blake3_of_its_chunk() {
        // 1 to 2 batches and a bit: every lane count, a full batch, a batch and a tail.
        let data: Vec<u8> = (0..(2 * LEAF_BATCH + 3) * CHUNK_SIZE)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for n in 1..=2 * LEAF_BATCH + 3 {
            let part = &data[..n * CHUNK_SIZE];
            let expected: Vec<Digest> = part
                .chunks(CHUNK_SIZE)
                .map(|chunk| *blake3::hash(chunk).as_bytes())
                .collect();
            assert_eq!(leaves_of(part), expected, "{n} leaves");
        }
    }

    #[test]
    fn side_by_side_hashing_is_right_for_every_lane_count() {
        // Below MIN_SIDE_BY_SIDE for_each_leaf goes one by one; the batch must hold anyway.
        let data: Vec<u8> = (0..LEAF_BATCH * CHUNK_SIZE)
            .map(|i| (i % 253) as u8)
            .collect();
        for n in 1..=LEAF_BATCH {
            let mut out = [[0_u8; 32]; LEAF_BATCH];
            let leaves: Vec<&[u8]> = data[..n * CHUNK_SIZE].chunks(CHUNK_SIZE).collect();
            hash_batch(&leaves, &mut out[..n]);
            for (i, leaf) in out[..n].iter().enumerate() {
                let chunk = &data[i * CHUNK_SIZE..(i + 1) * CHUNK_SIZE];
                assert_eq!(leaf, blake3::hash(chunk).as_bytes(), "leaf {i} of {n}");
            }
        }
    }

    #[test]
    fn no_leaves_hash_nothing() {
        assert!(leaves_of(&[]).is_empty());
    }
}
