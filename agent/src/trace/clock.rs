//! Kernel time to wall-clock time.

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Converts kernel `CLOCK_MONOTONIC` timestamps to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset: i128::from(real) - i128::from(mono),
        }
    }
    pub fn to_unix(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }
    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }
}
