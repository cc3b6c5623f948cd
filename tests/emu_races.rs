//! The emulator catches races a GPU would expose (kernels/emu): the adversarial schedule turns a missing
//! barrier or `cp.async` wait into wrong results, and the race check (checked mode) names it. Negative tests:
//! kernels built without one marked barrier or wait (build/emu.rs `VARIANTS`) must fail. Also the race check
//! on small `selftest_race` kernels (a race reported with file:line; the same code with a barrier, warp-
//! synchronous code and atomics not reported), static `__shared__` poisoned in every block, shuffle operands of
//! 32 and more (PTX `shfl.sync`), and `__hfma` rounding once. Every test prints its wall time.

use std::ffi::c_void;
use std::time::Instant;

use half::{bf16, f16};
use instagen::backend::emu::{self, EmuBackend};
use instagen::parity;

/// Launches `name` with 8-byte argument slots (pointers or i32), plain or race-checked.
fn launch(name: &str, block: u32, smem: u32, args: &[u64], checked: bool) -> instagen::error::Result<()> {
    let mut slots = args.to_vec();
    let ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
    // SAFETY: every slot holds a value of the parameter type the selftest kernel declares, pointers to buffers
    // large enough for a one-block launch.
    unsafe {
        if checked {
            emu::launch_checked(name, [1, 1, 1], [block, 1, 1], smem, &ptrs)
        } else {
            emu::launch(name, [1, 1, 1], [block, 1, 1], smem, &ptrs)
        }
    }
}

fn ptr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    println!("{what}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    r
}

/// The line of kernels/selftest.cu that ends with the comment `// marker`, as "kernels/selftest.cu:N".
fn selftest_line(marker: &str) -> String {
    let src = include_str!("../kernels/selftest.cu");
    let tag = format!("// {marker}");
    let n = src.lines().position(|l| l.trim_end().ends_with(&tag)).unwrap_or_else(|| panic!("no {tag} in selftest.cu"));
    format!("kernels/selftest.cu:{}", n + 1)
}

fn race(mode: i32, checked: bool) -> (instagen::error::Result<()>, Vec<f32>) {
    let mut out = vec![0.0f32; 64];
    let r = timed(&format!("selftest_race mode {mode} checked {checked}"), || {
        launch("selftest_race", 64, if mode == 5 { 256 } else { 0 }, &[ptr(&mut out), mode as u32 as u64], checked)
    });
    (r, out)
}

#[test]
fn race_between_warps_is_reported_with_both_sites() {
    let (write, read) = (selftest_line("RACE-WRITE"), selftest_line("RACE-READ"));
    for mode in [0, 5] {
        let (r, _) = race(mode, true);
        let msg = r.expect_err("a read of the other warp's slot with no barrier must be reported").to_string();
        println!("{msg}");
        assert!(msg.contains("shared-memory race"), "{msg}");
        assert!(msg.contains("kernel selftest_race, block (0,0,0)"), "{msg}");
        assert!(msg.contains(&write) && msg.contains(&read), "{msg} should name {write} and {read}");
        assert!(msg.contains(if mode == 5 { "dynamic" } else { "static __shared__" }), "{msg}");
    }
    // Write after read: the second write of a slot the other warp reads in the same interval.
    let (r, _) = race(4, true);
    let msg = r.expect_err("the second write races with the other warp's read").to_string();
    println!("{msg}");
    let again = selftest_line("RACE-WRITE-AGAIN");
    assert!(msg.contains(&again) || msg.contains(&read), "{msg}");
}

#[test]
fn barriers_warp_synchronous_code_and_atomics_are_not_races() {
    let (r, out) = race(1, true);
    r.unwrap();
    assert!(out.iter().enumerate().all(|(t, &v)| v == (63 - t) as f32), "{out:?}");
    let (r, out) = race(2, true);
    r.unwrap();
    assert!(out.iter().enumerate().all(|(t, &v)| v == ((t & !31) + 31 - (t & 31)) as f32), "{out:?}");
    let (r, out) = race(3, true);
    r.unwrap();
    assert!(out.iter().all(|&v| v == 64.0), "{out:?}");
}

