//! Checkpoints of the audit chain kept outside the database: an anchor file
//! (one JSON line per checkpoint, appended and synced) and the JSON-lines
//! mirror. Someone who can write the database but not these files, and
//! who lacks the chain key, cannot hide a truncation or a rebuilt chain:
//! `aitokens audit verify --anchor FILE` compares them.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::JsonlSink;
use crate::{
    crypto::{chain::ChainKey, hex_encode},
    error::{Error, Result},
    model::micros,
    store::{AuditLog, Checkpoint},
};

/// The JSON line of a checkpoint.
pub fn checkpoint_line(cp: &Checkpoint) -> String {
    serde_json::json!({
        "checkpoint": {
            "sequence": cp.seq,
            "head": hex_encode(&cp.head),
            "time_us": cp.time_us,
        },
        "mac": hex_encode(&cp.mac),
    })
    .to_string()
}

/// Reads the checkpoints of an anchor file. Lines that are not
/// checkpoints (a mirror holds records too) are skipped; a checkpoint line
/// that does not parse is an error naming its line.
pub fn read_anchor(path: &Path) -> Result<Vec<Checkpoint>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(format!("reading anchor {}: {e}", path.display())))?;
    let mut checkpoints = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || {
            Error::file(format!(
                "anchor {} line {}: not a checkpoint",
                path.display(),
                i + 1
            ))
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            return Err(bad());
        };
        let Some(cp) = value.get("checkpoint") else {
            continue;
        };
        let hex = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).and_then(hex_decode);
        checkpoints.push(Checkpoint {
            seq: cp["sequence"].as_i64().ok_or_else(bad)?,
            head: hex(cp.get("head")).ok_or_else(bad)?,
            time_us: cp["time_us"].as_i64().ok_or_else(bad)?,
            mac: hex(value.get("mac")).ok_or_else(bad)?,
        });
    }
    Ok(checkpoints)
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes a checkpoint whenever the chain's head has moved.
pub struct Checkpointer {
    log: Arc<dyn AuditLog>,
    key: Arc<ChainKey>,
    anchor: Option<PathBuf>,
    mirror: Option<Arc<JsonlSink>>,
    /// The sequence of the last checkpoint written.
    last: Mutex<i64>,
}

impl Checkpointer {
    /// Checkpoints of `log`, MAC'd under `key`, appended to `anchor` and to
    /// `mirror` (either may be absent).
    pub fn new(
        log: Arc<dyn AuditLog>,
        key: Arc<ChainKey>,
        anchor: Option<PathBuf>,
        mirror: Option<Arc<JsonlSink>>,
    ) -> Self {
        Self {
            log,
            key,
            anchor,
            mirror,
            last: Mutex::new(0),
        }
    }

    /// Writes a checkpoint of the current head if it moved since the last
    /// one; returns it.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        if self.anchor.is_none() && self.mirror.is_none() {
            return Ok(None);
        }
        let Some((seq, head)) = self.log.chain_head().await? else {
            return Ok(None);
        };
        if *self.last.lock().unwrap_or_else(|p| p.into_inner()) >= seq {
            return Ok(None);
        }
        let cp = checkpoint(&self.key, seq, head);
        let line = checkpoint_line(&cp);
        if let Some(path) = &self.anchor {
            let (path, line) = (path.clone(), line.clone());
            tokio::task::spawn_blocking(move || append_synced(&path, &line))
                .await
                .map_err(|e| Error::Internal(format!("anchor task failed: {e}")))??;
        }
        if let Some(mirror) = &self.mirror {
            mirror.write_line(&line);
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = seq;
        Ok(Some(cp))
    }
}

/// A checkpoint of record `seq` with link `head`, made now.
pub fn checkpoint(key: &ChainKey, seq: i64, head: Vec<u8>) -> Checkpoint {
    let time_us = micros(std::time::SystemTime::now());
    Checkpoint {
        seq,
        mac: key.checkpoint_mac(seq, &head, time_us).to_vec(),
        head,
        time_us,
    }
}

/// Appends `line` to `path` (created 0600) and syncs it before returning.
fn append_synced(path: &Path, line: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::file(format!("audit anchor {}: {e}", path.display())))?;
    file.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::file(format!("writing audit anchor {}: {e}", path.display())))
}
