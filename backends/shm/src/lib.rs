//! A node's object store in shared memory.
//!
//! Each sealed object is one file in the store's directory (a tmpfs such as `/dev/shm`, so the
//! bytes live in memory). A writer creates the object at its final size, fills a writable mapping
//! and seals it; sealing renames the file into place, so a reader never sees a partial object.
//! Readers, the daemon and the worker processes of the same node alike, map the file read-only:
//! a read copies nothing. Deleting an object that a reader still maps is safe: the pages stay
//! until the last mapping goes.
//!
//! The store enforces its capacity (a create that does not fit is refused with the numbers); what
//! to keep, evict or free is the node machine's decision, never the store's.
//!
//! **Freed pages are used again.** Allocating fresh tmpfs pages costs more than copying into
//! them, so a deleted object of [`RECYCLE_MIN`] bytes or more is not unlinked but moved into the
//! store's pool (`.free/`, its files named by their size), as long as nobody maps it; the next
//! large write, by the node or by a worker or driver of the node, takes the pooled file that fits
//! best, cuts it to size and writes over pages that already exist. The pool holds at most an
//! eighth of the capacity (the files freed first leave it to make room for those freed last),
//! counts against the capacity, and is emptied first when room runs out.
//! A writer keeps its mapping of each large file it wrote, so that writing into that file again
//! costs only the copy, which large writes spread over every core ([`warm`]); the store punches
//! the pages out of a large file it unlinks while nobody reads it, so that a kept mapping never
//! holds them.
//!
//! Readers say that they map a file by holding a shared `flock` on it for as long as their view
//! lives (only for objects large enough to be pooled: only their views keep a descriptor). A file
//! is pooled, and a pooled file taken, only under an exclusive lock got without waiting; the store
//! pools only the file it sealed as the object (by inode: another writer of the same object may
//! have put its own in place since), and only once no clone of its own view is left. So a file
//! anyone maps is never written again. A reader that opened an object's file just as it was
//! pooled finds, once it holds its lock, that the object's name no longer leads to that file, and
//! reports the object missing rather than read bytes that may change.

use keel_kernel::ObjectId;
use memmap2::{Mmap, MmapMut};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod warm;

/// Why the store refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not enough room.
    #[error("the object store is full: {object} needs {needed} bytes, {free} of {capacity} are free")]
    Full {
        /// The object.
        object: ObjectId,
        /// Its size.
        needed: u64,
        /// Free bytes.
        free: u64,
        /// The capacity.
        capacity: u64,
    },
    /// The object is already sealed or being written.
    #[error("object {0} already exists in the store")]
    Exists(ObjectId),
    /// A file that should hold an object does not match what was reported.
    #[error("object {object} in the store has {found} bytes, not the {expected} reported")]
    SizeMismatch {
        /// The object.
        object: ObjectId,
        /// The size reported.
        expected: u64,
        /// The size found.
        found: u64,
    },
    /// The file system failed.
    #[error("object store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Freed objects of at least this many bytes keep their pages for later writes (see the module's
/// documentation); smaller ones are unlinked.
pub const RECYCLE_MIN: u64 = 256 << 10;

/// The pool of freed files, within a store's directory.
const POOL: &str = ".free";

/// A read-only view of a sealed object's bytes.
#[derive(Debug)]
pub enum View {
    /// A zero-length object (a file of zero bytes cannot be mapped).
    Empty,
    /// The mapped file; for a reader's view of an object that may be pooled once freed, also the
    /// file itself, whose shared lock says it is mapped.
    Mapped(Mmap, Option<File>),
}

impl Deref for View {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            View::Empty => &[],
            View::Mapped(m, _) => m,
        }
    }
}

/// Removes a store's directory `dir` (or a directory of stores) and everything in it, and this
/// process's kept mappings of its files (see [`warm`]; another process drops its own when it
/// next writes or maps a large object).
pub fn remove_store(dir: &Path) -> io::Result<()> {
    let removed = std::fs::remove_dir_all(dir);
    warm::prune_now();
    removed
}

/// Maps the sealed object `object` of the store in `dir` (for worker processes, which know the
/// directory but not the store).
pub fn map(dir: &Path, object: ObjectId) -> Result<View, StoreError> {
    // A process that only reads (an idle worker's arguments) still lets go of stale mappings.
    warm::prune();
    let path = path_of(dir, object);
    let file = File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
    map_file(file, &path, Lock::Shared)
}

/// Whether a view takes the shared lock that keeps its file out of the pool.
#[derive(Clone, Copy, PartialEq)]
enum Lock {
    /// A reader's view: an object of [`RECYCLE_MIN`] bytes or more is locked while it is mapped.
    Shared,
    /// The store's own view: the store pools a file only when no clone of its view is left.
    Owner,
}

/// Maps `file`, found at `path`. A reader's view of an object that may be pooled holds a shared
/// lock, taken after checking that `path` still leads to the file (it was not pooled, or
/// replaced, between the opening and the lock). Only such objects hold a descriptor while mapped.
fn map_file(file: File, path: &Path, lock: Lock) -> Result<View, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let gone = || io(io::Error::new(io::ErrorKind::NotFound, "the object was deleted as it was opened"));
    let mut meta = file.metadata().map_err(io)?;
    // Only files of that size are pooled, and a pooled file is only ever cut to that size or more.
    let locked = lock == Lock::Shared && meta.len() >= RECYCLE_MIN;
    if locked {
        if !try_lock(&file, libc::LOCK_SH) {
            return Err(gone());
        }
        if std::fs::metadata(path).map(|m| m.ino()).ok() != Some(meta.ino()) {
            return Err(gone());
        }
        meta = file.metadata().map_err(io)?;
    }
    if meta.len() == 0 {
        return Ok(View::Empty);
    }
    // SAFETY: a file is written again only after it was pooled, under an exclusive lock that
    // cannot be had while a reader's view holds its shared one, and only when the store's own
    // views of it are gone.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(View::Mapped(map, locked.then_some(file)))
}

/// Raises this process's soft limit on open files to its hard limit, once: every live reader's
/// view of an object of [`RECYCLE_MIN`] bytes or more holds a descriptor, and the usual soft limit
/// (1,024) is soon reached by a program that keeps many. Returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(raise_to_hard_limit)
}

