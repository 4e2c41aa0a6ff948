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
    Rfc3339::of(t).as_str().to_string()
}

/// An RFC 3339 timestamp formatted on the stack: every event carries one, so the JSON sinks
/// write it without an allocation. jiff does the calendar and the writing; as events come in
/// bursts, each thread keeps the last second it formatted and writes only the microseconds
/// of the next timestamp in that second (jiff takes about 55 ns a timestamp, the copy 10).
pub struct Rfc3339([u8; 27]);

impl Rfc3339 {
    /// `t` in UTC with microseconds; before 1970 reads as 1970 (as a clock that went back
    /// would), past jiff's last instant (9999-12-30T22:00:00Z) as that instant.
    pub fn of(t: SystemTime) -> Rfc3339 {
        thread_local! {
            static LAST: std::cell::Cell<Option<(u64, [u8; 27])>> =
                const { std::cell::Cell::new(None) };
        }
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let (secs, micros) = (since.as_secs(), since.subsec_micros());
        if secs >= jiff::Timestamp::MAX.as_second() as u64 {
            return Rfc3339(Self::format(secs, since.subsec_nanos()));
        }
        let mut b = match LAST.get() {
            Some((last, b)) if last == secs => b,
            _ => {
                let b = Self::format(secs, since.subsec_nanos());
                LAST.set(Some((secs, b)));
                b
            }
        };
        let mut n = micros;
        for d in b[20..26].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        Rfc3339(b)
    }

    /// The whole timestamp, by jiff.
    fn format(secs: u64, nanos: u32) -> [u8; 27] {
        use std::io::Write;
        let ts = i64::try_from(secs)
            .ok()
            .and_then(|secs| jiff::Timestamp::new(secs, nanos as i32).ok())
            .unwrap_or(jiff::Timestamp::MAX);
        let mut b = *b"1970-01-01T00:00:00.000000Z";
        // Always 27 bytes for years 1970-9999 at six digits of precision.
        let _ = write!(&mut b[..], "{ts:.6}");
        b
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000000Z")
    }
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
        // Within the second the thread formatted last, then past it.
        assert_eq!(
            rfc3339(t + Duration::from_micros(876_543)),
            "2026-11-25T14:03:07.999999Z"
        );
        assert_eq!(
            rfc3339(t - Duration::from_micros(123_456)),
            "2026-11-25T14:03:07.000000Z"
        );
        assert_eq!(
            rfc3339(t + Duration::from_micros(876_544)),
            "2026-11-25T14:03:08.000000Z"
        );
        assert_eq!(rfc3339(t), "2026-11-25T14:03:07.123456Z");
    }

    #[test]
    fn agrees_with_gmtime_and_clamps_the_ends() {
        // Seconds spread over 1970-9999, every leap-year rule among them (1972, 2000, 2100).
        let mut s: u64 = 0;
        while s < 253_402_207_200 {
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            let secs = s as libc::time_t;
            // SAFETY: gmtime_r writes into the tm we own.
            assert!(!unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null());
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000007Z",
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec
            );
            let t = UNIX_EPOCH + Duration::from_secs(s) + Duration::from_nanos(7_999);
            assert_eq!(rfc3339(t), want, "second {s}");
            s += 86_399 * 7 + 3_607;
        }
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000000Z");
        let after = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(after), "9999-12-30T22:00:00.999999Z");
    }

    #[test]
    fn boot_clock_maps_now_to_now() {
        let clock = BootClock::new();
        let wall = clock.wall(clock_ns(libc::CLOCK_MONOTONIC));
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
    }
}
