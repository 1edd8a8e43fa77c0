//! The one clock every token, device step, CUPTI record and memory reading is placed on before ranks
//! compare: CLOCK_MONOTONIC in nanoseconds (each rank's own; cluster measures the offsets between them).

/// CLOCK_MONOTONIC in ns.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn mono_ns_never_goes_back() {
        let a = super::mono_ns();
        let b = super::mono_ns();
        assert!(a > 0 && b >= a);
    }
}
