//! What makes writing a large object cost little more than the copy itself.
//!
//! **Kept mappings.** Mapping a file costs time in proportion to its pages: building the page
//! tables of 100 MiB of tmpfs takes about 3 ms, tearing them down as long again, together as much
//! as copying the bytes on two cores. So a process that wrote a large file through a mapping
//! keeps that mapping (with a descriptor of the file) after sealing it, and when it takes the
//! same file from the pool again it writes through the mapping it kept, at the speed of the copy.
//! Nothing writes through a kept mapping except after its process took the file from the pool
//! under the file's exclusive lock, so readers never see it change.
//!
//! A kept mapping holds on to the pages of a file that is unlinked. So the store punches the
//! pages out of every large file it unlinks while nobody reads it (pooled files never are read;
//! see [`crate::ShmStore`]); it drops its own process's mapping of an object it unlinks while a
//! clone of its view still reads it, and [`crate::remove_store`] its process's mappings of a
//! removed store. Every process drops its mappings of unlinked files when it next writes or maps a
//! large object (looking at most every [`PRUNE_EVERY`]). What remains is a file unlinked while a
//! reader mapped it, or a store removed by another process: their pages stay in a process that
//! wrote them until that look. A process keeps at most [`MAX_KEPT`] mappings, of at most
//! [`MAX_KEPT_BYTES`] in all; the least recently used go first.
//!
//! **Copies on every core.** One core copies at about 6 GB/s here and two at twice that, so a
//! copy of [`PARALLEL_MIN`] bytes or more is split among up to [`MAX_THREADS`] threads.

use memmap2::MmapMut;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The most mappings a process keeps (a worker's outputs of a MiB each, say).
pub const MAX_KEPT: usize = 256;

/// The most bytes a process keeps mapped.
pub const MAX_KEPT_BYTES: u64 = 1 << 30;

/// How often, at most, a writer looks for mappings of unlinked files.
pub const PRUNE_EVERY: Duration = Duration::from_millis(20);

/// Copies of at least this many bytes are split among threads.
pub const PARALLEL_MIN: usize = 8 << 20;

/// The most threads one copy uses.
pub const MAX_THREADS: usize = 4;

/// A file's identity: (device, inode).
type Key = (u64, u64);

fn key_of(file: &File) -> io::Result<Key> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

struct Kept {
    /// Its descriptor: whether the file is still linked anywhere.
    file: File,
    map: MmapMut,
    /// When it was last kept, for least-recently-used order.
    tick: u64,
}

#[derive(Default)]
struct Cache {
    kept: HashMap<Key, Kept>,
    /// The bytes `kept` maps.
    bytes: u64,
    ticks: u64,
    /// Writes that went through a kept mapping.
    hits: u64,
    /// When the mappings of unlinked files were last dropped.
    pruned: Option<Instant>,
}

impl Cache {
    fn remove(&mut self, key: Key) -> Option<Kept> {
        let kept = self.kept.remove(&key)?;
        self.bytes -= kept.map.len() as u64;
        Some(kept)
    }

    fn insert(&mut self, key: Key, kept: Kept) {
        self.remove(key);
        self.bytes += kept.map.len() as u64;
        self.kept.insert(key, kept);
    }

    /// Drops the mappings of files no longer linked (their pages would be held for nothing), at
    /// most once per [`PRUNE_EVERY`]: one look costs a system call per mapping.
    fn prune(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.pruned.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.pruned = Some(Instant::now());
        self.kept.retain(|_, k| k.file.metadata().is_ok_and(|m| m.nlink() > 0));
        self.bytes = self.kept.values().map(|k| k.map.len() as u64).sum();
    }
}

#[cfg(not(test))]
fn cache() -> std::sync::MutexGuard<'static, Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    // A panic while the lock was held left nothing half done that matters: at worst the byte count
    // is off until the next look for unlinked files.
    CACHE.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Tests run side by side in one process: each thread has its own cache, so that one test's
/// writes neither evict another's mappings nor count as its hits.
#[cfg(test)]
fn cache() -> std::sync::MutexGuard<'static, Cache> {
    thread_local! {
        static CACHE: &'static Mutex<Cache> = Box::leak(Box::default());
    }
    CACHE.with(|c| c.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Takes the mapping this process kept of `file`, if it covers `len` bytes (a shorter one is
/// dropped). The caller must hold `file`'s exclusive lock, having taken it from the pool.
pub(crate) fn take(file: &File, len: u64) -> Option<MmapMut> {
    let key = key_of(file).ok()?;
    let mut cache = cache();
    let kept = cache.remove(key)?;
    let fits = kept.map.len() as u64 >= len;
    cache.hits += u64::from(fits);
    drop(cache);
    fits.then_some(kept.map)
}

/// Keeps `map`, a writable mapping of `file`, for this process's next write into the file. The
/// caller must hold no lock on `file` (the descriptor is kept, and with it any lock it holds).
pub(crate) fn keep(file: File, map: MmapMut) {
    let Ok(key) = key_of(&file) else { return };
    if map.len() as u64 > MAX_KEPT_BYTES {
        return;
    }
    let mut cache = cache();
    cache.prune();
    cache.ticks += 1;
    let tick = cache.ticks;
    cache.insert(key, Kept { file, map, tick });
    while cache.kept.len() > MAX_KEPT || cache.bytes > MAX_KEPT_BYTES {
        let Some(oldest) = cache.kept.iter().min_by_key(|(_, k)| k.tick).map(|(key, _)| *key) else { break };
        cache.remove(oldest);
    }
}

/// Whether this process keeps a mapping of the file `ino` of device `dev`.
pub(crate) fn holds(dev: u64, ino: u64) -> bool {
    cache().kept.contains_key(&(dev, ino))
}

/// Drops this process's mapping of `file`, which is about to be unlinked.
pub(crate) fn forget(file: &File) {
    if let Ok(key) = key_of(file) {
        cache().remove(key);
    }
}

/// Drops the mappings of files no longer linked (at most once per [`PRUNE_EVERY`]).
pub(crate) fn prune() {
    cache().prune();
}

/// Drops the mappings of files no longer linked, now.
pub(crate) fn prune_now() {
    let mut cache = cache();
    cache.pruned = None;
    cache.prune();
}

/// How many mappings this process keeps, and of how many bytes.
pub fn kept() -> (usize, u64) {
    let cache = cache();
    (cache.kept.len(), cache.bytes)
}

/// How many writes went through a mapping kept from an earlier one.
pub fn hits() -> u64 {
    cache().hits
}

/// The threads a copy may use: the cores this process may run on, at most [`MAX_THREADS`].
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS))
}

