//! The Merkle core against its definition (docs/design.md §4) and the shared vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use domain_merkle::{
    CHUNK_SIZE, HashingReader, HashingWriter, MerkleBuilder, NODE_CONTEXT, ParseRootError,
    ROOT_HEX_LEN, Root, root_of,
};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The test data of the shared vectors: byte i = i mod 251 (a period prime to the chunk
/// size, so no two chunks are equal).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The tree written straight from its definition: recursive RFC 9162 split over the
/// leaf hashes, one-shot `blake3::derive_key` for nodes.
fn reference_root(data: &[u8]) -> Root {
    fn tree(leaves: &[[u8; 32]]) -> [u8; 32] {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let split = largest_power_of_two_below(leaves.len());
        let mut children = Vec::with_capacity(64);
        children.extend_from_slice(&tree(&leaves[..split]));
        children.extend_from_slice(&tree(&leaves[split..]));
        blake3::derive_key(NODE_CONTEXT, &children)
    }
    let leaves: Vec<[u8; 32]> = if data.is_empty() {
        vec![*blake3::hash(&[]).as_bytes()]
    } else {
        data.chunks(CHUNK_SIZE)
            .map(|chunk| *blake3::hash(chunk).as_bytes())
            .collect()
    };
    Root::from_bytes(tree(&leaves))
}

/// RFC 9162's split point for `n > 1` leaves.
fn largest_power_of_two_below(n: usize) -> usize {
    1 << (n - 1).ilog2()
}

#[test]
fn reference_split_puts_the_largest_power_of_two_below_n_on_the_left() {
    // The split rule of the reference, checked apart from hashing: k < n <= 2k.
    for n in 2_usize..=300 {
        let split = largest_power_of_two_below(n);
        assert!(
            split.is_power_of_two() && split < n && n <= 2 * split,
            "n = {n}"
        );
    }
}

/// Sizes where a chunked tree goes wrong first, each with its reason.
const INTERESTING_SIZES: &[(usize, &str)] = &[
    (0, "empty data: exactly one leaf, the empty chunk"),
    (1, "one byte: one short leaf"),
    (CHUNK_SIZE - 1, "one leaf one byte short of full"),
    (CHUNK_SIZE, "exactly one full leaf: no empty leaf after it"),
    (CHUNK_SIZE + 1, "a one-byte second leaf"),
    (2 * CHUNK_SIZE - 1, "two leaves, the second one byte short"),
    (2 * CHUNK_SIZE, "two full leaves: one node"),
    (
        2 * CHUNK_SIZE + 1,
        "three leaves: the odd one joins on the right",
    ),
    (3 * CHUNK_SIZE, "three full leaves"),
    (4 * CHUNK_SIZE - 1, "four leaves, the last short"),
    (4 * CHUNK_SIZE, "four leaves: a perfect tree of depth 2"),
    (
        4 * CHUNK_SIZE + 1,
        "five leaves: left subtree of 4, right of 1",
    ),
    (5 * CHUNK_SIZE, "five full leaves"),
    (
        7 * CHUNK_SIZE,
        "seven leaves: right subtree of 3 splits 2 + 1",
    ),
    (8 * CHUNK_SIZE - 1, "eight leaves, the last short"),
    (8 * CHUNK_SIZE, "eight leaves: perfect, depth 3"),
    (8 * CHUNK_SIZE + 1, "nine leaves"),
    (16 * CHUNK_SIZE - 1, "16 leaves, the last short"),
    (16 * CHUNK_SIZE, "16 leaves: perfect, depth 4"),
    (16 * CHUNK_SIZE + 1, "17 leaves"),
    (
        31 * CHUNK_SIZE + 17,
        "32 leaves, every level but the top partial",
    ),
    (
        32 * CHUNK_SIZE - 1,
        "32 leaves, the last short: the parallel threshold",
    ),
    (32 * CHUNK_SIZE, "32 leaves: perfect, depth 5"),
    (32 * CHUNK_SIZE + 1, "33 leaves"),
    (64 * CHUNK_SIZE - 1, "64 leaves, the last short"),
    (64 * CHUNK_SIZE, "64 leaves: perfect, depth 6"),
    (64 * CHUNK_SIZE + 1, "65 leaves"),
    (128 * CHUNK_SIZE - 1, "128 leaves, the last short"),
    (128 * CHUNK_SIZE, "128 leaves: perfect, depth 7"),
    (128 * CHUNK_SIZE + 1, "129 leaves"),
    (
        255 * CHUNK_SIZE,
        "255 leaves: every level holds one subtree",
    ),
    (256 * CHUNK_SIZE - 1, "256 leaves, the last short"),
    (256 * CHUNK_SIZE, "256 leaves: perfect, depth 8"),
    (
        256 * CHUNK_SIZE + 1,
        "257 leaves: a single leaf beside a perfect 256",
    ),
    (1 << 20, "1 MiB: 147 leaves, a batch of the CLI"),
];

/// The project's shared vectors, beside the repository when it is checked out in the
/// project's layout (CI lays it so).
fn shared_vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/merkle.json")
}

