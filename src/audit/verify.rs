//! Walking the audit chain: every record in place, unaltered, and the
//! recorded head where the records end.

use crate::{
    crypto::chain::{GENESIS, chain_hash},
    error::Result,
    store::AuditLog,
};

/// Records read per store call while walking.
const WALK_BATCH: usize = 1000;

/// The result of walking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record is in place and unaltered.
    Intact {
        /// Records checked.
        records: i64,
    },
    /// The chain breaks at `seq`.
    Broken {
        /// The first record (sequence number) that does not fit.
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

/// Walks the whole chain in `log` and reports the first break. The head is
/// read first: records a live server appends meanwhile lie beyond it and
/// are not mistaken for tampering.
pub async fn verify_chain(log: &dyn AuditLog) -> Result<AuditVerdict> {
    let (head_seq, head_hash) = log.chain_head().await?.unwrap_or((0, GENESIS.to_vec()));
    let mut expected_seq = 0;
    let mut prev = GENESIS.to_vec();
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
            let broken = |reason: &str| AuditVerdict::Broken {
                seq,
                reason: reason.to_owned(),
            };
            if seq != expected_seq {
                return Ok(AuditVerdict::Broken {
                    seq: expected_seq,
                    reason: format!("record {expected_seq} is missing (next present is {seq})"),
                });
            }
            if link.prev_hash != prev {
                return Ok(broken("its link to the previous record does not match"));
            }
            if link.stored_outcome != link.record.event.outcome.as_str()
                || chain_hash(&prev, seq, &link.record.event).as_slice() != link.hash
            {
                return Ok(broken("its contents were altered (hash mismatch)"));
            }
            prev = link.hash;
        }
    }
    if head_seq != expected_seq {
        return Ok(AuditVerdict::Broken {
            seq: expected_seq + 1,
            reason: format!(
                "the log ends at record {expected_seq} but its head says {head_seq}: records were removed from the end"
            ),
        });
    }
    if head_hash != prev {
        return Ok(AuditVerdict::Broken {
            seq: expected_seq,
            reason: "the last record does not match the recorded head".to_owned(),
        });
    }
    Ok(AuditVerdict::Intact {
        records: expected_seq,
    })
}
