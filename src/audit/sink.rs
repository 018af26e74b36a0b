//! The optional JSON-lines mirror of the audit trail (for a SIEM): every
//! committed record, the chain's checkpoints, and, in per-call mode, one
//! line for every allowed resolve.

use std::{fs::OpenOptions, io::Write, os::unix::fs::OpenOptionsExt, path::PathBuf, sync::Mutex};

use crate::{
    model::{AuditRecord, TokenName, micros},
    store::AuditMirror,
};

/// The optional JSON-lines mirror of the audit log.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl JsonlSink {
    /// A sink appending to `path` (created mode 0600 on first write).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends committed records. A failure is logged, never fatal: the
    /// database is the log of record, this file only mirrors it.
    pub fn write(&self, records: &[AuditRecord]) {
        if records.is_empty() {
            return;
        }
        let mut lines = String::new();
        for record in records {
            lines.push_str(&json_line(record));
            lines.push('\n');
        }
        self.append(&lines);
    }

    /// Appends one line (a checkpoint).
    pub fn write_line(&self, line: &str) {
        self.append(&format!("{line}\n"));
    }

    /// Per-call mode: one line for an allowed resolve of `name` by `caller`
    /// at `time_us` (these are also accounted, as aggregates, in the trail).
    pub fn write_resolve(&self, name: &TokenName, caller: &str, time_us: i64) {
        let line = serde_json::json!({
            "resolve": {
                "time_us": time_us,
                "actor": caller,
                "tenant": name.tenant.as_str(),
                "resource": name.to_string(),
                "outcome": "allowed",
            }
        });
        self.append(&format!("{line}\n"));
    }

    fn append(&self, lines: &str) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(f) => *file = Some(f),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "audit JSON-lines sink unavailable");
                    return;
                }
            }
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = f.write_all(lines.as_bytes())
        {
            tracing::error!(path = %self.path.display(), error = %e, "audit JSON-lines write failed");
            *file = None;
        }
    }
}

fn json_line(record: &AuditRecord) -> String {
    let event = &record.event;
    serde_json::json!({
        "sequence": record.seq,
        "time_us": micros(event.time),
        "first_time_us": micros(event.first_time),
        "count": event.count,
        "actor": event.actor,
        "peer": event.peer,
        "method": event.method,
        "tenant": event.tenant,
        "resource": event.resource,
        "outcome": event.outcome.as_str(),
        "reason": event.reason,
    })
    .to_string()
}

impl AuditMirror for JsonlSink {
    fn committed(&self, records: &[AuditRecord]) {
        self.write(records);
    }
}
