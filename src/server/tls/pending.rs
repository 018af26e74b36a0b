//! The TLS handshakes one listener has in flight, capped per source and in
//! total. A newcomer is always admitted: at a cap, the oldest pending
//! handshake (of that source, or of all) gives way. A flood therefore ages
//! out its own connections instead of locking new clients out, and a
//! source over its share only ever displaces itself.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// A pending handshake's source: the IPv4 address, or the IPv6 /64 (one
/// host usually holds a whole /64, so counting addresses would not cap it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = v6.to_bits() & !u128::from(u64::MAX);
                Self(IpAddr::V6(Ipv6Addr::from_bits(prefix)))
            }
        }
    }
}

/// Why a pending handshake gave way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Evicted {
    /// Its source had the most pending handshakes it may have.
    SourceCap,
    /// The listener had the most pending handshakes it may have.
    TotalCap,
}

/// The pending handshakes of one listener.
pub(super) struct Pending {
    total_cap: usize,
    source_cap: usize,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Admission number of the next handshake (larger is younger).
    next: u64,
    /// Every pending handshake by age, with its source and the sender that
    /// tells it to give way.
    by_age: BTreeMap<u64, (Source, oneshot::Sender<Evicted>)>,
    /// The pending handshakes of each source, by age.
    by_source: HashMap<Source, BTreeSet<u64>>,
}

impl Slots {
    fn remove(&mut self, seq: u64) -> Option<oneshot::Sender<Evicted>> {
        let (source, evict) = self.by_age.remove(&seq)?;
        if let Some(seqs) = self.by_source.get_mut(&source) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some(evict)
    }
}

/// A pending handshake's place; dropping it (handshake done, failed or
/// evicted) frees the place.
pub(super) struct Ticket {
    pending: Arc<Pending>,
    seq: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().remove(self.seq);
    }
}

impl Pending {
    /// At most `total_cap` pending handshakes, `source_cap` of them from
    /// any one source (both at least 1).
    pub(super) fn new(total_cap: usize, source_cap: usize) -> Arc<Self> {
        Arc::new(Self {
            total_cap: total_cap.max(1),
            source_cap: source_cap.max(1),
            slots: Mutex::new(Slots::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a handshake from `ip`, first telling the oldest pending ones
    /// over a cap to give way. The receiver completes if this one is told
    /// to give way in turn (or the listener is gone).
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> (Ticket, oneshot::Receiver<Evicted>) {
        let source = Source::of(ip);
        let (evict, evicted) = oneshot::channel();
        let mut slots = self.lock();
        let oldest_of_source = slots
            .by_source
            .get(&source)
            .filter(|seqs| seqs.len() >= self.source_cap)
            .and_then(|seqs| seqs.first().copied());
        if let Some(seq) = oldest_of_source {
            give_way(slots.remove(seq), Evicted::SourceCap);
        }
        while slots.by_age.len() >= self.total_cap {
            let Some(seq) = slots.by_age.keys().next().copied() else {
                break;
            };
            give_way(slots.remove(seq), Evicted::TotalCap);
        }
        let seq = slots.next;
        slots.next += 1;
        slots.by_age.insert(seq, (source, evict));
        slots.by_source.entry(source).or_default().insert(seq);
        drop(slots);
        let ticket = Ticket {
            pending: self.clone(),
            seq,
        };
        (ticket, evicted)
    }

    /// How many handshakes are pending.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_age.len()
    }
}

fn give_way(evict: Option<oneshot::Sender<Evicted>>, why: Evicted) {
    if let Some(evict) = evict {
        // The handshake may have just ended on its own: nothing to tell.
        let _ = evict.send(why);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_source_at_its_cap_displaces_its_own_oldest_only() {
        let pending = Pending::new(10, 2);
        let (_other, mut other_rx) = pending.admit(ip("10.0.0.9"));
        let (_a1, mut a1_rx) = pending.admit(ip("10.0.0.1"));
        let (_a2, mut a2_rx) = pending.admit(ip("10.0.0.1"));
        assert_eq!(a1_rx.try_recv(), Err(TryRecvError::Empty));
        let (_a3, mut a3_rx) = pending.admit(ip("10.0.0.1"));
        assert_eq!(a1_rx.try_recv(), Ok(Evicted::SourceCap));
        assert_eq!(a2_rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(a3_rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(other_rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn at_the_total_cap_the_oldest_of_all_gives_way() {
        let pending = Pending::new(3, 3);
        let (_a, mut a_rx) = pending.admit(ip("10.0.0.1"));
        let (_b, mut b_rx) = pending.admit(ip("10.0.0.2"));
        let (_c, _c_rx) = pending.admit(ip("10.0.0.3"));
        let (_d, mut d_rx) = pending.admit(ip("10.0.0.4"));
        assert_eq!(a_rx.try_recv(), Ok(Evicted::TotalCap));
        assert_eq!(b_rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(d_rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn a_finished_handshake_frees_its_place() {
        let pending = Pending::new(2, 2);
        let (a, _a_rx) = pending.admit(ip("10.0.0.1"));
        let (_b, mut b_rx) = pending.admit(ip("10.0.0.1"));
        drop(a);
        assert_eq!(pending.len(), 1);
        let (_c, _c_rx) = pending.admit(ip("10.0.0.1"));
        assert_eq!(b_rx.try_recv(), Err(TryRecvError::Empty), "no one evicted");
        assert_eq!(pending.len(), 2);
        assert!(pending.lock().by_source.len() == 1);
    }

    #[test]
    fn ipv6_sources_are_counted_by_64_prefix_and_mapped_v4_as_v4() {
        let pending = Pending::new(10, 1);
        let (_a, mut a_rx) = pending.admit(ip("2001:db8:1:2::1"));
        let (_b, _b_rx) = pending.admit(ip("2001:db8:1:2:ffff::9"));
        assert_eq!(a_rx.try_recv(), Ok(Evicted::SourceCap), "same /64");
        let (_c, mut c_rx) = pending.admit(ip("10.1.2.3"));
        let (_d, _d_rx) = pending.admit(ip("::ffff:10.1.2.3"));
        assert_eq!(c_rx.try_recv(), Ok(Evicted::SourceCap), "same IPv4 host");
    }
}
