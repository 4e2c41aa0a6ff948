//! Kernel timestamps (CLOCK_MONOTONIC, as `bpf_ktime_get_ns` gives them) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts monotonic kernel timestamps to wall-clock time, using the offset between the two
/// clocks measured when it was made.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    realtime_minus_monotonic: i128,
}

impl BootClock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as i128;
        let real = clock_ns(libc::CLOCK_REALTIME) as i128;
        BootClock {
            realtime_minus_monotonic: real - mono,
        }
    }

    /// Now, on the kernel's clock (`bpf_ktime_get_ns`).
    pub fn monotonic_ns(&self) -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let ns = monotonic_ns as i128 + self.realtime_minus_monotonic;
        UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

/// A kernel timestamp (`bpf_ktime_get_ns`) as an `Instant` of the agent's (both are
/// CLOCK_MONOTONIC); a time in the future, or before the agent could tell, is now.
pub fn instant_of_ktime(ktime_ns: u64) -> std::time::Instant {
    let now = std::time::Instant::now();
    let age = clock_ns(libc::CLOCK_MONOTONIC).saturating_sub(ktime_ns);
    now.checked_sub(Duration::from_nanos(age)).unwrap_or(now)
}

/// RFC 3339 in UTC with microseconds: `2026-11-25T14:03:07.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    // Before 1970 reads as 1970, as a clock that went back would.
    let t = t.max(UNIX_EPOCH);
    time::OffsetDateTime::from(t)
        .format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_615_387_123_456);
        assert_eq!(rfc3339(t), "2026-11-25T14:03:07.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn boot_clock_maps_now_to_now() {
        let clock = BootClock::new();
        let wall = clock.wall(clock_ns(libc::CLOCK_MONOTONIC));
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
    }
}