#[test]
fn missing_barrier_reads_wrong_values_without_the_check() {
    // Nothing between the write and the read switches fibres, so the first thread to run reads the other
    // warp's slot before that warp has written it (poisoned shared memory), whatever the seed.
    for mode in [0, 5] {
        let (r, out) = race(mode, false);
        r.unwrap();
        let wrong = out.iter().enumerate().filter(|&(t, &v)| v != (63 - t) as f32).count();
        assert!(wrong > 0, "mode {mode}: the schedule did not expose the missing barrier: {out:?}");
    }
    let (r, out) = race(1, false);
    r.unwrap();
    assert!(out.iter().enumerate().all(|(t, &v)| v == (63 - t) as f32), "{out:?}");
}

#[test]
fn static_shared_memory_is_poisoned_in_every_block() {
    // A worker runs its blocks one after another: each must find the array poisoned (not zero, not the last
    // block's values).
    let blocks = 8;
    let mut out = vec![0u32; blocks * 64];
    let mut slot = ptr(&mut out);
    let args = [(&mut slot as *mut u64).cast::<c_void>()];
    // SAFETY: one pointer argument to `blocks * 64` u32.
    unsafe { emu::launch("selftest_static_poison", [blocks as u32, 1, 1], [64, 1, 1], 0, &args) }.unwrap();
    assert!(out.iter().all(|&v| v == u32::MAX), "{out:?}");
}

#[test]
fn cp_async_read_before_the_wait_is_a_race() {
    let nt = 64usize;
    let mut src: Vec<f32> = (0..nt * 8).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; nt * 8];
    for skip_wait in [0u64, 1] {
        let r = timed(&format!("cp.async skip_wait {skip_wait}, checked"), || {
            launch("selftest_cp_async", nt as u32, (2 * 16 * nt) as u32, &[ptr(&mut src), ptr(&mut dst), skip_wait], true)
        });
        if skip_wait == 0 {
            r.unwrap();
        } else {
            let msg = r.expect_err("reading another warp's copy before its wait is a race").to_string();
            println!("{msg}");
            assert!(msg.contains("shared-memory race") && msg.contains("selftest.cu:"), "{msg}");
        }
    }
}

/// The tensor-core attention (forward and statistics) and GEMM parity cases.
fn cases_launching(prefixes: &[&str]) -> Vec<parity::Case> {
    let cases: Vec<parity::Case> = parity::all_cases()
        .into_iter()
        .filter(|c| c.kernels.iter().any(|k| prefixes.iter().any(|p| k.starts_with(p))))
        .collect();
    assert!(!cases.is_empty(), "no parity case launches {prefixes:?}");
    cases
}

/// Runs `cases` with the race variant `variant` on emu; returns how many failed (wrong results or an error).
fn failures(variant: &'static str, cases: &[parity::Case], checked: bool) -> usize {
    let mut failed = 0;
    emu::with_variant(variant, || {
        for case in cases {
            let t = Instant::now();
            let r = parity::run_case(case, EmuBackend { checked }, 1);
            let verdict = match &r {
                Ok(o) if o.passed => "passed".to_string(),
                Ok(o) => format!("WRONG (worst error {:.3e} of tolerance)", o.worst_ratio),
                Err(e) => format!("ERROR {e}"),
            };
            failed += !matches!(&r, Ok(o) if o.passed) as usize;
            println!("{variant} {} (checked {checked}): {verdict} [{:.2} s]", case.name, t.elapsed().as_secs_f64());
        }
    })
    .unwrap();
    failed
}

const ATT_TC: &[&str] = &["attention_fwd_d", "attention_stats_fwd_d"];

#[test]
fn attention_without_the_end_barrier_fails() {
    let cases = cases_launching(ATT_TC);
    let failed = failures("attention_no_end_barrier", &cases, false);
    assert!(failed > 0, "all {} cases passed without the barrier after the compute loop", cases.len());
}

#[test]
fn attention_without_the_tile_barrier_fails() {
    let cases = cases_launching(ATT_TC);
    let failed = failures("attention_no_tile_barrier", &cases, false);
    assert!(failed > 0, "all {} cases passed without the barrier between the tile copies and their reads", cases.len());
}

#[test]
fn gemm_without_the_cp_async_wait_fails() {
    let cases = cases_launching(&["gemm_tc_"]);
    let failed = failures("gemm_no_wait", &cases, false);
    assert!(failed > 0, "all {} cases passed without the cp.async wait of the main loop", cases.len());
}