/// Copies `src` into `dst` (of the same length), on several threads when it is large.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    let threads = if src.len() >= PARALLEL_MIN { threads() } else { 1 };
    if threads <= 1 {
        dst.copy_from_slice(src);
        return;
    }
    assert_eq!(dst.len(), src.len(), "a copy between slices of different lengths");
    // Parts of whole pages (of the destination, when it starts on a page).
    let chunk = src.len().div_ceil(threads).next_multiple_of(4096);
    type Part<'a> = Mutex<Option<(&'a mut [u8], &'a [u8])>>;
    let parts: Vec<Part> = dst.chunks_mut(chunk).zip(src.chunks(chunk)).map(|p| Mutex::new(Some(p))).collect();
    let run = |part: &Part| {
        if let Some((d, s)) = part.lock().unwrap_or_else(|e| e.into_inner()).take() {
            d.copy_from_slice(s);
        }
    };
    std::thread::scope(|scope| {
        for part in &parts[1..] {
            // A thread that cannot be had leaves its part to this one.
            if std::thread::Builder::new().spawn_scoped(scope, || run(part)).is_err() {
                run(part);
            }
        }
        run(&parts[0]);
    });
}

/// The first `len` bytes of `map`, made without a reference to the whole mapping: a mapping kept
/// from a longer file reaches past the end of the file it maps now.
pub(crate) fn head_mut(map: &mut MmapMut, len: u64) -> &mut [u8] {
    let len = usize::try_from(len).expect("a mapped object fits in memory").min(map.len());
    // SAFETY: the first `len` bytes of a live mapping this borrow holds exclusively.
    unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr(), len) }
}

/// Writes into a mapped object of a fixed size; writing more is an error.
pub(crate) struct MapWriter<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl<'a> MapWriter<'a> {
    pub(crate) fn new(bytes: &'a mut [u8]) -> MapWriter<'a> {
        MapWriter { bytes, at: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> usize {
        self.at
    }
}

impl io::Write for MapWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(to) = self.bytes.get_mut(self.at..self.at + buf.len()) else {
            return Err(io::Error::other(format!(
                "more bytes were written than the {} announced ({} then {} more)",
                self.bytes.len(),
                self.at,
                buf.len()
            )));
        };
        copy(to, buf);
        self.at += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_parallel_copy_of_an_odd_length_copies_every_byte_in_place() {
        let len = PARALLEL_MIN + 12_345;
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; len];
        copy(&mut dst, &src);
        assert!(dst == src, "the copy differs");
        let mut small = [0u8; 3];
        copy(&mut small, &[1, 2, 3]);
        assert_eq!(small, [1, 2, 3]);
    }

    #[test]
    fn a_map_writer_refuses_bytes_past_the_announced_size_and_keeps_what_fit() {
        let mut bytes = [0u8; 4];
        let mut w = MapWriter::new(&mut bytes);
        w.write_all(&[1, 2, 3]).unwrap();
        let err = w.write_all(&[4, 5]).expect_err("wrote past the end");
        assert!(err.to_string().contains("than the 4 announced"), "{err}");
        assert_eq!(w.written(), 3);
        assert_eq!(bytes, [1, 2, 3, 0]);
    }
}
