//! Online backups with SQLite's backup API.

use std::{fs, path::Path, thread, time::Duration};

use rusqlite::{Connection, backup::StepResult};

use super::create_private_file;
use crate::error::{Error, Result};

/// Copies the database `source` reads to `dest` with SQLite's online backup
/// API, in one step: a single read snapshot, so writers elsewhere neither
/// wait for it nor make it start over. The copy is synced before it counts.
pub(super) fn to_file(source: &Connection, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Err(Error::file(format!(
            "{} exists; choose a new file",
            dest.display()
        )));
    }
    create_private_file(dest)?;
    let mut target = Connection::open(dest)?;
    {
        let backup = rusqlite::backup::Backup::new(source, &mut target)?;
        // All pages in one step (-1): one read snapshot of the source.
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked if tries < 200 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(25));
                }
                other => {
                    return Err(Error::Storage(format!(
                        "online backup did not finish: {other:?}"
                    )));
                }
            }
        }
    }
    target.execute_batch("PRAGMA journal_mode = DELETE;")?;
    drop(target);
    fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::file(format!("syncing {}: {e}", dest.display())))?;
    Ok(())
}