/// In checked mode each variant is reported as a race naming the file, on a case with at least 3 key / k
/// tiles (with 2 key tiles no buffer is refilled while being read: dropping the end barrier is no race).
#[test]
fn race_check_names_the_missing_barriers() {
    let pick = |prefixes: &[&str], name: &str| {
        let c = cases_launching(prefixes).into_iter().find(|c| c.name.contains(name));
        c.unwrap_or_else(|| panic!("no {prefixes:?} case named like {name:?}"))
    };
    let att = pick(ATT_TC, "Tq70 Tk77 H2 D160"); // key tiles of 32
    let gemm = pick(&["gemm_tc_"], "x [200, ");
    for (variant, case, file) in [
        ("attention_no_end_barrier", &att, "kernels/attention.cu:"),
        ("attention_no_tile_barrier", &att, "kernels/attention.cu:"),
        ("gemm_no_wait", &gemm, "kernels/gemm.cu:"),
    ] {
        let r = emu::with_variant(variant, || parity::run_case(case, EmuBackend { checked: true }, 1)).unwrap();
        let msg = r.expect_err("the race check must report the missing barrier or wait").to_string();
        println!("{variant}: {msg}");
        assert!(msg.contains("shared-memory race") && msg.contains(file), "{msg}");
        // The unmodified kernel runs clean under the race check.
        let o = parity::run_case(case, EmuBackend { checked: true }, 1).unwrap();
        assert!(o.passed, "{}: {o:?}", case.name);
    }
}

/// PTX `shfl.sync` (ISA pseudocode): b[4:0] is the lane or offset, c = ((32 - width) << 8) | (up ? 0 : 31).
fn ptx_shfl(mode: usize, lane: i32, b: i32, width: i32) -> i32 {
    let (bval, segmask) = (b & 31, 32 - width);
    let cval = if mode == 1 { 0 } else { 31 };
    let max_lane = (lane & segmask) | (cval & !segmask);
    let min_lane = lane & segmask;
    let (j, ok) = match mode {
        0 => {
            let j = min_lane | (bval & !segmask);
            (j, j <= max_lane)
        }
        1 => (lane - bval, lane - bval >= max_lane),
        2 => (lane + bval, lane + bval <= max_lane),
        _ => (lane ^ bval, (lane ^ bval) <= max_lane),
    };
    if ok { j } else { lane }
}

#[test]
fn shuffle_operands_wrap_modulo_32() {
    let mut offsets = vec![0, 1, 5, 31, 32, 33, 37, 63, 64, 65, -1, -31];
    let mut out = vec![-7i32; offsets.len() * 3 * 4 * 32];
    timed("shuffle operands", || {
        launch("selftest_shfl_operands", 32, 0, &[ptr(&mut offsets), offsets.len() as u64, ptr(&mut out)], false)
    })
    .unwrap();
    let got = |i: usize, w: usize, mode: usize, lane: usize| out[((i * 3 + w) * 4 + mode) * 32 + lane];
    for (i, &b) in offsets.iter().enumerate() {
        for (w, width) in [32, 8, 2].into_iter().enumerate() {
            for mode in 0..4 {
                for lane in 0..32 {
                    let want = ptx_shfl(mode, lane as i32, b, width);
                    assert_eq!(got(i, w, mode, lane), want, "mode {mode} operand {b} width {width} lane {lane}");
                }
            }
        }
    }
    // Offsets of 32 and more wrap: 32 moves nothing, 33 is 1.
    let at = |b: i32| offsets.iter().position(|&x| x == b).unwrap();
    for mode in 0..4 {
        for lane in 0..32 {
            assert_eq!(got(at(33), 0, mode, lane), got(at(1), 0, mode, lane));
            assert_eq!(got(at(64), 0, mode, lane), got(at(0), 0, mode, lane));
        }
    }
    assert!((0..32).all(|l| got(at(32), 0, 3, l) == l as i32), "xor 32 keeps every lane's own value");
    assert!((0..32).all(|l| got(at(33), 0, 2, l) == (l as i32 + 1).min(31).max(l as i32)));
}

