//! Who holds a database: an advisory `flock` on a file beside it
//! (`DB.lock`), taken for as long as the holder has the database open.
//!
//! - A server, and every offline command that may run beside one (`keys
//!   rotate`, `keys destroy-old`, `init`), holds it **shared**: any number
//!   of them at once, as SQLite itself arbitrates their writes.
//! - `restore`, `keys rekey` and `keys shred` hold it **exclusively**: they
//!   replace the file or the root key under everyone's feet, so they refuse
//!   while anything else holds the database, and a server refuses to start
//!   while they run.
//!
//! The lock lives on its own file, not the database, so it survives the
//! database being renamed over (`restore`) and SQLite never sees it. The
//! kernel drops it when the holder exits, however it exits (`kill -9`
//! included), so a crash never leaves a stale lock behind.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use rustix::{
    fs::{FlockOperation, flock},
    io::Errno,
};

use crate::error::{Error, Result};

/// How long an exclusive holder waits for others to let go (a server that
/// is just finishing its shutdown) before refusing.
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How a process holds a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Beside others: servers and the commands that may run beside one.
    Shared,
    /// Alone: restore, rekey, shred.
    Exclusive,
}

/// A held lock on a database; released when dropped (or when the process
/// exits).
#[derive(Debug)]
pub struct DbLock {
    /// The open lock file; the lock belongs to this open file description.
    _file: File,
    hold: Hold,
}

impl DbLock {
    /// The lock file of `database`: its path with `.lock` appended.
    pub fn path_for(database: &Path) -> PathBuf {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        PathBuf::from(path)
    }

    /// Takes the lock of `database` as `hold` says, creating the lock file
    /// (mode 0600) if needed. Never blocks for long: a shared hold is refused
    /// at once while an exclusive holder runs; an exclusive hold waits up to
    /// two seconds for others to let go, then is refused. Blocking.
    pub fn acquire(database: &Path, hold: Hold) -> Result<Self> {
        let path = Self::path_for(database);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::database(format!("lock file {}: {e}", path.display())))?;
        let operation = match hold {
            Hold::Shared => FlockOperation::NonBlockingLockShared,
            Hold::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        let deadline = Instant::now() + EXCLUSIVE_WAIT;
        loop {
            match flock(&file, operation) {
                Ok(()) => return Ok(Self { _file: file, hold }),
                Err(Errno::WOULDBLOCK) if hold == Hold::Exclusive && Instant::now() < deadline => {
                    thread::sleep(RETRY_PAUSE);
                }
                Err(Errno::WOULDBLOCK) => return Err(in_use(database, &path, hold)),
                Err(e) => {
                    return Err(Error::database(format!("locking {}: {e}", path.display())));
                }
            }
        }
    }

    /// How this lock is held.
    pub fn hold(&self) -> Hold {
        self.hold
    }
}

fn in_use(database: &Path, lock: &Path, hold: Hold) -> Error {
    let (db, lock) = (database.display(), lock.display());
    Error::database(match hold {
        Hold::Exclusive => format!(
            "database {db} is in use by a running server or another aitokens command \
             (it holds {lock}); stop the server first"
        ),
        Hold::Shared => format!(
            "database {db} is held exclusively by aitokens restore, keys rekey or keys shred \
             (lock {lock}); wait for it to finish"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_coexist_and_exclude_an_exclusive_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("a.db");
        let first = DbLock::acquire(&db, Hold::Shared).expect("shared");
        let second = DbLock::acquire(&db, Hold::Shared).expect("a second shared holder");
        let err = DbLock::acquire(&db, Hold::Exclusive).expect_err("held");
        assert_eq!(
            err.to_string(),
            format!(
                "database {} is in use by a running server or another aitokens command \
                 (it holds {}.lock); stop the server first",
                db.display(),
                db.display()
            )
        );
        drop((first, second));
        let alone = DbLock::acquire(&db, Hold::Exclusive).expect("free again");
        assert_eq!(alone.hold(), Hold::Exclusive);
        let err = DbLock::acquire(&db, Hold::Shared).expect_err("held exclusively");
        assert!(err.to_string().contains("held exclusively"), "{err}");
    }
}
