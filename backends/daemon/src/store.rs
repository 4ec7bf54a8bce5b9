//! The node's local object bytes: one file per sealed object under the node's store directory
//! (a tmpfs such as /dev/shm by default, so the bytes live in memory), written under a temporary
//! name and renamed when sealed, so that a reader never sees a partial object.
//!
//! What to keep, evict or free is the node machine's decision; this only holds bytes.

use keel_kernel::ObjectId;
use std::io;
use std::path::{Path, PathBuf};

/// A directory of sealed objects.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store in `dir`, emptied first (a restarted daemon's old objects are not its own any more).
    pub fn open(dir: &Path) -> io::Result<Store> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// Where the objects are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `object`.
    pub fn path_of(dir: &Path, object: ObjectId) -> PathBuf {
        dir.join(format!("{}-{}", object.task.0, object.index))
    }

    /// Seals `bytes` as `object`.
    pub fn put(&self, object: ObjectId, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{}-{}.partial", object.task.0, object.index));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, Self::path_of(&self.dir, object))
    }

    /// The bytes of `object`, if held.
    pub fn get(&self, object: ObjectId) -> Option<Vec<u8>> {
        std::fs::read(Self::path_of(&self.dir, object)).ok()
    }

    /// Deletes `object` (no error if absent).
    pub fn delete(&self, object: ObjectId) {
        let _ = std::fs::remove_file(Self::path_of(&self.dir, object));
    }

    /// Deletes everything.
    pub fn clear(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_kernel::TaskId;

    #[test]
    fn sealed_objects_read_back_and_delete() {
        let dir = std::env::temp_dir().join(format!("keel-store-test-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        let o = ObjectId::for_return(TaskId(7), 1);
        assert_eq!(store.get(o), None);
        store.put(o, b"bytes").unwrap();
        assert_eq!(store.get(o).as_deref(), Some(&b"bytes"[..]));
        store.delete(o);
        assert_eq!(store.get(o), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