/// Raises the soft limit on open files to the hard one (bounded by what the kernel allows a
/// process, should the hard limit be unlimited); returns the soft limit now in force.
fn raise_to_hard_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one struct this function owns.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(limit.rlim_max);
        let want = limit.rlim_max.min(most);
        if limit.rlim_cur < want {
            let raised = libc::rlimit { rlim_cur: want, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Takes `how` (`LOCK_SH` or `LOCK_EX`) on `file` if that needs no waiting.
fn try_lock(file: &File, how: libc::c_int) -> bool {
    // SAFETY: a plain call on a descriptor `file` owns.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(file), how | libc::LOCK_NB) == 0 }
}

/// Renames `from` to `to` unless `to` exists.
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The pooled files of the store in `dir`: (size, name).
fn pooled(dir: &Path) -> Vec<(u64, std::ffi::OsString)> {
    let Ok(entries) = std::fs::read_dir(dir.join(POOL)) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let size = name.to_str()?.split('.').next()?.parse().ok()?;
            Some((size, name))
        })
        .collect()
}

/// Takes a pooled file of the store in `dir` for an object of `size` bytes: one of exactly its
/// size that this process keeps mapped (see [`warm`]) if the pool has one, else the smallest that
/// holds it (at most four times its size), else the largest. It is renamed to `to` (which must
/// not exist), locked exclusively and cut to `size`; returned with the size it had in the pool.
/// None when the pool has none to give.
fn claim(dir: &Path, size: u64, to: &Path) -> Option<(File, u64)> {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let pool = dir.join(POOL);
    let dev = std::fs::metadata(&pool).ok()?.dev();
    let mut files = Vec::new();
    let mut tries = 0;
    for entry in std::fs::read_dir(&pool).ok()?.flatten() {
        let name = entry.file_name();
        let Some(had) = name.to_str().and_then(|n| n.split('.').next()?.parse::<u64>().ok()) else { continue };
        // The best there is: taken at once, without reading the rest of the pool.
        if had == size && tries < 4 && warm::holds(dev, entry.ino()) {
            tries += 1;
            if let Some(file) = take_pooled(&pool.join(&name), size, to) {
                return Some((file, had));
            }
            continue;
        }
        // Not one that would be cut to less than a quarter: its pages are worth more to a later
        // write of its size than to this one.
        if had / 4 <= size {
            files.push((had, name));
        }
    }
    // Those that hold it, smallest first; then the others, largest first.
    files.sort_by_key(|(s, _)| if *s >= size { (0, *s) } else { (1, u64::MAX - *s) });
    for (had, name) in files.into_iter().take(4usize.saturating_sub(tries)) {
        if let Some(file) = take_pooled(&pool.join(&name), size, to) {
            return Some((file, had));
        }
    }
    None
}

/// Takes the pooled file `from` for an object of `size` bytes (see [`claim`]).
fn take_pooled(from: &Path, size: u64, to: &Path) -> Option<File> {
    // Taken by another writer meanwhile (or `to` exists: the fresh path says so).
    rename_new(from, to).ok()?;
    let taken = OpenOptions::new().read(true).write(true).open(to).ok().filter(|f| try_lock(f, libc::LOCK_EX));
    match taken {
        Some(file) if file.set_len(size).is_ok() => Some(file),
        _ => {
            let _ = std::fs::remove_file(to);
            None
        }
    }
}

/// The file of a sealed object.
pub fn path_of(dir: &Path, object: ObjectId) -> PathBuf {
    dir.join(format!("{}-{}", object.task.0, object.index))
}

/// Where an object is written before it is sealed.
pub fn partial_path_of(dir: &Path, object: ObjectId) -> PathBuf {
    dir.join(format!(".{}-{}.partial", object.task.0, object.index))
}

/// The file in a store's directory that its owner holds locked while the store lives.
const OWNER: &str = ".owner";

