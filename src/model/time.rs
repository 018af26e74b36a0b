//! Time in the stored unit: whole microseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}