/// A copy of the shared vectors kept in the repository, so that a clone anywhere runs the
/// test; while the shared file is there, the copy must equal it.
const VENDORED_VECTORS: &str = include_str!("vectors/merkle.json");

/// The vectors to check: the shared file when it is there (the copy must not have drifted
/// from it), else the copy.
fn vectors_text() -> String {
    let path = shared_vectors_path();
    match std::fs::read_to_string(&path) {
        Ok(shared) => {
            assert_eq!(
                shared,
                VENDORED_VECTORS,
                "tests/vectors/merkle.json differs from {}: copy it again",
                path.display()
            );
            shared
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => VENDORED_VECTORS.to_owned(),
        Err(error) => panic!("cannot read {}: {error}", path.display()),
    }
}

#[derive(serde::Deserialize)]
struct VectorFile {
    chunk_size: usize,
    vectors: Vec<Vector>,
}

#[derive(serde::Deserialize)]
struct Vector {
    size: usize,
    leaves: u64,
    root: String,
}

#[test]
fn every_shared_vector_is_reproduced_by_every_path() {
    let text = vectors_text();
    let file: VectorFile = serde_json::from_str(&text).expect("merkle.json parses");
    assert_eq!(file.chunk_size, CHUNK_SIZE);
    assert!(!file.vectors.is_empty(), "merkle.json holds no vectors");
    for vector in &file.vectors {
        let expected: Root = vector.root.parse().expect("vector root parses");
        let data = pattern(vector.size);

        let mut sequential = MerkleBuilder::new();
        sequential.update(&data);
        assert_eq!(
            sequential.finalize(),
            expected,
            "update, size {}",
            vector.size
        );
        assert_eq!(
            sequential.leaf_count(),
            vector.leaves,
            "size {}",
            vector.size
        );

        let mut parallel = MerkleBuilder::new();
        parallel.update_parallel(&data);
        assert_eq!(
            parallel.finalize(),
            expected,
            "parallel, size {}",
            vector.size
        );
        assert_eq!(root_of(&data), expected, "root_of, size {}", vector.size);
        assert_eq!(
            reference_root(&data),
            expected,
            "reference, size {}",
            vector.size
        );
        assert_eq!(expected.to_string(), vector.root);
    }
}

#[test]
fn interesting_sizes_match_the_reference_on_every_path() {
    let data = pattern(
        INTERESTING_SIZES
            .iter()
            .map(|&(size, _)| size)
            .max()
            .unwrap(),
    );
    for &(size, reason) in INTERESTING_SIZES {
        let data = &data[..size];
        let expected = reference_root(data);
        assert_eq!(root_of(data), expected, "root_of: {size} ({reason})");

        let mut one_write = MerkleBuilder::new();
        one_write.update(data);
        assert_eq!(one_write.finalize(), expected, "update: {size} ({reason})");
        assert_eq!(one_write.len(), size as u64);
        assert_eq!(
            one_write.leaf_count(),
            size.div_ceil(CHUNK_SIZE).max(1) as u64,
            "{size} ({reason})"
        );

        // Writes that never line up with a chunk boundary.
        let mut odd_writes = MerkleBuilder::new();
        for piece in data.chunks(CHUNK_SIZE / 3 + 1) {
            odd_writes.update(piece);
        }
        assert_eq!(
            odd_writes.finalize(),
            expected,
            "odd writes: {size} ({reason})"
        );
    }
}

#[test]
fn a_single_chunk_root_is_the_plain_blake3_hash() {
    for size in [0, 1, 100, CHUNK_SIZE] {
        let data = pattern(size);
        assert_eq!(
            root_of(&data).as_bytes(),
            blake3::hash(&data).as_bytes(),
            "size {size}"
        );
    }
}

#[test]
fn two_chunk_root_is_the_derived_node_of_the_two_leaves() {
    let data = pattern(CHUNK_SIZE + 5);
    let mut children = Vec::new();
    children.extend_from_slice(blake3::hash(&data[..CHUNK_SIZE]).as_bytes());
    children.extend_from_slice(blake3::hash(&data[CHUNK_SIZE..]).as_bytes());
    let expected = blake3::derive_key("posemesh domain merkle node v1", &children);
    assert_eq!(root_of(&data).as_bytes(), &expected);
}

#[test]
fn an_inner_node_is_not_a_leaf_of_its_children_bytes() {
    // The derive-key mode separates nodes from leaves: a chunk holding two leaf hashes
    // does not hash to the node over them.
    let data = pattern(2 * CHUNK_SIZE);
    let mut children = Vec::new();
    children.extend_from_slice(blake3::hash(&data[..CHUNK_SIZE]).as_bytes());
    children.extend_from_slice(blake3::hash(&data[CHUNK_SIZE..]).as_bytes());
    assert_ne!(root_of(&data), root_of(&children));
}

#[test]
fn finalize_leaves_the_builder_usable() {
    let data = pattern(3 * CHUNK_SIZE + 10);
    let mut builder = MerkleBuilder::new();
    assert!(builder.is_empty());
    assert_eq!(builder.finalize(), root_of(&[]));
    builder.update(&data[..CHUNK_SIZE + 3]);
    assert_eq!(builder.finalize(), root_of(&data[..CHUNK_SIZE + 3]));
    builder.update(&data[CHUNK_SIZE + 3..]);
    assert_eq!(builder.finalize(), root_of(&data));
    assert_eq!(builder.finalize(), builder.clone().finalize());
    assert!(!builder.is_empty());
}

#[test]
fn truncating_keeps_the_whole_chunks_gathered_for_a_batch() {
    // 20 chunks and a bit, in writes smaller than a chunk: the builder holds up to a
    // batch of whole chunks unhashed when it is cut.
    let data = pattern(40 * CHUNK_SIZE);
    let fed = 20 * CHUNK_SIZE + 5;
    let mut builder = MerkleBuilder::new();
    for piece in data[..fed].chunks(1000) {
        builder.update(piece);
    }
    builder.truncate_to_chunks();
    assert_eq!(builder.len(), 20 * CHUNK_SIZE as u64);
    assert_eq!(builder.leaf_count(), 20);
    assert_eq!(builder.finalize(), root_of(&data[..20 * CHUNK_SIZE]));
    // The stream goes on from the cut as if the partial chunk had never come.
    builder.update(&data[20 * CHUNK_SIZE..]);
    assert_eq!(builder.finalize(), root_of(&data));
}

#[test]
fn builder_debug_shows_the_shape_not_the_bytes() {
    let mut builder = MerkleBuilder::default();
    builder.update(b"secret");
    let debug = format!("{builder:?}");
    assert!(debug.contains("len: 6"), "{debug}");
    assert!(!debug.contains("115"), "pending bytes leak into {debug}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_into_writes_gives_the_reference_root(
        len in 0_usize..40 * CHUNK_SIZE,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        parallel_mask in any::<u16>(),
        seed in any::<u8>(),
    ) {
        let data: Vec<u8> = pattern(len).into_iter().map(|b| b ^ seed).collect();
        let mut offsets: Vec<usize> = cuts.iter().map(|cut| cut.index(len + 1)).collect();
        offsets.push(0);
        offsets.push(len);
        offsets.sort_unstable();

        let mut builder = MerkleBuilder::new();
        for (i, pair) in offsets.windows(2).enumerate() {
            let piece = &data[pair[0]..pair[1]];
            // Mix both paths within one stream: they share one tree state.
            if parallel_mask & (1 << (i % 16)) == 0 {
                builder.update(piece);
            } else {
                builder.update_parallel(piece);
            }
            // Leaves gathered for a batch count and hash as if hashed already.
            let fed = &data[..pair[1]];
            prop_assert_eq!(builder.leaf_count(), fed.len().div_ceil(CHUNK_SIZE).max(1) as u64);
            prop_assert_eq!(builder.finalize(), reference_root(fed));
        }
        prop_assert_eq!(builder.len(), len as u64);
        prop_assert_eq!(builder.finalize(), reference_root(&data));
    }

    #[test]
    fn the_parallel_path_gives_the_reference_root(
        head in 0_usize..5 * CHUNK_SIZE,
        body_leaves in 0_usize..300,
        tail in 0_usize..CHUNK_SIZE,
    ) {
        // `head` leaves the builder at any leaf count and partial chunk before the
        // large parallel write.
        let data = pattern(head + body_leaves * CHUNK_SIZE + tail);
        let mut builder = MerkleBuilder::new();
        builder.update(&data[..head]).update_parallel(&data[head..]);
        prop_assert_eq!(builder.finalize(), reference_root(&data));
        prop_assert_eq!(root_of(&data), reference_root(&data));
    }

    #[test]
    fn root_text_round_trips(bytes in any::<[u8; 32]>()) {
        let root = Root::from_bytes(bytes);
        let text = root.to_string();
        prop_assert_eq!(text.len(), ROOT_HEX_LEN);
        prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(text.parse::<Root>(), Ok(root));
        prop_assert_eq!(root.as_bytes(), &bytes);
    }
}

#[test]
fn root_displays_lowercase_hex_and_debugs_with_its_type() {
    let root = Root::from_bytes([0xab; 32]);
    assert_eq!(root.to_string(), "ab".repeat(32));
    assert_eq!(format!("{root:?}"), format!("Root({})", "ab".repeat(32)));
    assert_eq!(format!("{root:>66}"), format!("  {}", "ab".repeat(32)));
}

#[test]
fn root_parse_rejects_wrong_lengths() {
    let valid = "0123456789abcdef".repeat(4);
    assert_eq!(
        valid[..63].parse::<Root>(),
        Err(ParseRootError::WrongLength { len: 63 })
    );
    assert_eq!(
        format!("{valid}0").parse::<Root>(),
        Err(ParseRootError::WrongLength { len: 65 })
    );
    assert_eq!(
        "".parse::<Root>(),
        Err(ParseRootError::WrongLength { len: 0 })
    );
}

#[test]
fn root_parse_rejects_non_hex_and_uppercase() {
    let valid = "0123456789abcdef".repeat(4);
    let at = |position: usize, with: &str| {
        let mut text = valid.clone();
        text.replace_range(position..position + with.len(), with);
        text
    };
    assert_eq!(
        at(10, "g").parse::<Root>(),
        Err(ParseRootError::InvalidChar {
            found: 'g',
            position: 10
        })
    );
    assert_eq!(
        at(63, "A").parse::<Root>(),
        Err(ParseRootError::InvalidChar {
            found: 'A',
            position: 63
        })
    );
    assert!(valid.to_uppercase().parse::<Root>().is_err());
    // A two-byte character keeps the byte length at 64 but is no digit.
    assert_eq!(
        at(0, "é").parse::<Root>(),
        Err(ParseRootError::InvalidChar {
            found: 'é',
            position: 0
        })
    );
    assert_eq!(valid.parse::<Root>().unwrap().to_string(), valid);
}

#[test]
fn root_parse_errors_name_the_problem() {
    let length = "abc".parse::<Root>().unwrap_err().to_string();
    assert!(length.contains("64") && length.contains('3'), "{length}");
    let uppercase = "A".repeat(64).parse::<Root>().unwrap_err().to_string();
    assert!(
        uppercase.contains("'A'") && uppercase.contains("uppercase"),
        "{uppercase}"
    );
}

/// Moves at most `max` bytes per poll and returns `Pending` every other poll, like a
/// congested socket.
struct Trickle<T> {
    inner: T,
    max: usize,
    stall: bool,
}

impl<T> Trickle<T> {
    fn new(inner: T, max: usize) -> Self {
        Self {
            inner,
            max,
            stall: false,
        }
    }

    /// Whether this poll stalls; the next one goes through.
    fn stall(&mut self, cx: &mut Context<'_>) -> bool {
        self.stall = !self.stall;
        if self.stall {
            cx.waker().wake_by_ref();
        }
        self.stall
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Trickle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall(cx) {
            return Poll::Pending;
        }
        let max = self.max.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(max));
        let poll = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let filled = limited.filled().len();
        buf.advance(filled);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Trickle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stall(cx) {
            return Poll::Pending;
        }
        let max = self.max.min(buf.len());
        Pin::new(&mut self.inner).poll_write(cx, &buf[..max])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn sender_and_receiver_agree_over_a_duplex_with_short_reads_and_writes() {
    let data = pattern(5 * CHUNK_SIZE + 123);
    let expected = root_of(&data);
    // A pipe smaller than a chunk forces partial writes and reads on both sides.
    let (client, server) = tokio::io::duplex(1000);

    let sending = {
        let data = data.clone();
        tokio::spawn(async move {
            let mut writer = HashingWriter::new(Trickle::new(client, 777));
            for piece in data.chunks(4096) {
                writer.write_all(piece).await.unwrap();
            }
            writer.shutdown().await.unwrap();
            (writer.root(), writer.bytes_written())
        })
    };
    let mut reader = HashingReader::new(Trickle::new(server, 333));
    let mut received = Vec::new();
    reader.read_to_end(&mut received).await.unwrap();

    let (sent_root, sent_len) = sending.await.unwrap();
    assert_eq!(received, data);
    assert_eq!(reader.bytes_read(), data.len() as u64);
    assert_eq!(sent_len, data.len() as u64);
    assert_eq!(reader.root(), expected);
    assert_eq!(sent_root, expected);
}

#[tokio::test]
async fn writer_hashes_only_the_bytes_the_inner_writer_accepted() {
    let data = pattern(CHUNK_SIZE + 500);
    let mut writer = HashingWriter::new(Trickle::new(Vec::new(), 1000));
    // One poll_write through a writer that takes at most 1000 bytes at a time.
    let accepted = writer.write(&data).await.unwrap();
    assert_eq!(accepted, 1000);
    assert_eq!(writer.bytes_written(), 1000);
    assert_eq!(writer.root(), root_of(&data[..1000]));
    assert_eq!(writer.into_inner().inner, data[..1000]);
}

#[tokio::test]
async fn vectored_writes_hash_the_accepted_prefix_across_slices() {
    let data = pattern(3000);
    let (a, b, c) = (&data[..1000], &data[1000..1500], &data[1500..]);
    let mut writer = HashingWriter::new(Vec::new());
    let slices = [
        io::IoSlice::new(a),
        io::IoSlice::new(b),
        io::IoSlice::new(c),
    ];
    let written = writer.write_vectored(&slices).await.unwrap();
    assert!(written > 0);
    assert_eq!(writer.bytes_written(), written as u64);
    assert_eq!(writer.root(), root_of(&data[..written]));
}

#[tokio::test]
async fn reader_over_a_take_hashes_exactly_the_announced_size() {
    // The receiver's pattern: exactly `size` raw bytes follow a frame on the stream.
    let data = pattern(3 * CHUNK_SIZE + 1);
    let mut stream = &data[..];
    let size = 2 * CHUNK_SIZE + 7;
    let mut reader = HashingReader::new((&mut stream).take(size as u64));
    tokio::io::copy(&mut reader, &mut tokio::io::sink())
        .await
        .unwrap();
    assert_eq!(reader.bytes_read(), size as u64);
    assert_eq!(reader.root(), root_of(&data[..size]));
    drop(reader);
    assert_eq!(stream, &data[size..]);
}

#[tokio::test]
async fn adapters_pass_the_other_direction_through_unhashed() {
    let (near, mut far) = tokio::io::duplex(64);
    let mut reader = HashingReader::new(near);
    reader.write_all(b"ack").await.unwrap();
    let mut ack = [0_u8; 3];
    far.read_exact(&mut ack).await.unwrap();
    assert_eq!(&ack, b"ack");
    assert_eq!(reader.bytes_read(), 0);

    let (near, mut far) = tokio::io::duplex(64);
    let mut writer = HashingWriter::new(near);
    far.write_all(b"reply").await.unwrap();
    let mut reply = [0_u8; 5];
    writer.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"reply");
    assert_eq!(writer.bytes_written(), 0);
    assert_eq!(writer.root(), root_of(&[]));
}
