//! Time in the stored unit: whole microseconds since the Unix epoch.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Microseconds since the epoch (0 for a time before it).
pub fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The time `us` microseconds after the epoch (the epoch for a negative value).
pub fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The current time, truncated to whole microseconds so that it survives a
/// round trip through the store unchanged.
pub fn now() -> SystemTime {
    from_micros(micros(SystemTime::now()))
}

/// Microseconds since the epoch, `ago` before now (saturating: any duration
/// a client sends is safe).
pub fn micros_ago(ago: Duration) -> i64 {
    let ago = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
    micros(SystemTime::now()).saturating_sub(ago)
}

/// Where the domain reads the current time: the system clock, or a manual
/// clock that moves only when told (tests of rules that span days).
/// Clones share one manual clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Microseconds since the epoch of a manual clock; `None` for the system clock.
    manual_us: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads `start` until [`Clock::advance`] moves it.
    pub fn manual(start: SystemTime) -> Self {
        Self {
            manual_us: Some(Arc::new(AtomicI64::new(micros(start)))),
        }
    }

    /// Moves a manual clock forward by `by`; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(us) = &self.manual_us {
            let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            let _ = us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(by))
            });
        }
    }

    /// The current time in whole microseconds since the epoch.
    pub fn now_micros(&self) -> i64 {
        match &self.manual_us {
            Some(us) => us.load(Ordering::Relaxed),
            None => micros(SystemTime::now()),
        }
    }

    /// The current time, in whole microseconds (see [`now`]).
    pub fn now(&self) -> SystemTime {
        from_micros(self.now_micros())
    }

    /// Microseconds since the epoch, `ago` before now (saturating).
    pub fn micros_ago(&self, ago: Duration) -> i64 {
        let ago = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
        self.now_micros().saturating_sub(ago)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        let t = now();
        assert_eq!(from_micros(micros(t)), t);
        assert_eq!(from_micros(-5), UNIX_EPOCH);
        assert_eq!(micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(micros_ago(Duration::MAX) < 0);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_follow() {
        let start = from_micros(1_700_000_000_000_000);
        let clock = Clock::manual(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(other.now(), start + Duration::from_secs(86_400));
        assert_eq!(other.micros_ago(Duration::from_secs(86_400)), micros(start));
        let system = Clock::system();
        system.advance(Duration::from_secs(1_000_000));
        assert!(system.now() <= now() + Duration::from_secs(1));
    }
}
