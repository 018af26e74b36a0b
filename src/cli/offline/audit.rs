//! `aitokens audit verify | export | prune`: the trail of a database,
//! opened with its root key (the chain is keyed: the database alone cannot
//! prove itself).

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{AuditCommand, Offline, TrailArgs, cli_event};
use crate::{
    audit::{AuditVerdict, checkpoint, checkpoint_line, read_anchor, verify_chain},
    config::Config,
    crypto::{KeySource, chain::ChainKey, hex_encode},
    error::{Error, Result},
    model::{UsageBatch, micros},
    rotation::{Legacy, chain_key},
    store::{self, Hold, Pending, SharedStore, SqliteStore, StoreLocation},
};

/// `aitokens audit ...`.
pub async fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify { source, anchor } => {
            let trail = Trail::open(&source, false).await?;
            let anchor = anchor.or(trail.anchor.clone());
            verify(&trail, anchor.as_deref()).await.map(drop)
        }
        AuditCommand::Export { source, out } => {
            export(&Trail::open(&source, false).await?, &out).await
        }
        AuditCommand::Prune {
            source,
            through_seq,
        } => prune(&Trail::open(&source, true).await?, through_seq).await,
        AuditCommand::Upgrade { config } => upgrade(&Config::load(&config)?).await,
    }
}

/// `aitokens audit upgrade`: keys a legacy trail (see [`Legacy::Upgrade`]).
async fn upgrade(config: &Config) -> Result<()> {
    let source = config.store.key_source()?;
    let location = config.store.location()?;
    let offline = Offline::open_at(&location, &source, Legacy::Upgrade, Hold::Exclusive).await?;
    let event = cli_event(
        "aitokens audit upgrade",
        "audit",
        "the trail is keyed".into(),
    );
    offline
        .store
        .flush(Pending {
            usage: UsageBatch::default(),
            events: vec![event],
        })
        .await
        .map_err(|unflushed| unflushed.error)?;
    let (records, _) = offline.store.chain_head().await?.unwrap_or_default();
    println!(
        "the audit trail of {} is keyed: {records} records linked under a key the root key opens",
        location.shown()
    );
    Ok(())
}

/// A trail opened for a command.
struct Trail {
    db: String,
    store: SharedStore,
    key: Arc<ChainKey>,
    anchor: Option<PathBuf>,
}

impl Trail {
    async fn open(args: &TrailArgs, write: bool) -> Result<Self> {
        let (location, source, anchor) = match (&args.config, &args.db) {
            (Some(config), _) => {
                let config = Config::load(config)?;
                let source = config.store.key_source()?;
                (config.store.location()?, source, config.audit.anchor)
            }
            (None, Some(db)) => {
                let source = match (&args.key_file, &args.passphrase_file) {
                    (Some(path), _) => KeySource::File(path.clone()),
                    (_, Some(path)) => KeySource::PassphraseFile(path.clone()),
                    _ if args.passphrase_stdin => KeySource::PassphraseStdin,
                    _ => {
                        return Err(Error::config(
                            "with --db, say how to open its key: --key-file, --passphrase-file \
                             or --passphrase-stdin",
                        ));
                    }
                };
                (super::location(db, None)?, source, None)
            }
            (None, None) => return Err(Error::config("pass --config, or --db and its key")),
        };
        let material = source.load()?;
        let store: SharedStore = match (&location, write) {
            (StoreLocation::Sqlite(path), false) => {
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open_read_only(&path))
                    .await
                    .map_err(|e| Error::Internal(format!("opening the database: {e}")))??;
                Arc::new(store)
            }
            _ => store::open(&location, None).await?,
        };
        let key = Arc::new(chain_key(&*store, material).await?);
        store.use_chain_key(key.clone());
        Ok(Self {
            db: location.shown(),
            store,
            key,
            anchor,
        })
    }
}

async fn verify(trail: &Trail, anchor: Option<&Path>) -> Result<i64> {
    let checkpoints = anchor.map(read_anchor).transpose()?.unwrap_or_default();
    match verify_chain(&*trail.store, &trail.key, &checkpoints).await? {
        AuditVerdict::Intact {
            records,
            checkpoints,
        } => {
            let against = anchor.map_or(String::new(), |path| {
                format!(", {checkpoints} checkpoints of {} hold", path.display())
            });
            println!(
                "audit chain intact: {records} records verified in {}{against}",
                trail.db
            );
            Ok(records)
        }
        AuditVerdict::Broken { seq, reason } => Err(Error::database(format!(
            "audit chain broken at record {seq}: {reason} ({})",
            trail.db
        ))),
    }
}

async fn export(trail: &Trail, out: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| Error::file(format!("creating {}: {e}", out.display())))?;
    let (mut after, mut written) = (0, 0);
    if let Some(base) = trail.store.chain_base().await? {
        after = base.seq;
        writeln!(file, "{}", checkpoint_line(&base))
            .map_err(|e| Error::file(format!("writing {}: {e}", out.display())))?;
    }
    loop {
        let links = trail.store.chain_links(after, 1000).await?;
        let Some(last) = links.last() else { break };
        after = last.record.seq;
        let mut lines = String::new();
        for link in &links {
            let e = &link.record.event;
            let line = serde_json::json!({
                "sequence": link.record.seq,
                "time_us": micros(e.time),
                "first_time_us": micros(e.first_time),
                "count": e.count,
                "actor": e.actor,
                "peer": e.peer,
                "method": e.method,
                "tenant": e.tenant,
                "resource": e.resource,
                "outcome": link.stored_outcome,
                "reason": e.reason,
                "prev_link": hex_encode(&link.prev_hash),
                "link": hex_encode(&link.hash),
            });
            lines.push_str(&format!("{line}\n"));
        }
        file.write_all(lines.as_bytes())
            .map_err(|e| Error::file(format!("writing {}: {e}", out.display())))?;
        written += links.len();
    }
    file.sync_all()
        .map_err(|e| Error::file(format!("syncing {}: {e}", out.display())))?;
    println!("exported {written} audit records to {}", out.display());
    Ok(())
}

async fn prune(trail: &Trail, through_seq: i64) -> Result<()> {
    verify(trail, trail.anchor.as_deref()).await?;
    let link = trail
        .store
        .chain_links(through_seq - 1, 1)
        .await?
        .pop()
        .filter(|l| l.record.seq == through_seq)
        .ok_or_else(|| Error::invalid("through_seq", "must name a record in the trail"))?;
    let base = checkpoint(&trail.key, through_seq, link.hash);
    let deleted = trail.store.prune(base.clone()).await?;
    if let Some(anchor) = &trail.anchor {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(anchor)
            .map_err(|e| Error::file(format!("audit anchor {}: {e}", anchor.display())))?;
        writeln!(file, "{}", checkpoint_line(&base))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::file(format!("writing {}: {e}", anchor.display())))?;
    }
    println!(
        "pruned {deleted} audit records through {through_seq} from {}; what remains verifies from there",
        trail.db
    );
    Ok(())
}
