//! The optional JSON-lines mirror of the audit trail (for a SIEM).

use std::{fs::OpenOptions, io::Write, path::PathBuf, sync::Mutex};

use crate::{
    model::{AuditRecord, micros},
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
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
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
        let mut lines = String::new();
        for record in records {
            lines.push_str(&json_line(record));
            lines.push('\n');
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
