//! The host's TSC frequency, told to every guest kernel.
//!
//! Under TCG the guest's `rdtsc` reads the host's TSC, so the guest's clocks run
//! right only when its kernel is told the host's real TSC frequency; a fixed
//! figure made a guest on a 2.1 GHz host run 5 % fast. The frequency is measured
//! once per process against `CLOCK_MONOTONIC` (the rate the host's wall clock
//! runs at), so neither a wrong `/proc/cpuinfo` nor a hypervisor's rounding can
//! mislead it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Used where the TSC cannot be read (not x86-64).
const FALLBACK_KHZ: u64 = 2_000_000;

/// The host's TSC frequency in kHz: `WISP_GUEST_TSC_KHZ` when set (for a host whose
/// TSC cannot be measured, and for experiments), else measured on first use (about
/// 150 ms).
pub fn host_tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(
        || match std::env::var("WISP_GUEST_TSC_KHZ").map(|v| v.parse::<u64>()) {
            Ok(Ok(khz)) if (100_000..=10_000_000).contains(&khz) => khz,
            Ok(_) => {
                tracing::warn!(
                    "WISP_GUEST_TSC_KHZ is not a frequency from 100000 to 10000000 kHz; measuring"
                );
                measure()
            }
            Err(_) => measure(),
        },
    )
}

/// The kernel arguments fixing the guest's TSC: `tsc_early_khz` (the frequency,
/// so the guest never calibrates: calibration under a loaded TCG host was seen to
/// hang at "could not calculate TSC khz", see VM-NOTES), `tsc=reliable` (no
/// watchdog that would drop the TSC for a slower clock) and `lpj` (loops per
/// jiffy for delay loops; skips their calibration too), kept at the ratio to the
/// frequency that made every boot succeed in VM-NOTES (4000000 at 2 GHz).
pub fn tsc_kernel_args(khz: u64) -> String {
    format!("tsc_early_khz={khz} tsc=reliable lpj={}", khz * 2)
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The median of three 50 ms samples of TSC ticks per millisecond.
#[cfg(target_arch = "x86_64")]
fn measure() -> u64 {
    let mut samples: Vec<u64> = (0..3)
        .map(|_| {
            let (t0, c0) = (Instant::now(), rdtsc());
            std::thread::sleep(Duration::from_millis(50));
            let (c1, t1) = (rdtsc(), Instant::now());
            let nanos = t1.duration_since(t0).as_nanos().max(1);
            (u128::from(c1.wrapping_sub(c0)) * 1_000_000 / nanos) as u64
        })
        .collect();
    samples.sort_unstable();
    let khz = samples[1];
    // A TSC below 100 MHz or above 10 GHz is not one; keep the old figure.
    if (100_000..=10_000_000).contains(&khz) {
        khz
    } else {
        tracing::warn!(
            khz,
            "implausible TSC frequency measured; telling guests 2 GHz"
        );
        FALLBACK_KHZ
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> u64 {
    FALLBACK_KHZ
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two measurements agree to 0.1 % (a guest told either keeps time to that).
    #[test]
    fn the_measured_frequency_is_stable_and_plausible() {
        let a = measure();
        let b = measure();
        assert!((100_000..=10_000_000).contains(&a), "{a} kHz");
        let diff = a.abs_diff(b) as f64 / a as f64;
        assert!(diff < 0.001, "{a} kHz then {b} kHz");
    }

    #[test]
    fn kernel_args_carry_the_frequency() {
        assert_eq!(
            tsc_kernel_args(2_100_000),
            "tsc_early_khz=2100000 tsc=reliable lpj=4200000"
        );
    }
}
