//! Writing a blob file, past the page cache where the file system allows it.
//!
//! A buffered write copies every byte into the page cache and the kernel later copies it
//! again to the disk; for a large upload that copy costs as much CPU as the Merkle tree.
//! With `O_DIRECT` the disk reads the batch straight from our buffer, so a batch is
//! allocated at a block boundary ([`Batch`]) and written at block-aligned offsets.
//! Whatever the direct path cannot take (a file system without `O_DIRECT`, such as
//! tmpfs before Linux 6.6 or some FUSE file systems; a device that refuses the
//! alignment; the tail of the content, which is not a whole block) is written buffered,
//! so the bytes on disk are the same either way.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::io_error;
use crate::store::DatastoreError;

/// Disk a put reserves ahead of the bytes that arrived, at most.
pub(crate) const RESERVE_AHEAD: u64 = 64 << 20;

/// Memory and file-offset alignment of direct writes: a multiple of every logical block
/// size in use (512 and 4096 bytes).
const ALIGN: usize = 4096;

/// A buffer whose bytes start at an [`ALIGN`] boundary, as direct writes need.
///
/// Safe code cannot ask the allocator for an alignment, so the buffer over-allocates by
/// one block and starts its window at the first aligned address inside.
#[derive(Debug)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Batch {
    /// A zeroed batch that can hold up to `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let buf = vec![0; capacity + ALIGN];
        // The buffer is never resized, so the window stays aligned for its whole life.
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self { buf, start, len: 0 }
    }

    /// Bytes this batch can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len() - ALIGN
    }

    /// The first `len` bytes of the window, to fill (`len` is clamped to the capacity).
    pub(crate) fn fill(&mut self, len: usize) -> &mut [u8] {
        self.len = len.min(self.capacity());
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Keeps the first `len` bytes of what [`Batch::fill`] handed out.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The batch's content.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// Writes the batches of a new blob file, each at its own offset, from any number of
/// threads at once: one direct write at a time leaves the disk idle between them (about
/// 1.2 GB/s here), a few in flight keep it busy (about 2 GB/s with four).
#[derive(Debug)]
pub(crate) struct BlobWriter {
    file: File,
    path: PathBuf,
    /// The length the file will have: what the sender announced.
    len: u64,
    /// How far the file's blocks are reserved (see [`BlobWriter::reserve_to`]).
    reserved: AtomicU64,
    direct: AtomicBool,
    /// Parts shorter than a block that came while writes were direct; written buffered
    /// by [`BlobWriter::finish`]. Only a batch that is not a whole number of blocks leaves
    /// one, and the offsets after it are unaligned, so this holds one part in practice.
    tails: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl BlobWriter {
    /// Takes a file opened for writing that will hold `len` bytes (the announced length);
    /// turns on direct writes if its file system has them.
    pub(crate) fn new(file: File, path: &Path, len: u64) -> Self {
        let reserved = file.metadata().map_or(0, |meta| meta.len());
        let direct = set_direct(&file, true).is_ok();
        Self {
            file,
            path: path.to_owned(),
            len,
            reserved: AtomicU64::new(reserved),
            direct: AtomicBool::new(direct),
            tails: Mutex::new(Vec::new()),
        }
    }

    /// Reserves the file's blocks (and sets its length) up to `end` and [`RESERVE_AHEAD`]
    /// beyond, never past its announced length; call before handing out a batch that ends
    /// at `end`, from one thread. ext4 serialises direct writes that grow a file (they take
    /// the inode lock exclusively), so the writes in flight would wait for each other; and
    /// reserving the whole announced length at once would let a peer that announces 4 GiB
    /// and sends nothing take 4 GiB of disk. Only an optimisation: a failure changes
    /// nothing, and a put whose content turns out shorter fails and removes the file.
    pub(crate) fn reserve_to(&self, end: u64) {
        let reserved = self.reserved.load(Ordering::Relaxed);
        if end <= reserved {
            return;
        }
        let target = end.saturating_add(RESERVE_AHEAD).min(self.len).max(end);
        preallocate(&self.file, reserved, target - reserved);
        self.reserved.store(target, Ordering::Relaxed);
    }

    /// Whether block-aligned writes go past the page cache.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Writes `bytes` at `offset`: the whole blocks direct when memory and offset are
    /// block-aligned, the rest buffered.
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), DatastoreError> {
        let aligned = self.direct.load(Ordering::Relaxed)
            && offset % ALIGN as u64 == 0
            && bytes.as_ptr().align_offset(ALIGN) == 0;
        if !aligned {
            self.buffered()?;
            return self.write_buffered(offset, bytes);
        }
        let whole = bytes.len() / ALIGN * ALIGN;
        if whole > 0 {
            match self.file.write_all_at(&bytes[..whole], offset) {
                Ok(()) => {}
                // The file system took the flag but not this write (alignment rules of
                // its own): the rest of the file goes buffered, this batch included.
                // Rewriting it whole covers whatever part the direct write got to.
                Err(e) if e.raw_os_error() == Some(EINVAL) => {
                    self.buffered()?;
                    return self.write_buffered(offset, bytes);
                }
                Err(e) => return Err(io_error("write", &self.path, e)),
            }
        }
        if whole < bytes.len() {
            let tail = (offset + whole as u64, bytes[whole..].to_vec());
            self.tails
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(tail);
        }
        Ok(())
    }

    /// The written file (a handle of its own), back in buffered mode, not yet synced.
    /// Call once every [`BlobWriter::write_at`] has returned.
    pub(crate) fn finish(&self) -> Result<File, DatastoreError> {
        self.buffered()?;
        let tails = std::mem::take(&mut *self.tails.lock().unwrap_or_else(PoisonError::into_inner));
        for (offset, bytes) in tails {
            self.write_buffered(offset, &bytes)?;
        }
        self.file
            .try_clone()
            .map_err(|e| io_error("dup", &self.path, e))
    }

    fn write_buffered(&self, offset: u64, bytes: &[u8]) -> Result<(), DatastoreError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| io_error("write", &self.path, e))?;
        start_writeback(&self.file, offset, bytes.len() as u64);
        Ok(())
    }

    /// Turns direct writes off for good. Direct writes already under way complete as
    /// they are; the pages of a range written one way are never written the other way.
    fn buffered(&self) -> Result<(), DatastoreError> {
        if self.direct.swap(false, Ordering::Relaxed) {
            set_direct(&self.file, false).map_err(|e| io_error("fcntl", &self.path, e))?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();
#[cfg(not(target_os = "linux"))]
const EINVAL: i32 = 22;

/// Turns `O_DIRECT` on or off for an open file; fails where the file system has no
/// direct I/O.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    fcntl_setfl(file, flags)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_: &File, on: bool) -> std::io::Result<()> {
    if on {
        Err(std::io::ErrorKind::Unsupported.into())
    } else {
        Ok(())
    }
}

/// Reserves `len` blocks of `file` from `offset` and extends its length over them.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, offset: u64, len: u64) {
    if len > 0 {
        let _ = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len);
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_: &File, _: u64, _: u64) {}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk now,
/// without waiting: the disk works while hashing goes on, and the final fsync has little
/// left to do. (An fsync per batch would wait for the disk's cache flush each time.)
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    // POSIX_FADV_DONTNEED starts writeback of the dirty range (and drops the pages once
    // clean: a stored blob is not read back soon). Only advice: a failure changes nothing.
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths that end on, just before and just after a block, and a tail alone.
    const SIZES: &[usize] = &[
        1,
        ALIGN - 1,
        ALIGN,
        ALIGN + 1,
        3 * ALIGN,
        1 << 20,
        (1 << 20) + 17,
    ];

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn write_batches(dir: &Path, batches: &[Vec<u8>]) -> Vec<u8> {
        let path = dir.join("blob");
        let file = File::create_new(&path).unwrap();
        let len = batches.iter().map(Vec::len).sum::<usize>() as u64;
        let writer = BlobWriter::new(file, &path, len);
        let mut offset = 0;
        for bytes in batches {
            let mut batch = Batch::with_capacity(bytes.len());
            batch.fill(bytes.len()).copy_from_slice(bytes);
            writer.reserve_to(offset + bytes.len() as u64);
            writer.write_at(offset, batch.bytes()).unwrap();
            offset += bytes.len() as u64;
        }
        writer.finish().unwrap().sync_all().unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn disk_is_reserved_as_bytes_arrive_not_for_the_announced_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let announced = 4 << 30;
        let writer = BlobWriter::new(File::create_new(&path).unwrap(), &path, announced);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        writer.reserve_to(1 << 20);
        let reserved = std::fs::metadata(&path).unwrap().len();
        // Where the file system reserves at all, no further than the bound ahead.
        assert!(reserved <= (1 << 20) + RESERVE_AHEAD, "{reserved}");
        // And never past the announced length.
        let small = dir.path().join("small");
        let writer = BlobWriter::new(File::create_new(&small).unwrap(), &small, 100);
        writer.reserve_to(50);
        assert!(std::fs::metadata(&small).unwrap().len() <= 100);
    }

    #[test]
    fn batch_window_is_aligned_and_clamped() {
        for capacity in [0, 1, ALIGN, 1 << 20] {
            let mut batch = Batch::with_capacity(capacity);
            assert_eq!(batch.capacity(), capacity);
            assert_eq!(batch.fill(capacity + 5).len(), capacity);
            assert_eq!(batch.bytes().as_ptr().align_offset(ALIGN), 0);
            batch.truncate(capacity / 2);
            assert_eq!(batch.bytes().len(), capacity / 2);
        }
    }

    #[test]
    fn file_holds_every_byte_for_every_mix_of_aligned_and_unaligned_batches() {
        let dir = tempfile::tempdir().unwrap();
        for &first in SIZES {
            for &second in SIZES {
                let batches = [pattern(first, 1), pattern(second, 2), pattern(ALIGN, 3)];
                let on_disk = write_batches(dir.path(), &batches);
                assert_eq!(
                    on_disk,
                    batches.concat(),
                    "batches {first} + {second} + {ALIGN}"
                );
                std::fs::remove_file(dir.path().join("blob")).unwrap();
            }
        }
    }

    #[test]
    fn unaligned_memory_is_written_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let writer = BlobWriter::new(File::create_new(&path).unwrap(), &path, 0);
        let bytes = pattern(2 * ALIGN + 1, 9);
        // One byte into an aligned window: the address is off the block boundary.
        let mut batch = Batch::with_capacity(bytes.len());
        batch.fill(bytes.len()).copy_from_slice(&bytes);
        writer.write_at(0, &batch.bytes()[1..]).unwrap();
        writer.write_at(2 * ALIGN as u64, &bytes[..1]).unwrap();
        writer.finish().unwrap();
        let mut expected = bytes[1..].to_vec();
        expected.push(bytes[0]);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn batches_written_out_of_order_from_many_threads_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let len = 16 * (64 << 10) + 100;
        let writer = BlobWriter::new(File::create_new(&path).unwrap(), &path, len);
        let batches: Vec<Vec<u8>> = (0..16).map(|i| pattern(64 << 10, i)).collect();
        let tail = pattern(100, 77);
        std::thread::scope(|threads| {
            for (i, bytes) in batches.iter().enumerate().rev() {
                let writer = &writer;
                threads.spawn(move || {
                    let mut batch = Batch::with_capacity(bytes.len());
                    batch.fill(bytes.len()).copy_from_slice(bytes);
                    writer
                        .write_at((i * bytes.len()) as u64, batch.bytes())
                        .unwrap();
                });
            }
            let (writer, tail) = (&writer, &tail);
            threads.spawn(move || writer.write_at(16 * (64 << 10), tail).unwrap());
        });
        writer.finish().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [batches.concat(), tail].concat()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn batches_land_on_tmpfs_too() {
        // tmpfs took O_DIRECT only in Linux 6.6: older kernels write it buffered.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let batches = [pattern(3 * ALIGN, 4), pattern(ALIGN + 9, 5)];
        assert_eq!(write_batches(dir.path(), &batches), batches.concat());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn direct_writes_are_used_where_the_file_system_has_them() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let writer = BlobWriter::new(File::create_new(&path).unwrap(), &path, 0);
        let direct = rustix::fs::OFlags::DIRECT.bits().cast_signed();
        let fs_has_direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(direct)
            .open(&path)
            .is_ok();
        assert_eq!(writer.is_direct(), fs_has_direct);
    }
}
