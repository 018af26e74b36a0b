//! `aitokens audit verify`: walks the audit chain of a database file.

use super::AuditCommand;
use crate::{
    audit::{AuditVerdict, verify_chain},
    config::Config,
    error::{Error, Result},
    store::SqliteStore,
};

/// `aitokens audit ...`.
pub async fn run(command: AuditCommand) -> Result<()> {
    let AuditCommand::Verify { db, config } = command;
    let db = match (db, config) {
        (Some(db), _) => db,
        (None, Some(config)) => Config::load(&config)?.store.database,
        (None, None) => return Err(Error::config("pass --db or --config")),
    };
    let store = {
        let path = db.clone();
        tokio::task::spawn_blocking(move || SqliteStore::open_read_only(&path))
            .await
            .map_err(|e| Error::Internal(format!("opening the database: {e}")))??
    };
    match verify_chain(&store).await? {
        AuditVerdict::Intact { records } => {
            println!(
                "audit chain intact: {records} records verified in {}",
                db.display()
            );
            Ok(())
        }
        AuditVerdict::Broken { seq, reason } => Err(Error::database(format!(
            "audit chain broken at record {seq}: {reason} ({})",
            db.display()
        ))),
    }
}
