//! How the model benches time a call: one warm-up call (first touch of the arena, module loads, optimiser state),
//! then timed calls until at least `min_runs` and at least `min_seconds` in all; the median of the timed calls.
//! `tools/bench_cpu_torch.py` times PyTorch the same way.

use std::time::Instant;

use crate::error::Result;

/// The median seconds of one call and how many calls were timed (after the warm-up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub seconds: f64,
    pub runs: usize,
}

/// Times `call` (see the module doc); `min_runs` below 1 counts as 1.
pub fn measure(min_runs: usize, min_seconds: f64, mut call: impl FnMut() -> Result<()>) -> Result<Timing> {
    call()?;
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_runs.max(1) || start.elapsed().as_secs_f64() < min_seconds {
        let t = Instant::now();
        call()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Timing { seconds: median(&mut times), runs: times.len() })
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { 0.5 * (v[m - 1] + v[m]) }
}

/// A model bench's printed report and its timing.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub text: String,
    pub timing: Timing,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_unsorted() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn measure_warms_up_and_counts_runs() {
        let mut calls = 0;
        let t = measure(3, 0.0, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((t.runs, calls), (3, 4));
        let mut calls = 0;
        let t = measure(0, 0.02, || {
            calls += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(())
        })
        .unwrap();
        assert!(t.runs >= 3 && calls == t.runs + 1, "{t:?} {calls}");
        assert!(t.seconds >= 0.005 && t.seconds < 0.5, "{t:?}");
    }
}
