//! Walking the audit chain: every record in place and unaltered under the
//! chain key, the recorded head where the records end, and every checkpoint
//! kept outside the database matching what the database still holds.

use std::collections::HashMap;

use crate::{
    crypto::chain::{ChainKey, GENESIS},
    error::Result,
    store::{AuditLog, Checkpoint},
};

/// Records read per store call while walking.
const WALK_BATCH: usize = 1000;

/// The result of walking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record is in place and unaltered, and every checkpoint holds.
    Intact {
        /// Records checked.
        records: i64,
        /// Checkpoints compared with the trail.
        checkpoints: usize,
    },
    /// The chain breaks at `seq`.
    Broken {
        /// The first record (sequence number) that does not fit.
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

fn broken(seq: i64, reason: impl Into<String>) -> AuditVerdict {
    AuditVerdict::Broken {
        seq,
        reason: reason.into(),
    }
}

/// Walks the whole chain in `log` under `key` and compares it with
/// `checkpoints` (from the anchor file; their MACs are checked too);
/// reports the first break. The head is read first: records a live server
/// appends meanwhile lie beyond it and are not mistaken for tampering.
pub async fn verify_chain(
    log: &dyn AuditLog,
    key: &ChainKey,
    checkpoints: &[Checkpoint],
) -> Result<AuditVerdict> {
    for cp in checkpoints {
        if !key.checkpoint_holds(cp.seq, &cp.head, cp.time_us, &cp.mac) {
            return Ok(broken(
                cp.seq,
                "a checkpoint in the anchor does not carry a valid MAC (the anchor was edited)",
            ));
        }
    }
    let (head_seq, head_hash) = log.chain_head().await?.unwrap_or((0, GENESIS.to_vec()));
    let (mut expected_seq, mut prev) = match log.chain_base().await? {
        None => (0, GENESIS.to_vec()),
        Some(base) if key.checkpoint_holds(base.seq, &base.head, base.time_us, &base.mac) => {
            (base.seq, base.head)
        }
        Some(base) => {
            return Ok(broken(
                base.seq + 1,
                "the base of the pruned trail was altered (its MAC does not hold)",
            ));
        }
    };
    let start = expected_seq;
    let wanted: HashMap<i64, Vec<u8>> = checkpoints
        .iter()
        .filter(|cp| cp.seq > start && cp.seq <= head_seq)
        .map(|cp| (cp.seq, cp.head.clone()))
        .collect();
    'walk: loop {
        let links = log.chain_links(expected_seq, WALK_BATCH).await?;
        if links.is_empty() {
            break;
        }
        for link in links {
            let seq = link.record.seq;
            if seq > head_seq {
                break 'walk;
            }
            expected_seq += 1;
            if seq != expected_seq {
                return Ok(broken(
                    expected_seq,
                    format!("record {expected_seq} is missing (next present is {seq})"),
                ));
            }
            if link.prev_hash != prev {
                return Ok(broken(
                    seq,
                    "its link to the previous record does not match",
                ));
            }
            if link.stored_outcome != link.record.event.outcome.as_str()
                || key.link(&prev, seq, &link.record.event).as_slice() != link.hash
            {
                return Ok(broken(
                    seq,
                    "its contents or its link were altered (the MAC under the chain key does not hold)",
                ));
            }
            if wanted.get(&seq).is_some_and(|held| *held != link.hash) {
                return Ok(broken(seq, "it differs from the record a checkpoint holds"));
            }
            prev = link.hash;
        }
    }
    if head_seq != expected_seq {
        return Ok(broken(
            expected_seq + 1,
            format!(
                "the log ends at record {expected_seq} but its head says {head_seq}: records were removed from the end"
            ),
        ));
    }
    if head_hash != prev {
        return Ok(broken(
            expected_seq,
            "the last record does not match the recorded head",
        ));
    }
    if let Some(cp) = checkpoints
        .iter()
        .filter(|cp| cp.seq > head_seq)
        .max_by_key(|cp| cp.seq)
    {
        return Ok(broken(
            head_seq + 1,
            format!(
                "a checkpoint shows the trail held record {} but it ends at {head_seq}: the newest records were removed",
                cp.seq
            ),
        ));
    }
    Ok(AuditVerdict::Intact {
        records: expected_seq - start,
        checkpoints: checkpoints.len(),
    })
}