/// (x, y, lower) for x, y of the 16-bit type in [1, 2) whose product lies exactly halfway between the
/// neighbours `lower` and `lower + 1` (bit patterns), found by search.
fn tie_products(decode: fn(u16) -> f32, encode64: fn(f64) -> u16, one: u16, count: usize) -> Vec<(u16, u16, u16)> {
    let in_range = |b: u16| (1.0..2.0).contains(&decode(b));
    let mut v = Vec::new();
    for xb in (one..one + 0x400).filter(|&b| in_range(b)) {
        for yb in (one..one + 0x400).filter(|&b| in_range(b)) {
            let p = decode(xb) as f64 * decode(yb) as f64; // exact
            let e = encode64(p);
            let lo = if decode(e) as f64 > p { e - 1 } else { e };
            let (l, h) = (decode(lo) as f64, decode(lo + 1) as f64);
            if p > l && p - l == h - p {
                v.push((xb, yb, lo));
                if v.len() == count {
                    return v;
                }
            }
        }
    }
    v
}

/// `__hfma(x, y, +-tiny)` for products x * y exactly halfway between two 16-bit neighbours: rounding the exact
/// result once goes to the neighbour on tiny's side; rounding through f32 first loses tiny and rounds the tie
/// to even, which is wrong for one of the two signs.
fn check_hfma_ties(kernel: &str, decode: fn(u16) -> f32, encode64: fn(f64) -> u16, one: u16, tiny: u16) {
    let ties = tie_products(decode, encode64, one, 256);
    assert!(ties.len() >= 64, "{kernel}: only {} tie products found", ties.len());
    let n = 2 * ties.len();
    let (mut a, mut b, mut c) = (vec![0u16; n], vec![0u16; n], vec![0u16; n]);
    for (i, &(x, y, _)) in ties.iter().enumerate() {
        for s in 0..2 {
            (a[2 * i + s], b[2 * i + s], c[2 * i + s]) = (x, y, tiny | (s as u16) << 15);
        }
    }
    let mut out = vec![0u16; 6 * n];
    timed(kernel, || {
        launch(kernel, 128, 0, &[ptr(&mut a), ptr(&mut b), ptr(&mut c), ptr(&mut out), n as u64], false)
    })
    .unwrap();
    let mut wrong = Vec::new();
    for (i, &(x, y, lo)) in ties.iter().enumerate() {
        for s in 0..2 {
            let want = if s == 0 { lo + 1 } else { lo };
            let got = out[6 * (2 * i + s) + 2];
            if got != want {
                let z = decode(c[2 * i + s]);
                wrong.push(format!("fma({}, {}, {z:e}) = {} want {}", decode(x), decode(y), decode(got), decode(want)));
            }
        }
    }
    assert!(wrong.is_empty(), "{kernel}: {} of {n} wrong, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(4)]);
}

#[test]
fn hfma_rounds_once() {
    // tiny: the smallest f16 subnormal 2^-24; for bf16 2^-40 (below f32's precision at 1).
    check_hfma_ties("selftest_f16_ops", |b| f16::from_bits(b).to_f32(), |x| f16::from_f64(x).to_bits(), 0x3c00, 0x0001);
    check_hfma_ties(
        "selftest_bf16_ops",
        |b| bf16::from_bits(b).to_f32(),
        |x| bf16::from_f64(x).to_bits(),
        0x3f80,
        bf16::from_f64(2f64.powi(-40)).to_bits(),
    );
}

/// Every parity case on emu in checked mode (guarded tensors and the race check), listing every failure
/// instead of stopping at the first. Slow: run on demand (`cargo test --test emu_races -- --ignored`).
#[test]
#[ignore]
fn race_check_over_every_parity_case() {
    let start = Instant::now();
    let mut failed = Vec::new();
    let cases = parity::all_cases();
    for case in &cases {
        match parity::run_case(case, EmuBackend { checked: true }, 1) {
            Ok(o) if o.passed => {}
            Ok(o) => failed.push(format!("{}: wrong results ({:.3e} of tolerance)", case.name, o.worst_ratio)),
            Err(e) => failed.push(format!("{}: {e}", case.name)),
        }
    }
    println!("{} parity cases race-checked in {:.1} s", cases.len(), start.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}