/// Removes the store directories in `base` left by processes that died without cleaning up (a
/// node killed outright leaves its objects in memory until someone deletes them): those named
/// `{prefix}{pid}` or `{prefix}{pid}-...` whose process is not running here and whose owner's lock
/// is free (a process of another pid namespace sharing this directory still holds it). Returns
/// how many went.
pub fn sweep_orphans(base: &Path, prefix: &str) -> usize {
    use std::os::fd::AsRawFd;
    let Ok(entries) = std::fs::read_dir(base) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let Ok(pid) = rest.split('-').next().unwrap_or_default().parse::<u32>() else { continue };
        if Path::new("/proc").join(pid.to_string()).exists() || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // The lock, held until the directory is gone, also keeps two sweepers apart.
        let owner = File::open(entry.path().join(OWNER)).ok();
        // SAFETY: a plain call on a descriptor this function owns.
        let free =
            owner.as_ref().is_none_or(|f| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0);
        if free && remove_store(&entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes and seals `object` in the store directory `dir` from another process than the one
/// that owns the store (a worker); the owner then [`ShmStore::adopt`]s it.
pub fn write_sealed(dir: &Path, object: ObjectId, bytes: &[u8]) -> Result<(), StoreError> {
    write_sealed_with(dir, object, bytes.len() as u64, |w| w.write_all(bytes))
}

/// Writes and seals `object` of `size` bytes in the store directory `dir`: `fill` writes the
/// bytes (through a buffer; large slices go straight to the file, one copy into shared memory,
/// where readers will map them). The owner then [`ShmStore::adopt`]s it. A failed `fill`, or one
/// that writes other than `size` bytes, leaves nothing.
pub fn write_sealed_with(
    dir: &Path,
    object: ObjectId,
    size: u64,
    fill: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> Result<(), StoreError> {
    /// Counts what goes through.
    struct Counted<W>(W, u64);
    impl<W: io::Write> io::Write for Counted<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.0.write(buf)?;
            self.1 += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    /// Removes the partial file unless it was sealed, even when `fill` panics.
    struct Partial(PathBuf);
    impl Drop for Partial {
        fn drop(&mut self) {
            if !self.0.as_os_str().is_empty() {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
    let partial = partial_path_of(dir, object);
    let mut guard = None;
    let written = (|| {
        let fresh = || OpenOptions::new().write(true).create_new(true).open(&partial);
        if size >= RECYCLE_MIN {
            warm::prune();
        }
        let claimed = (size >= RECYCLE_MIN).then(|| claim(dir, size, &partial)).flatten();
        let reused = claimed.is_some();
        let file = match claimed {
            Some((file, _)) => file,
            None => match fresh() {
                // A writer of this object died before it sealed it (a retried attempt finds its
                // file): what it left goes.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && clear_abandoned(&partial) => fresh()?,
                made => made?,
            },
        };
        // Held while the file is written: a partial file nobody holds was left by a dead writer.
        try_lock(&file, libc::LOCK_EX);
        guard = Some(Partial(partial.clone()));
        let (count, map) = if reused {
            // Its pages exist: through a mapping (the one this process kept, if any), the write
            // is one copy, on every core.
            let mut map = match warm::take(&file, size) {
                Some(map) => map,
                // SAFETY: the partial file is this writer's alone until it is sealed.
                None => unsafe { memmap2::MmapOptions::new().len(size as usize).populate().map_mut(&file) }?,
            };
            let mut out = warm::MapWriter::new(warm::head_mut(&mut map, size));
            fill(&mut out)?;
            (out.written() as u64, Some(map))
        } else {
            // Writing allocates a tmpfs's pages about twice as fast as faulting them in a mapping.
            let mut out = Counted(io::BufWriter::with_capacity(1 << 20, &file), 0);
            fill(&mut out)?;
            io::Write::flush(&mut out)?;
            (out.1, None)
        };
        if count != size {
            return Err(io::Error::other(format!("{count} bytes were written, not the {size} announced")));
        }
        // Readers must find the file free once it is in place.
        // SAFETY: a plain call on a descriptor `file` owns.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_UN) };
        Ok((file, map))
    })();
    let (file, map) = match written {
        Ok(done) => done,
        Err(source) => return Err(StoreError::Io { path: partial, source }),
    };
    let path = path_of(dir, object);
    std::fs::rename(&partial, &path).map_err(|source| StoreError::Io { path, source })?;
    if let Some(g) = guard.as_mut() {
        g.0 = PathBuf::new();
    }
    if let Some(map) = map {
        warm::keep(file, map);
    }
    Ok(())
}

/// Unlinks the file at `path`. When nobody reads it (its exclusive lock is free) and it is the
/// file expected (`inode`, when given), its pages are punched out first: a kept mapping of it
/// (see [`warm`]), in this process or another, would otherwise hold them once it is gone.
fn discard(path: &Path, inode: Option<u64>) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        warm::forget(&file);
        let meta = file.metadata().ok().filter(|m| inode.is_none_or(|i| m.ino() == i));
        if let Some(meta) = meta {
            // Locked first, then checked to be still at `path` (a writer may have taken it from
            // the pool in between; it finds the lock taken and gives it up).
            let unread = try_lock(&file, libc::LOCK_EX)
                && std::fs::metadata(path).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
            if unread && meta.len() > 0 {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
                // SAFETY: a plain call on a descriptor `file` owns. A failure (a file system
                // without holes) leaves the pages to go with the last mapping, as before.
                unsafe {
                    libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, meta.len() as i64)
                };
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// How long a partial file nobody holds must have gone unwritten before it counts as abandoned
/// (a writer locks its file just after making it: this covers the moment in between).
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes the partial file at `path` if its writer is gone: nobody holds its lock and it has
/// not been written to for [`ABANDONED_AFTER`]. Whoever holds its lock is the only one who may
/// remove it, and does so only while `path` still leads to it.
fn clear_abandoned(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = File::open(path) else { return false };
    if !try_lock(&file, libc::LOCK_EX) {
        return false;
    }
    let Ok(meta) = file.metadata() else { return false };
    let idle = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= ABANDONED_AFTER);
    let same = std::fs::metadata(path).is_ok_and(|m| m.ino() == meta.ino());
    idle && same && std::fs::remove_file(path).is_ok()
}

/// An object being written.
pub struct Creating {
    object: ObjectId,
    size: u64,
    file: File,
    map: Option<MmapMut>,
}

impl Creating {
    /// The object.
    pub fn object(&self) -> ObjectId {
        self.object
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self.map.as_mut() {
            // A mapping kept from an earlier write may be longer (past the file's end).
            Some(m) => warm::head_mut(m, self.size),
            None => &mut [],
        }
    }
}

struct Held {
    size: u64,
    view: Arc<View>,
    /// The sealed file's inode: only that file is pooled when the object goes (another writer of
    /// the same object may have replaced it at its path since).
    inode: u64,
}

/// The inode of `file`.
fn inode_of(file: &File) -> io::Result<u64> {
    Ok(std::os::unix::fs::MetadataExt::ino(&file.metadata()?))
}

/// The store of one node.
pub struct ShmStore {
    dir: PathBuf,
    capacity: u64,
    /// Sealed bytes plus bytes reserved by objects being written.
    used: u64,
    sealed: BTreeMap<ObjectId, Held>,
    creating: BTreeMap<ObjectId, u64>,
    /// Bytes in the pool, as far as the store knows: writers of other processes take files from
    /// it unseen, so it may be more (see [`ShmStore::recount_pool`]).
    pooled: u64,
    /// The number in the next pooled file's name.
    next_pooled: u64,
    /// Locked while the store lives (see [`sweep_orphans`]).
    _owner: File,
}

impl ShmStore {
    /// A store in `dir` holding at most `capacity` bytes. The directory is emptied first: a
    /// restarted daemon's old objects are not its own any more.
    pub fn open(dir: &Path, capacity: u64) -> Result<ShmStore, StoreError> {
        let io = |source| StoreError::Io { path: dir.to_path_buf(), source };
        if dir.exists() {
            remove_store(dir).map_err(io)?;
        }
        std::fs::create_dir_all(dir.join(POOL)).map_err(io)?;
        let owner = File::create(dir.join(OWNER)).map_err(io)?;
        // SAFETY: a plain call on a descriptor this function owns.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&owner), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io(io::Error::last_os_error()));
        }
        Ok(ShmStore {
            dir: dir.to_path_buf(),
            capacity,
            used: 0,
            sealed: BTreeMap::new(),
            creating: BTreeMap::new(),
            pooled: 0,
            next_pooled: 0,
            _owner: owner,
        })
    }

    /// The most the pool holds.
    fn pool_limit(&self) -> u64 {
        self.capacity / 8
    }

    /// Counts the pool's bytes again.
    fn recount_pool(&mut self) {
        self.pooled = pooled(&self.dir).iter().map(|(size, _)| size).sum();
    }

    /// Unlinks every pooled file (the pages go once no one maps them).
    fn empty_pool(&mut self) {
        for (_, name) in pooled(&self.dir) {
            discard(&self.dir.join(POOL).join(name), None);
        }
        self.pooled = 0;
    }

    /// Unlinks the pool's files that went into it first until it holds at most `bytes`: the
    /// files freed last are the likeliest to fit the next writes.
    fn shrink_pool_to(&mut self, bytes: u64) {
        let mut files: Vec<(u64, u64, std::ffi::OsString)> = pooled(&self.dir)
            .into_iter()
            .map(|(size, name)| {
                let order = name.to_str().and_then(|n| n.split('.').nth(1)?.parse().ok()).unwrap_or(0);
                (order, size, name)
            })
            .collect();
        files.sort();
        for (_, size, name) in files {
            if self.pooled <= bytes {
                break;
            }
            discard(&self.dir.join(POOL).join(name), None);
            self.pooled = self.pooled.saturating_sub(size);
        }
    }

    /// Bytes kept in the pool for later writes (at most an eighth of the capacity).
    pub fn pooled(&self) -> u64 {
        self.pooled
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes sealed or reserved.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Its capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sealed objects.
    pub fn len(&self) -> usize {
        self.sealed.len()
    }

    /// Whether nothing is sealed.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty()
    }

    /// Whether `object` is sealed here.
    pub fn contains(&self, object: ObjectId) -> bool {
        self.sealed.contains_key(&object)
    }

    fn reserve(&mut self, object: ObjectId, size: u64) -> Result<(), StoreError> {
        if self.sealed.contains_key(&object) || self.creating.contains_key(&object) {
            return Err(StoreError::Exists(object));
        }
        // Pooled pages count against the capacity; they go before a write is refused.
        if size > self.capacity.saturating_sub(self.used + self.pooled) {
            self.recount_pool();
            if size > self.capacity.saturating_sub(self.used + self.pooled) {
                self.empty_pool();
            }
        }
        let free = self.capacity.saturating_sub(self.used);
        if size > free {
            return Err(StoreError::Full { object, needed: size, free, capacity: self.capacity });
        }
        self.used += size;
        self.creating.insert(object, size);
        Ok(())
    }

    /// Starts writing `object` of `size` bytes (reserving them).
    pub fn create(&mut self, object: ObjectId, size: u64) -> Result<Creating, StoreError> {
        self.reserve(object, size)?;
        let path = partial_path_of(&self.dir, object);
        let made = (|| {
            if size >= RECYCLE_MIN {
                warm::prune();
            }
            let (file, kept) = match (size >= RECYCLE_MIN).then(|| claim(&self.dir, size, &path)).flatten() {
                Some((file, had)) => {
                    self.pooled = self.pooled.saturating_sub(had);
                    let kept = warm::take(&file, size);
                    (file, kept)
                }
                None => {
                    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
                    file.set_len(size)?;
                    (file, None)
                }
            };
            let map = match kept {
                Some(map) => Some(map),
                None if size == 0 => None,
                // SAFETY: the partial file is this writer's alone until it is sealed. Its pages
                // are mapped in one go: faulting them in one by one costs twice as much.
                None => Some(unsafe { memmap2::MmapOptions::new().len(size as usize).populate().map_mut(&file) }?),
            };
            Ok::<_, io::Error>(Creating { object, size, file, map })
        })();
        made.map_err(|source| {
            self.unreserve(object);
            let _ = std::fs::remove_file(&path);
            StoreError::Io { path, source }
        })
    }

    fn unreserve(&mut self, object: ObjectId) {
        if let Some(size) = self.creating.remove(&object) {
            self.used -= size;
        }
    }

    /// Seals a written object: from now on it is readable and immutable.
    pub fn seal(&mut self, creating: Creating) -> Result<Arc<View>, StoreError> {
        let Creating { object, size, file, map } = creating;
        let from = partial_path_of(&self.dir, object);
        let to = path_of(&self.dir, object);
        // A file taken from the pool is locked: readers must find it free once it is in place.
        // SAFETY: a plain call on a descriptor `file` owns.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_UN) };
        let placed = inode_of(&file).and_then(|inode| std::fs::rename(&from, &to).map(|()| inode));
        let inode = match placed {
            Ok(inode) => inode,
            Err(source) => {
                self.unreserve(object);
                let _ = std::fs::remove_file(&from);
                return Err(StoreError::Io { path: to, source });
            }
        };
        // Kept for this process's next write into the file, once it is pooled and taken again.
        if let (Some(map), true) = (map, size >= RECYCLE_MIN) {
            if let Ok(kept) = file.try_clone() {
                warm::keep(kept, map);
            }
        }
        self.creating.remove(&object);
        let view = Arc::new(map_file(file, &to, Lock::Owner)?);
        self.sealed.insert(object, Held { size, view: view.clone(), inode });
        Ok(view)
    }

    /// Gives up an object being written.
    pub fn abort(&mut self, creating: Creating) {
        let object = creating.object;
        drop(creating);
        self.unreserve(object);
        let _ = std::fs::remove_file(partial_path_of(&self.dir, object));
    }

    /// Writes and seals `bytes` as `object`.
    pub fn put(&mut self, object: ObjectId, bytes: &[u8]) -> Result<Arc<View>, StoreError> {
        let mut c = self.create(object, bytes.len() as u64)?;
        warm::copy(c.bytes_mut(), bytes);
        self.seal(c)
    }

    /// Takes in an object another process (a worker of this node) wrote and sealed in the
    /// directory, checking it holds `size` bytes.
    pub fn adopt(&mut self, object: ObjectId, size: u64) -> Result<Arc<View>, StoreError> {
        let path = path_of(&self.dir, object);
        let file = File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        let found = file.metadata().map_err(|source| StoreError::Io { path: path.clone(), source })?.len();
        if found != size {
            return Err(StoreError::SizeMismatch { object, expected: size, found });
        }
        let inode = inode_of(&file).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        self.reserve(object, size)?;
        self.creating.remove(&object);
        let view = Arc::new(map_file(file, &path, Lock::Owner)?);
        self.sealed.insert(object, Held { size, view: view.clone(), inode });
        Ok(view)
    }

    /// The bytes of a sealed object, without copying them.
    pub fn get(&self, object: ObjectId) -> Option<Arc<View>> {
        self.sealed.get(&object).map(|h| h.view.clone())
    }

    /// Deletes a sealed object (readers that still map it keep their view). A large one that
    /// nobody maps goes to the pool while it has room.
    pub fn delete(&mut self, object: ObjectId) {
        let Some(Held { size, view, inode }) = self.sealed.remove(&object) else { return };
        self.used -= size;
        let path = path_of(&self.dir, object);
        // A clone of the store's view (an object streaming to a peer, say) still reads the file.
        let unshared = Arc::strong_count(&view) == 1;
        let recyclable = size >= RECYCLE_MIN && unshared;
        drop(view);
        if recyclable && size <= self.pool_limit() {
            let to = self.dir.join(POOL).join(format!("{size}.{}", self.next_pooled));
            self.next_pooled += 1;
            if std::fs::rename(&path, &to).is_ok() {
                // Only the file sealed as this object (not one another writer put in its place),
                // and only if nobody maps it, is written again; a reader that opened it just now
                // finds its name gone once it holds its lock.
                let ours = |f: &File| {
                    f.metadata().is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == inode && m.len() == size)
                };
                if File::open(&to).is_ok_and(|f| ours(&f) && try_lock(&f, libc::LOCK_EX)) {
                    self.pooled += size;
                    // Room is made once the file is in: the files freed first go.
                    if self.pooled > self.pool_limit() {
                        self.recount_pool();
                        self.shrink_pool_to(self.pool_limit());
                    }
                } else {
                    discard(&to, Some(inode));
                }
                return;
            }
        }
        if recyclable {
            discard(&path, Some(inode));
        } else {
            // Small, or still read through a clone of the store's own view: only unlinked (this
            // process's kept mapping of it goes, so that the pages go with the clone).
            if size >= RECYCLE_MIN {
                if let Ok(file) = File::open(&path) {
                    warm::forget(&file);
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Deletes everything, sealed or being written.
    pub fn clear(&mut self) {
        let objects: Vec<ObjectId> = self.sealed.keys().copied().collect();
        for o in objects {
            self.delete(o);
        }
        for (o, _) in std::mem::take(&mut self.creating) {
            let _ = std::fs::remove_file(partial_path_of(&self.dir, o));
        }
        self.empty_pool();
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_kernel::TaskId;

    fn store(name: &str, capacity: u64) -> ShmStore {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        ShmStore::open(&base.join(format!("keel-shm-test-{name}-{}", std::process::id())), capacity).unwrap()
    }

    fn o(i: u32) -> ObjectId {
        ObjectId::for_return(TaskId(42), i)
    }

    /// The store directory's files other than the owner's lock and the pool, sorted.
    fn files(s: &ShmStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != OWNER && n != POOL)
            .collect();
        names.sort();
        names
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    const BIG: usize = RECYCLE_MIN as usize;

    #[test]
    fn a_large_deleted_object_goes_to_the_pool_and_its_file_takes_the_next_large_write() {
        let mut s = store("pool", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG + 100]).unwrap();
        let first = inode(&path_of(s.dir(), o(1)));
        s.delete(o(1));
        assert_eq!(s.pooled(), RECYCLE_MIN + 100);
        assert!(files(&s).is_empty(), "{:?}", files(&s));
        // Another process's write (a worker's result) takes the pooled file, cut to its size.
        write_sealed_with(s.dir(), o(2), RECYCLE_MIN, |w| w.write_all(&vec![2; BIG])).unwrap();
        assert_eq!(inode(&path_of(s.dir(), o(2))), first, "the pooled file was not used");
        let view = s.adopt(o(2), RECYCLE_MIN).unwrap();
        assert!(view.len() == BIG && view.iter().all(|b| *b == 2), "stale bytes after the write");
        assert!(pooled(s.dir()).is_empty());
        // The node's own writes take pooled files too; small objects are unlinked, not pooled.
        drop(view);
        s.delete(o(2));
        s.put(o(3), &vec![3; BIG]).unwrap();
        assert_eq!(inode(&path_of(s.dir(), o(3))), first);
        assert!(s.get(o(3)).unwrap().iter().all(|b| *b == 3));
        s.put(o(4), b"small").unwrap();
        s.delete(o(4));
        assert!(pooled(s.dir()).is_empty());
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn a_writer_takes_its_pooled_file_again_through_the_mapping_it_kept_whatever_the_sizes() {
        let mut s = store("warm", 64 * RECYCLE_MIN);
        let dir = s.dir().to_path_buf();
        let read = |object| map(&dir, object).unwrap().to_vec();
        // Written fresh, not mapped: nothing kept yet.
        write_sealed_with(&dir, o(1), 3 * RECYCLE_MIN, |w| w.write_all(&vec![1; 3 * BIG])).unwrap();
        s.adopt(o(1), 3 * RECYCLE_MIN).unwrap();
        let file = inode(&path_of(&dir, o(1)));
        assert_eq!((warm::kept().0, warm::hits()), (0, 0));
        s.delete(o(1));
        // Taken from the pool and mapped: the mapping is kept.
        write_sealed_with(&dir, o(2), 3 * RECYCLE_MIN, |w| w.write_all(&vec![2; 3 * BIG])).unwrap();
        assert_eq!(inode(&path_of(&dir, o(2))), file);
        assert_eq!((warm::kept(), warm::hits()), ((1, 3 * RECYCLE_MIN), 0));
        s.adopt(o(2), 3 * RECYCLE_MIN).unwrap();
        s.delete(o(2));
        // Smaller: written through the longer mapping it kept, and only its own bytes are read.
        write_sealed_with(&dir, o(3), RECYCLE_MIN + 7, |w| w.write_all(&vec![3; BIG + 7])).unwrap();
        assert_eq!((inode(&path_of(&dir, o(3))), warm::hits()), (file, 1));
        assert_eq!(read(o(3)), vec![3; BIG + 7]);
        s.adopt(o(3), RECYCLE_MIN + 7).unwrap();
        s.delete(o(3));
        // Larger than the mapping: mapped again, and that mapping is the one kept.
        write_sealed_with(&dir, o(4), 4 * RECYCLE_MIN, |w| w.write_all(&vec![4; 4 * BIG])).unwrap();
        assert_eq!((inode(&path_of(&dir, o(4))), warm::hits()), (file, 1));
        assert_eq!(read(o(4)), vec![4; 4 * BIG]);
        assert_eq!(warm::kept(), (1, 4 * RECYCLE_MIN));
        // The store's own writes go through it too, and keep theirs.
        s.adopt(o(4), 4 * RECYCLE_MIN).unwrap();
        s.delete(o(4));
        s.put(o(5), &vec![5; 2 * BIG]).unwrap();
        assert_eq!((inode(&path_of(&dir, o(5))), warm::hits()), (file, 2));
        assert_eq!(read(o(5)), vec![5; 2 * BIG]);
        assert_eq!(warm::kept().0, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn of_pooled_files_of_the_size_wanted_a_writer_takes_the_one_it_keeps_mapped() {
        let mut s = store("warm-choice", 64 * RECYCLE_MIN);
        let dir = s.dir().to_path_buf();
        // Several written with `write` (not kept), one through a mapping (kept).
        for i in 1..7 {
            write_sealed_with(&dir, o(i), RECYCLE_MIN, |w| w.write_all(&vec![1; BIG])).unwrap();
            s.adopt(o(i), RECYCLE_MIN).unwrap();
        }
        s.put(o(9), &vec![9; BIG]).unwrap();
        let kept = inode(&path_of(&dir, o(9)));
        for i in [1, 2, 3, 9, 4, 5, 6] {
            s.delete(o(i));
        }
        assert_eq!(pooled(&dir).len(), 7);
        write_sealed_with(&dir, o(10), RECYCLE_MIN, |w| w.write_all(&vec![10; BIG])).unwrap();
        assert_eq!(inode(&path_of(&dir, o(10))), kept, "a file this process does not keep mapped was taken");
        assert_eq!(warm::hits(), 1);
        assert_eq!(map(&dir, o(10)).unwrap().to_vec(), vec![10; BIG]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pooled_file_more_than_four_times_too_large_is_left_for_a_write_of_its_size() {
        let mut s = store("pool-fit", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; 5 * BIG]).unwrap();
        let big = inode(&path_of(s.dir(), o(1)));
        s.delete(o(1));
        s.put(o(2), &vec![2; BIG]).unwrap();
        assert_ne!(inode(&path_of(s.dir(), o(2))), big, "a file five times too large was cut down");
        assert_eq!(pooled(s.dir()).len(), 1);
        s.put(o(3), &vec![3; 2 * BIG]).unwrap();
        assert_eq!(inode(&path_of(s.dir(), o(3))), big, "a file under four times the size was left");
        assert!(s.get(o(3)).unwrap().iter().all(|b| *b == 3));
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn a_write_that_overflows_a_kept_mapping_fails_and_leaves_nothing() {
        let mut s = store("warm-overflow", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        s.put(o(4), &vec![1; BIG]).unwrap();
        s.delete(o(1));
        s.delete(o(4));
        // Both writes take a pooled file and write through a mapping.
        let err = write_sealed_with(s.dir(), o(2), RECYCLE_MIN, |w| w.write_all(&vec![2; BIG + 1]))
            .expect_err("wrote more than announced");
        assert!(err.to_string().contains("more bytes were written than the 262144 announced"), "{err}");
        assert_eq!(pooled(s.dir()).len(), 1, "the first write did not take a pooled file");
        let short = write_sealed_with(s.dir(), o(3), RECYCLE_MIN, |w| w.write_all(&vec![2; BIG - 1]))
            .expect_err("wrote less than announced");
        assert!(short.to_string().contains("262143 bytes were written, not the 262144 announced"), "{short}");
        assert!(pooled(s.dir()).is_empty(), "the second write did not take a pooled file");
        assert!(files(&s).is_empty(), "{:?}", files(&s));
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    /// Blocks of unlinked files under `dir` this process still holds a descriptor of.
    fn deleted_blocks_held(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else { continue };
            let target = target.to_string_lossy();
            if target.starts_with(&*dir.to_string_lossy()) && target.ends_with("(deleted)") {
                total += std::fs::metadata(e.path()).map_or(0, |m| m.blocks());
            }
        }
        total
    }

    #[test]
    fn an_object_deleted_while_the_store_shares_its_view_keeps_no_pages_once_the_view_goes() {
        let mut s = store("warm-shared", 64 * RECYCLE_MIN);
        let dir = s.dir().to_path_buf();
        s.put(o(1), &vec![1; BIG]).unwrap();
        let streaming = s.get(o(1)).unwrap();
        s.delete(o(1));
        assert!(streaming.iter().all(|b| *b == 1), "a shared view's bytes changed");
        drop(streaming);
        assert_eq!(deleted_blocks_held(&dir), 0, "the writer's kept mapping held the pages");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_store_keeps_no_pages_in_the_process_that_removed_it() {
        let mut s = store("warm-removed", 64 * RECYCLE_MIN);
        let dir = s.dir().to_path_buf();
        s.put(o(1), &vec![1; 4 * BIG]).unwrap();
        s.delete(o(1));
        s.put(o(2), &vec![2; 4 * BIG]).unwrap();
        assert_eq!(warm::kept().0, 1);
        remove_store(&dir).unwrap();
        assert_eq!(deleted_blocks_held(&dir), 0, "kept mappings held the removed store's pages");
        assert_eq!(warm::kept().0, 0);
    }

    #[test]
    fn a_delete_that_cannot_pool_its_file_leaves_the_pool_as_it_was() {
        // The pool holds one big file: o(1)'s. A reader maps o(2) when it goes.
        let mut s = store("pool-reader", 8 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        s.put(o(2), &vec![2; BIG]).unwrap();
        let first = inode(&path_of(s.dir(), o(1)));
        s.delete(o(1));
        let reader = map(s.dir(), o(2)).unwrap();
        s.delete(o(2));
        let (_, name) = pooled(s.dir()).pop().expect("the pool was emptied");
        assert_eq!(inode(&s.dir().join(POOL).join(name)), first);
        assert_eq!(s.pooled(), RECYCLE_MIN);
        assert!(reader.iter().all(|b| *b == 2), "a reader's bytes changed");
        drop(reader);
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn pooled_files_unlinked_lose_their_pages_even_while_a_writer_maps_them() {
        use std::os::unix::fs::MetadataExt;
        let mut s = store("warm-punch", 64 * RECYCLE_MIN);
        // Mapped and kept by this process's store.
        s.put(o(1), &vec![1; BIG]).unwrap();
        s.delete(o(1));
        let (_, name) = pooled(s.dir()).pop().expect("pooled");
        let held = File::open(s.dir().join(POOL).join(name)).unwrap();
        assert!(held.metadata().unwrap().blocks() > 0);
        s.clear();
        assert_eq!(held.metadata().unwrap().blocks(), 0, "an unlinked pooled file kept its pages");
        assert_eq!(warm::kept().0, 0, "a mapping of an unlinked file was kept");
        // A mapping of a file unlinked by someone else goes at this process's next large write.
        s.put(o(2), &vec![2; BIG]).unwrap();
        s.delete(o(2));
        write_sealed_with(s.dir(), o(3), RECYCLE_MIN, |w| w.write_all(&vec![3; BIG])).unwrap();
        assert_eq!(warm::kept().0, 1);
        std::fs::remove_file(path_of(s.dir(), o(3))).unwrap();
        std::thread::sleep(warm::PRUNE_EVERY);
        write_sealed_with(s.dir(), o(4), RECYCLE_MIN, |w| w.write_all(&vec![4; BIG])).unwrap();
        assert_eq!(warm::kept().0, 0, "a mapping of an unlinked file outlived the next write");
        // A pooled file that leaves the full pool, and an object too large for the pool, unlinked
        // when nobody reads them, lose their pages too.
        let mut small = store("warm-punch-full", 8 * RECYCLE_MIN);
        small.put(o(5), &vec![5; BIG]).unwrap();
        small.put(o(6), &vec![6; BIG]).unwrap();
        small.put(o(7), &vec![7; 2 * BIG]).unwrap();
        let fifth = File::open(path_of(small.dir(), o(5))).unwrap();
        let seventh = File::open(path_of(small.dir(), o(7))).unwrap();
        small.delete(o(5));
        small.delete(o(6));
        small.delete(o(7));
        assert_eq!(fifth.metadata().unwrap().blocks(), 0, "a file the full pool let go kept its pages");
        assert_eq!(seventh.metadata().unwrap().blocks(), 0, "an object the pool refused kept its pages");
        std::fs::remove_dir_all(s.dir()).unwrap();
        std::fs::remove_dir_all(small.dir()).unwrap();
    }

    #[test]
    fn an_object_the_store_still_shares_is_not_pooled() {
        let mut s = store("pool-shared", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        let streaming = s.get(o(1)).unwrap();
        s.delete(o(1));
        assert_eq!(s.pooled(), 0);
        s.put(o(2), &vec![2; BIG]).unwrap();
        assert!(streaming.iter().all(|b| *b == 1));
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn only_a_readers_view_of_an_object_that_may_be_pooled_holds_a_descriptor() {
        let mut s = store("pool-fds", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        s.put(o(2), &[2; 100]).unwrap();
        assert!(matches!(&*s.get(o(1)).unwrap(), View::Mapped(_, None)), "the store's views hold no descriptor");
        assert!(matches!(map(s.dir(), o(1)).unwrap(), View::Mapped(_, Some(_))));
        assert!(matches!(map(s.dir(), o(2)).unwrap(), View::Mapped(_, None)), "small objects are never pooled");
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn a_mapped_object_is_never_pooled_so_its_reader_keeps_its_bytes() {
        let mut s = store("pool-mapped", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        let reader = map(s.dir(), o(1)).unwrap();
        s.delete(o(1));
        assert_eq!(s.pooled(), 0, "a file someone maps was pooled");
        s.put(o(2), &vec![2; BIG]).unwrap();
        assert!(reader.iter().all(|b| *b == 1), "a reader's bytes changed under it");
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn a_reader_that_opened_a_file_just_before_it_was_pooled_finds_the_object_missing() {
        let mut s = store("pool-race", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        let path = path_of(s.dir(), o(1));
        // Opened, but not yet locked, when the node pools it.
        let opened = File::open(&path).unwrap();
        s.delete(o(1));
        assert_eq!(s.pooled(), RECYCLE_MIN);
        let err = map_file(opened, &path, Lock::Shared).expect_err("mapped a pooled file");
        assert!(matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn pooled_pages_count_against_the_capacity_and_go_before_a_write_is_refused() {
        // The pool holds at most an eighth: one big object here.
        let mut s = store("pool-cap", 8 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        s.put(o(2), &vec![2; BIG]).unwrap();
        let last_freed = inode(&path_of(s.dir(), o(2)));
        s.delete(o(1));
        s.delete(o(2));
        assert_eq!(s.pooled(), RECYCLE_MIN, "the pool grew past its share");
        let (_, name) = pooled(s.dir()).pop().expect("one pooled file");
        assert_eq!(inode(&s.dir().join(POOL).join(name)), last_freed, "the pool kept the file freed first");
        // Objects too small to take the pooled file fill the rest: used and pooled bytes together
        // reach the capacity, and the next write empties the pool rather than be refused.
        let small = BIG / 2 - 1;
        for i in 0..14 {
            s.put(o(10 + i), &vec![3; small]).unwrap();
        }
        assert_eq!((s.used(), s.pooled()), (14 * small as u64, RECYCLE_MIN));
        s.put(o(30), &vec![4; small]).unwrap();
        assert_eq!((s.used(), s.pooled()), (15 * small as u64, 0));
        assert!(pooled(s.dir()).is_empty(), "the pool's files are still there");
        let err = s.create(o(31), RECYCLE_MIN).err().expect("the capacity still holds");
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn a_partial_file_left_by_a_dead_writer_gives_way_and_a_live_writers_does_not() {
        let s = store("abandoned", 64 * RECYCLE_MIN);
        let partial = partial_path_of(s.dir(), o(1));
        let write = || write_sealed_with(s.dir(), o(1), 3, |w| w.write_all(b"new"));
        // A writer that is still at it holds its lock.
        let live = File::create(&partial).unwrap();
        assert!(try_lock(&live, libc::LOCK_EX));
        live.set_modified(std::time::SystemTime::now() - 2 * ABANDONED_AFTER).unwrap();
        let err = write().expect_err("took a live writer's file");
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err}"
        );
        // Its process died: the lock went with it, but a file just made may be a writer's that
        // has not locked it yet.
        drop(live);
        std::fs::write(&partial, b"stale").unwrap();
        assert!(write().is_err(), "took a file made a moment ago");
        File::options()
            .write(true)
            .open(&partial)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - 2 * ABANDONED_AFTER)
            .unwrap();
        write().unwrap();
        assert_eq!(std::fs::read(path_of(s.dir(), o(1))).unwrap(), b"new");
        assert!(!partial.exists());
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let get = || {
            let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: reads one struct this test owns.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
            now
        };
        // Lowered first (always allowed), so that there is something to raise.
        let before = get();
        let lowered = libc::rlimit { rlim_cur: before.rlim_cur.min(512), rlim_max: before.rlim_max };
        // SAFETY: sets one limit from a struct this test owns.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let most: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse().unwrap();
        let want = before.rlim_max.min(most);
        assert_eq!(raise_to_hard_limit(), want);
        assert_eq!(get().rlim_cur, want);
        assert_eq!(raise_open_file_limit(), want);
    }

    #[test]
    fn a_file_another_writer_put_in_place_of_a_sealed_object_is_never_pooled() {
        let mut s = store("pool-replaced", 64 * RECYCLE_MIN);
        s.put(o(1), &vec![1; BIG]).unwrap();
        // A second writer of the same object (a retried attempt) seals a small file over it; a
        // reader maps that one, which is too small to need a lock.
        write_sealed(s.dir(), o(1), b"small").unwrap();
        let reader = map(s.dir(), o(1)).unwrap();
        assert!(matches!(reader, View::Mapped(_, None)));
        s.delete(o(1));
        assert_eq!(s.pooled(), 0, "a file that is not the one sealed was pooled");
        s.put(o(2), &vec![2; BIG]).unwrap();
        assert_eq!(&*reader, b"small", "a reader's bytes changed under it");
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn directories_of_dead_processes_are_swept_and_those_of_live_ones_kept() {
        let base = std::env::temp_dir().join(format!("keel-shm-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // A pid above the system's largest cannot be running.
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        let me = std::process::id();
        for name in
            [format!("keel-{}-12", max + 1), format!("keel-{}", max + 2), format!("keel-{me}-3"), "keel-x".into()]
        {
            std::fs::create_dir_all(base.join(name).join("sub")).unwrap();
        }
        std::fs::write(base.join(format!("keel-{}-9", max + 3)), b"a file, not a store").unwrap();
        // A live store whose process this one cannot see (another pid namespace) holds its lock.
        let hidden = ShmStore::open(&base.join(format!("keel-{}-5", max + 4)), 1 << 20).unwrap();
        assert_eq!(sweep_orphans(&base, "keel-"), 2);
        assert!(hidden.dir().join(OWNER).exists(), "a live store was swept");
        drop(hidden);
        assert_eq!(sweep_orphans(&base, "keel-"), 1, "a store whose owner is gone was kept");
        let mut left: Vec<String> =
            std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut kept = vec![format!("keel-{}-9", max + 3), format!("keel-{me}-3"), "keel-x".to_string()];
        kept.sort();
        assert_eq!(left, kept);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_sealed_object_reads_back_through_the_store_and_through_a_second_mapping() {
        let mut s = store("seal", 1 << 20);
        let mut c = s.create(o(1), 5).unwrap();
        assert!(s.get(o(1)).is_none(), "readable before it was sealed");
        c.bytes_mut().copy_from_slice(b"hello");
        s.seal(c).unwrap();
        assert_eq!(&**s.get(o(1)).unwrap(), b"hello");
        assert_eq!(&*map(s.dir(), o(1)).unwrap(), b"hello");
        assert_eq!(s.used(), 5);
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn creates_beyond_capacity_are_refused_with_the_numbers_and_deletes_free_room() {
        let mut s = store("cap", 10);
        s.put(o(1), &[1; 8]).unwrap();
        let err = s.create(o(2), 4).err().expect("full");
        assert!(err.to_string().contains("needs 4 bytes, 2 of 10 are free"), "{err}");
        s.delete(o(1));
        s.put(o(2), &[2; 4]).unwrap();
        assert_eq!((s.used(), s.len()), (4, 1));
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn a_reader_keeps_its_view_after_the_object_is_deleted() {
        let mut s = store("del", 1 << 20);
        s.put(o(1), b"still here").unwrap();
        let view = s.get(o(1)).unwrap();
        s.delete(o(1));
        assert!(s.get(o(1)).is_none());
        assert_eq!(&**view, b"still here");
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn an_aborted_write_releases_its_reservation_and_leaves_no_file() {
        let mut s = store("abort", 100);
        let c = s.create(o(1), 60).unwrap();
        assert_eq!(s.used(), 60);
        s.abort(c);
        assert_eq!(s.used(), 0);
        assert_eq!(files(&s), Vec::<String>::new());
        std::fs::remove_dir_all(s.dir()).unwrap();
    }

    #[test]
    fn adopting_a_file_written_elsewhere_checks_its_size_and_empty_objects_work() {
        let mut s = store("adopt", 100);
        std::fs::write(path_of(s.dir(), o(1)), b"abc").unwrap();
        let err = s.adopt(o(1), 4).expect_err("size mismatch");
        assert!(matches!(err, StoreError::SizeMismatch { expected: 4, found: 3, .. }), "{err}");
        assert_eq!(&**s.adopt(o(1), 3).unwrap(), b"abc");
        s.put(o(2), b"").unwrap();
        assert_eq!(s.get(o(2)).unwrap().len(), 0);
        assert!(matches!(s.put(o(2), b"x"), Err(StoreError::Exists(_))));
        std::fs::remove_dir_all(s.dir()).unwrap();
    }
}
