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
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
