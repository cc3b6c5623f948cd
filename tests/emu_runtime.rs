//! The CPU emulator of the CUDA kernels (kernels/emu), through the `selftest_*` kernels of
//! kernels/selftest.cu: execution model, barriers, warp collectives, atomics, 16-bit floats, tensor-core
//! fragments, cp.async and checked (guarded) memory. Every test prints its wall time.

use std::ffi::c_void;
use std::time::Instant;

use half::{bf16, f16};
use instagen::backend::emu::{self, GuardedBuf};

/// One kernel argument, stored in an 8-byte slot as `cuLaunchKernel` would read it.
#[derive(Clone, Copy)]
enum A {
    P(*mut c_void),
    I(i32),
    L(i64),
}

fn p<T>(v: &mut [T]) -> A {
    A::P(v.as_mut_ptr().cast())
}

fn run(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    args: &[A],
) -> instagen::error::Result<()> {
    let mut slots: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            A::P(p) => p as u64,
            A::I(v) => v as u32 as u64,
            A::L(v) => v as u64,
        })
        .collect();
    let ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
    // SAFETY: every slot holds a value of the parameter type the selftest kernel declares (pointers to
    // buffers large enough for the launch, or guarded ones where the test wants a fault).
    unsafe { emu::launch(name, grid, block, smem, &ptrs) }
}

fn grid1(x: u32) -> [u32; 3] {
    [x, 1, 1]
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    println!("{what}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    r
}

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Small integers as f32, so that sums in any order are exact.
    fn small(&mut self) -> f32 {
        (self.next() % 17) as f32 - 8.0
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

fn err_text(r: instagen::error::Result<()>) -> String {
    match r {
        Ok(()) => panic!("expected the launch to fail"),
        Err(e) => e.to_string(),
    }
}

fn block_sum(x: &mut [f32], blocks: u32, threads: u32) -> Vec<f32> {
    let mut partial = vec![f32::NAN; blocks as usize];
    let n = x.len() as i64;
    run(
        "selftest_block_sum",
        grid1(blocks),
        [threads, 1, 1],
        0,
        &[p(x), p(&mut partial), A::L(n)],
    )
    .unwrap();
    partial
}

#[test]
fn block_reduction_64x256() {
    let (blocks, threads) = (64u32, 256u32);
    let mut rng = Rng(1);
    let mut x: Vec<f32> = (0..blocks * threads * 4).map(|_| rng.small()).collect();
    let partial = timed(
        "shared-memory + shuffle reduction, 64 blocks x 256 threads",
        || block_sum(&mut x, blocks, threads),
    );
    let mut expect = vec![0.0f32; blocks as usize];
    for (i, v) in x.iter().enumerate() {
        expect[i % (blocks * threads) as usize / threads as usize] += v;
    }
    assert_eq!(partial, expect);
    assert_eq!(partial.iter().sum::<f32>(), x.iter().sum::<f32>());
}

#[test]
fn worker_count_setting() {
    timed("worker count setting", || {
        let before = emu::workers();
        assert!((1..=64).contains(&before));
        assert!(emu::set_workers(0).is_err());
        assert!(emu::set_workers(65).is_err());
        let mut rng = Rng(2);
        let mut x: Vec<f32> = (0..32 * 128 * 3).map(|_| rng.small()).collect();
        emu::set_workers(1).unwrap();
        let one = block_sum(&mut x, 32, 128);
        emu::set_workers(3).unwrap();
        let three = block_sum(&mut x, 32, 128);
        emu::set_workers(before).unwrap();
        assert_eq!(one, three);
    });
}

#[test]
fn shuffle_in_first_warp_while_others_wait_at_a_barrier() {
    let (blocks, threads) = (8usize, 256usize);
    let mut rng = Rng(3);
    let mut x: Vec<f32> = (0..blocks * threads).map(|_| rng.small()).collect();
    let mut y = vec![f32::NAN; blocks * threads];
    timed("first-warp shuffle while 7 warps wait", || {
        run(
            "selftest_first_warp_sum",
            grid1(blocks as u32),
            [threads as u32, 1, 1],
            0,
            &[p(&mut x), p(&mut y)],
        )
    })
    .unwrap();
    for b in 0..blocks {
        let s: f32 = x[b * threads..(b + 1) * threads].iter().sum();
        assert!(
            y[b * threads..(b + 1) * threads].iter().all(|&v| v == s),
            "block {b}"
        );
    }
}

#[test]
fn dynamic_shared_memory() {
    let (blocks, threads) = (4usize, 96usize);
    let mut x: Vec<f32> = (0..blocks * threads).map(|i| i as f32).collect();
    let mut y = vec![f32::NAN; blocks * threads];
    timed("dynamic shared memory", || {
        run(
            "selftest_reverse",
            grid1(blocks as u32),
            [threads as u32, 1, 1],
            (threads * 4) as u32,
            &[p(&mut x), p(&mut y)],
        )
    })
    .unwrap();
    for b in 0..blocks {
        for t in 0..threads {
            assert_eq!(y[b * threads + t], x[b * threads + threads - 1 - t]);
        }
    }
    // Dynamic shared memory ends at a guard page: 64 threads writing into 60 floats' worth fault.
    let msg = err_text(run("selftest_reverse", grid1(1), [64, 1, 1], 60 * 4, &[p(&mut x), p(&mut y)]));
    assert!(msg.contains("shared memory overrun") && msg.contains("of the block's 240 bytes"), "{msg}");
}

#[test]
fn thread_and_block_indices_in_3d() {
    let (grid, block) = ([3u32, 2, 2], [4u32, 3, 2]);
    let total = grid.iter().chain(&block).product::<u32>() as usize;
    let mut out = vec![u32::MAX; total];
    let mut dims = vec![0u32; 6];
    timed("3-D indices", || {
        run(
            "selftest_indices",
            grid,
            block,
            0,
            &[p(&mut out), p(&mut dims)],
        )
    })
    .unwrap();
    assert_eq!(dims, [3, 2, 2, 4, 3, 2]);
    let mut i = 0;
    for bz in 0..2 {
        for by in 0..2 {
            for bx in 0..3 {
                for tz in 0..2 {
                    for ty in 0..3 {
                        for tx in 0..4 {
                            let want = tx | ty << 5 | tz << 10 | bx << 14 | by << 18 | bz << 22;
                            assert_eq!(out[i], want, "slot {i}");
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn shuffles_and_votes() {
    let mut out = vec![i32::MIN; 64 * 8];
    timed("shuffles and votes", || {
        run("selftest_warp_ops", grid1(1), [64, 1, 1], 0, &[p(&mut out)])
    })
    .unwrap();
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |m, l| m | 1 << l) as i32;
    for t in 0..64i32 {
        let (lane, base) = (t % 32, t - t % 32);
        let seg = lane & !15;
        let want = [
            base + 3,
            if lane >= 2 { t - 2 } else { t },
            if lane + 5 >= seg + 16 { t } else { t + 5 },
            base + (lane ^ 9),
            ballot,
            (t < 32) as i32,
            (t < 32) as i32,
            (base + (lane & 16) + 1) * 10,
        ];
        assert_eq!(out[t as usize * 8..t as usize * 8 + 8], want, "thread {t}");
    }
}

#[test]
fn divergent_syncthreads_is_an_error() {
    let mut y = vec![0.0f32; 256];
    let t = Instant::now();
    let msg = err_text(run(
        "selftest_divergent_sync",
        grid1(4),
        [256, 1, 1],
        0,
        &[p(&mut y)],
    ));
    println!(
        "divergent __syncthreads (early return): {:.1} ms: {msg}",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(t.elapsed().as_secs() < 5);
    for part in [
        "selftest_divergent_sync",
        ", block (",
        "__syncthreads (kernels/selftest.cu:",
        "exited",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    let msg = timed("divergent __syncthreads (two call sites)", || {
        err_text(run(
            "selftest_split_sync",
            grid1(2),
            [64, 1, 1],
            0,
            &[p(&mut y)],
        ))
    });
    assert!(
        msg.contains("divergent __syncthreads: 32 threads at"),
        "{msg}"
    );
}

#[test]
fn warp_collective_with_an_exited_lane_is_an_error() {
    let mut y = vec![0.0f32; 32];
    let msg = timed("shuffle with an exited lane", || {
        err_text(run(
            "selftest_warp_exit",
            grid1(1),
            [32, 1, 1],
            0,
            &[p(&mut y)],
        ))
    });
    assert!(
        msg.contains("lane 5") && msg.contains("exited") && msg.contains("__shfl_xor_sync"),
        "{msg}"
    );
}

#[test]
fn deadlocks_are_diagnosed() {
    let mut y = vec![0i32; 32];
    let msg = timed("barrier vs warp collective", || {
        err_text(run(
            "selftest_deadlock",
            grid1(1),
            [32, 1, 1],
            0,
            &[p(&mut y), A::I(0)],
        ))
    });
    for part in [
        "kernel selftest_deadlock, block (0,0,0): deadlock: 16 of 32 threads wait at __syncthreads (kernels/selftest.cu:",
        "warp 0: lanes 16-31 wait at __shfl_sync (kernels/selftest.cu:",
        "mask 0xffffffff) but lane 0 waits at __syncthreads",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    let msg = timed("mismatched warp collectives", || {
        err_text(run(
            "selftest_deadlock",
            grid1(1),
            [32, 1, 1],
            0,
            &[p(&mut y), A::I(1)],
        ))
    });
    assert!(
        msg.contains("__ballot_sync")
            && msg.contains("__shfl_sync")
            && msg.contains("warp 0: lane"),
        "{msg}"
    );
}

#[test]
fn atomic_histogram_across_blocks() {
    let n = 100_000usize;
    let mut rng = Rng(4);
    let mut idx: Vec<i32> = (0..n).map(|_| (rng.next() % 64) as i32).collect();
    let (mut hist, mut hist_smem) = (vec![0.0f32; 64], vec![0.0f32; 64]);
    timed("float atomicAdd histogram, 40 blocks x 256", || {
        run(
            "selftest_histogram",
            grid1(40),
            [256, 1, 1],
            0,
            &[p(&mut idx), p(&mut hist), p(&mut hist_smem), A::L(n as i64)],
        )
    })
    .unwrap();
    let mut want = vec![0.0f32; 64];
    for &b in &idx {
        want[b as usize] += 1.0;
    }
    assert_eq!(hist, want);
    assert_eq!(hist_smem, want);
}

#[test]
fn atomics_of_every_kind() {
    let mut i32s = vec![i32::MIN, i32::MAX, 0, 0];
    let mut u32s = vec![0, u32::MAX, 0, u32::MAX, 0];
    let mut u64s = vec![0u64];
    let mut f64s = vec![0.0f64];
    timed("atomics, 8 blocks x 128", || {
        run(
            "selftest_atomics",
            grid1(8),
            [128, 1, 1],
            0,
            &[p(&mut i32s), p(&mut u32s), p(&mut u64s), p(&mut f64s)],
        )
    })
    .unwrap();
    assert_eq!(i32s, [1023, -1023, -1024, 3072]);
    assert_eq!([u32s[0], u32s[1], u32s[2], u32s[4]], [1023, 0, 2048, 1024]);
    assert!(u32s[3] < 1024, "atomicExch left {}", u32s[3]);
    assert_eq!(u64s[0], 1024);
    assert_eq!(f64s[0], 512.0);
}

/// Bits equal, or both NaN with the same sign.
fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits()
        || (a.is_nan() && b.is_nan() && a.is_sign_negative() == b.is_sign_negative())
}

#[test]
fn f16_and_bf16_decode_every_bit_pattern() {
    let mut bits: Vec<u16> = (0..=u16::MAX).collect();
    let mut bits2 = bits.clone();
    let (mut hf, mut bf) = (vec![0.0f32; bits.len()], vec![0.0f32; bits.len()]);
    let n = bits.len() as i64;
    timed("decode 65536 f16 and bf16 patterns", || {
        run(
            "selftest_f16_decode",
            grid1(64),
            [256, 1, 1],
            0,
            &[p(&mut bits), p(&mut bits2), p(&mut hf), p(&mut bf), A::L(n)],
        )
    })
    .unwrap();
    for (i, &b) in bits.iter().enumerate() {
        assert!(
            same_f32(hf[i], f16::from_bits(b).to_f32()),
            "f16 {b:#06x}: {} vs {}",
            hf[i],
            f16::from_bits(b)
        );
        assert!(
            same_f32(bf[i], bf16::from_bits(b).to_f32()),
            "bf16 {b:#06x}: {} vs {}",
            bf[i],
            bf16::from_bits(b)
        );
    }
}

/// Every f16 value, the midpoints between neighbours (ties) and one f32 ulp either side, the same for bf16,
/// specials, f32 subnormals and random bit patterns.
fn encode_inputs() -> Vec<f32> {
    let mut v = Vec::new();
    let ulp = |x: f32, d: i32| f32::from_bits((x.to_bits() as i32 + d) as u32);
    for h in 0..0x7c00u16 {
        for (a, b) in [
            (f16::from_bits(h).to_f32(), f16::from_bits(h + 1).to_f32()),
            (bf16::from_bits(h).to_f32(), bf16::from_bits(h + 1).to_f32()),
        ] {
            let mid = a + (b - a) / 2.0;
            for x in [a, mid, ulp(mid, -1), ulp(mid, 1)] {
                if x.is_finite() {
                    v.extend([x, -x]);
                }
            }
        }
    }
    v.extend([
        0.0,
        -0.0,
        65504.0,
        65519.996,
        65520.0,
        65536.0,
        1e10,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
    ]);
    v.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
    ]);
    let mut rng = Rng(5);
    v.extend((0..50_000).map(|_| f32::from_bits(rng.next() as u32)));
    v
}

#[test]
fn f16_and_bf16_encode_round_to_nearest_even() {
    let mut f = encode_inputs();
    let n = f.len();
    let (mut h, mut b, mut h2, mut b2) =
        (vec![0u16; n], vec![0u16; n], vec![0u16; n], vec![0u16; n]);
    timed(&format!("encode {n} floats to f16 and bf16"), || {
        run(
            "selftest_f16_encode",
            grid1(64),
            [256, 1, 1],
            0,
            &[
                p(&mut f),
                p(&mut h),
                p(&mut b),
                p(&mut h2),
                p(&mut b2),
                A::L(n as i64),
            ],
        )
    })
    .unwrap();
    for i in 0..n {
        let (wh, wb) = (f16::from_f32(f[i]), bf16::from_f32(f[i]));
        let ok_h = if f[i].is_nan() {
            f16::from_bits(h[i]).is_nan()
        } else {
            h[i] == wh.to_bits()
        };
        let ok_b = if f[i].is_nan() {
            bf16::from_bits(b[i]).is_nan()
        } else {
            b[i] == wb.to_bits()
        };
        assert!(
            ok_h,
            "f16 of {:e} ({:#010x}): {:#06x}, want {:#06x}",
            f[i],
            f[i].to_bits(),
            h[i],
            wh.to_bits()
        );
        assert!(
            ok_b,
            "bf16 of {:e} ({:#010x}): {:#06x}, want {:#06x}",
            f[i],
            f[i].to_bits(),
            b[i],
            wb.to_bits()
        );
        assert_eq!(
            (h2[i], b2[i]),
            (h[i], b[i]),
            "__float2half / __float2bfloat16 vs the _rn forms"
        );
    }
}

/// Random finite values of a 16-bit type, as bits, of moderate size.
fn random16(rng: &mut Rng, n: usize, decode: fn(u16) -> f32) -> Vec<u16> {
    (0..n)
        .map(|_| {
            loop {
                let b = rng.next() as u16;
                let v = decode(b);
                if v.is_finite() && v.abs() < 1e3 {
                    break b;
                }
            }
        })
        .collect()
}

fn check_ops16(
    kernel: &str,
    decode: fn(u16) -> f32,
    encode: fn(f32) -> u16,
    encode64: fn(f64) -> u16,
) {
    let n = 4096;
    let mut rng = Rng(6);
    let (mut a, mut b, mut c) = (
        random16(&mut rng, n, decode),
        random16(&mut rng, n, decode),
        random16(&mut rng, n, decode),
    );
    let mut out = vec![0u16; 6 * n];
    timed(kernel, || {
        run(
            kernel,
            grid1(8),
            [128, 1, 1],
            0,
            &[p(&mut a), p(&mut b), p(&mut c), p(&mut out), A::L(n as i64)],
        )
    })
    .unwrap();
    for i in 0..n {
        let (x, y, z) = (decode(a[i]), decode(b[i]), decode(c[i]));
        let exact = [
            encode(x + y),
            encode(x * y),
            0,
            encode(x.max(y)),
            encode(x.abs()),
            encode(x - y),
        ];
        for k in [0, 1, 3, 4, 5] {
            assert_eq!(out[6 * i + k], exact[k], "{kernel} op {k} on {x} {y}");
        }
        // __hfma rounds through f32: at most one unit in the last place from the exact rounding.
        let fma = encode64(x as f64 * y as f64 + z as f64);
        assert!(
            (out[6 * i + 2] as i32 - fma as i32).abs() <= 1,
            "{kernel} fma({x}, {y}, {z})"
        );
    }
}

#[test]
fn f16_and_bf16_arithmetic_intrinsics() {
    check_ops16(
        "selftest_f16_ops",
        |b| f16::from_bits(b).to_f32(),
        |x| f16::from_f32(x).to_bits(),
        |x| f16::from_f64(x).to_bits(),
    );
    check_ops16(
        "selftest_bf16_ops",
        |b| bf16::from_bits(b).to_f32(),
        |x| bf16::from_f32(x).to_bits(),
        |x| bf16::from_f64(x).to_bits(),
    );
}

#[test]
fn f16_pair_intrinsics() {
    let n = 1024;
    let mut rng = Rng(7);
    let mut f: Vec<f32> = (0..2 * n).map(|_| rng.uniform(-70000.0, 70000.0)).collect();
    let mut out = vec![0.0f32; 6 * n];
    timed("pair intrinsics", || {
        run(
            "selftest_f16_pairs",
            grid1(4),
            [128, 1, 1],
            0,
            &[p(&mut f), p(&mut out), A::L(n as i64)],
        )
    })
    .unwrap();
    let h = |x: f32| f16::from_f32(x).to_f32();
    let b = |x: f32| bf16::from_f32(x).to_f32();
    for i in 0..n {
        let (x, y) = (f[2 * i], f[2 * i + 1]);
        let want = [h(x), h(y), h(y), h(x), b(x), b(y)];
        for k in 0..6 {
            assert!(
                same_f32(out[6 * i + k], want[k]),
                "pair {i} slot {k}: {} vs {}",
                out[6 * i + k],
                want[k]
            );
        }
    }
}

/// d = A (16x16) * B (16x8) + c through ldmatrix + mma in `mode` (see kernels/selftest.cu), against an f64
/// reference.
fn check_mma(kernel: &str, mode: i32, to_bits: fn(f32) -> u16, from_bits: fn(u16) -> f32) {
    let mut rng = Rng(8 + mode as u64);
    let a: Vec<u16> = (0..256).map(|_| to_bits(rng.uniform(-2.0, 2.0))).collect();
    let b: Vec<u16> = (0..128).map(|_| to_bits(rng.uniform(-2.0, 2.0))).collect();
    let mut c: Vec<f32> = (0..128).map(|_| rng.uniform(-4.0, 4.0)).collect();
    // mode 1 takes A^T and B; modes 0 and 2 take A and B^T.
    let mut a_src: Vec<u16> = (0..256)
        .map(|i| {
            if mode == 1 {
                a[(i % 16) * 16 + i / 16]
            } else {
                a[i]
            }
        })
        .collect();
    let mut b_src: Vec<u16> = (0..128)
        .map(|i| {
            if mode == 1 {
                b[i]
            } else {
                b[(i % 16) * 8 + i / 16]
            }
        })
        .collect();
    let mut d = vec![f32::NAN; 128];
    timed(&format!("{kernel} mode {mode}"), || {
        run(
            kernel,
            grid1(1),
            [32, 1, 1],
            0,
            &[
                p(&mut a_src),
                p(&mut b_src),
                p(&mut c),
                p(&mut d),
                A::I(mode),
            ],
        )
    })
    .unwrap();
    for m in 0..16 {
        for n in 0..8 {
            let want = c[m * 8 + n] as f64
                + (0..16)
                    .map(|k| from_bits(a[m * 16 + k]) as f64 * from_bits(b[k * 8 + n]) as f64)
                    .sum::<f64>();
            let got = d[m * 8 + n] as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "{kernel} mode {mode} d[{m}][{n}] = {got}, want {want}"
            );
        }
    }
}

#[test]
fn mma_m16n8k16_fragments_via_ldmatrix() {
    let f16_bits = |x: f32| f16::from_f32(x).to_bits();
    let f16_val = |b: u16| f16::from_bits(b).to_f32();
    for mode in 0..3 {
        check_mma("selftest_mma_f16", mode, f16_bits, f16_val);
        check_mma(
            "selftest_mma_bf16",
            mode,
            |x| bf16::from_f32(x).to_bits(),
            |b| bf16::from_bits(b).to_f32(),
        );
    }
}

#[test]
fn cp_async_copies_land_at_the_wait() {
    let (blocks, nt) = (3usize, 64usize);
    let mut rng = Rng(9);
    let mut src: Vec<f32> = (0..blocks * nt * 8)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let smem = (2 * 16 * nt) as u32;
    for skip_wait in [0, 1] {
        let mut dst = vec![0.0f32; src.len()];
        timed(&format!("cp.async (skip_wait {skip_wait})"), || {
            run(
                "selftest_cp_async",
                grid1(blocks as u32),
                [nt as u32, 1, 1],
                smem,
                &[p(&mut src), p(&mut dst), A::I(skip_wait)],
            )
        })
        .unwrap();
        let mut poisoned = 0;
        for blk in 0..blocks {
            let (g, o) = (
                &src[blk * nt * 8..(blk + 1) * nt * 8],
                &dst[blk * nt * 8..(blk + 1) * nt * 8],
            );
            for t in 0..nt {
                let rev = nt - 1 - t;
                for k in 0..4 {
                    let first = o[t * 4 + k];
                    // Without the wait a copy lands at a random moment up to its thread's next wait, so some
                    // reads see the poisoned (all-ones) shared memory; which ones depends on the schedule.
                    let stale = skip_wait == 1 && first.to_bits() == u32::MAX;
                    poisoned += stale as usize;
                    assert!(
                        stale || first == g[rev * 4 + k],
                        "block {blk} thread {t}: {first}"
                    );
                    let zfilled = rev % 2 == 1 && k >= 2;
                    let want = if zfilled { 0.0 } else { g[(nt + rev) * 4 + k] };
                    assert_eq!(
                        o[(nt + t) * 4 + k],
                        want,
                        "block {blk} thread {t} second half"
                    );
                }
            }
        }
        assert_eq!(poisoned > 0, skip_wait == 1, "{poisoned} stale reads");
    }
}

fn guarded_copy(n: usize, read_off: i32, write_off: i32) -> instagen::error::Result<Vec<f32>> {
    let mut x = GuardedBuf::new(n * 4).unwrap();
    let y = GuardedBuf::new(n * 4).unwrap();
    for (i, c) in x.as_bytes_mut().chunks_exact_mut(4).enumerate() {
        c.copy_from_slice(&(i as f32).to_le_bytes());
    }
    run(
        "selftest_copy",
        grid1(4),
        [128, 1, 1],
        0,
        &[
            A::P(x.as_ptr().cast()),
            A::P(y.as_ptr().cast()),
            A::I(n as i32),
            A::I(read_off),
            A::I(write_off),
        ],
    )?;
    Ok(y.as_bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[test]
fn checked_mode_catches_out_of_bounds() {
    timed("checked mode", || {
        for n in [1000usize, 1001] {
            let y = guarded_copy(n, 0, 0).unwrap();
            assert!(y.iter().enumerate().all(|(i, &v)| v == i as f32));
            let read = err_text(guarded_copy(n, 1, 0).map(|_| ()));
            let want = format!(
                "0 bytes past the end of a guarded buffer of {} bytes",
                n * 4
            );
            assert!(
                read.contains("out-of-bounds access") && read.contains(&want),
                "{read}"
            );
            assert!(
                read.contains("selftest_copy") && read.contains("thread ("),
                "{read}"
            );
            let write = err_text(guarded_copy(n, 0, 1).map(|_| ()));
            assert!(
                write.contains("out-of-bounds access") && write.contains(&want),
                "{write}"
            );
        }
        // The emulator is usable after a fault.
        assert!(guarded_copy(64, 0, 0).is_ok());
    });
}

#[test]
fn fibre_stack_overflow_is_an_error() {
    let mut y = vec![0.0f32; 1];
    let msg = timed("fibre stack overflow", || {
        err_text(run(
            "selftest_stack_overflow",
            grid1(1),
            [32, 1, 1],
            0,
            &[p(&mut y), A::I(20480)],
        ))
    });
    assert!(msg.contains("stack overflow"), "{msg}");
    let mut x = vec![1.0f32; 256];
    assert_eq!(block_sum(&mut x, 1, 64), [256.0]);
}

#[test]
fn launch_errors() {
    timed("launch errors", || {
        let msg = err_text(run("no_such_kernel", grid1(1), [1, 1, 1], 0, &[]));
        assert!(msg.contains("no_such_kernel"), "{msg}");
        let mut y = vec![0.0f32; 32];
        let msg = err_text(run("selftest_warp_exit", grid1(1), [32, 1, 1], 0, &[]));
        assert!(
            msg.contains("0 arguments given, the kernel takes 1"),
            "{msg}"
        );
        let msg = err_text(run(
            "selftest_warp_exit",
            grid1(1),
            [2048, 1, 1],
            0,
            &[p(&mut y)],
        ));
        assert!(msg.contains("invalid block"), "{msg}");
        let msg = err_text(run(
            "selftest_warp_exit",
            grid1(0),
            [32, 1, 1],
            0,
            &[p(&mut y)],
        ));
        assert!(msg.contains("invalid grid"), "{msg}");
    });
}

#[test]
fn kernel_table_lists_every_kernel() {
    let names: Vec<&str> = emu::kernels().iter().map(|k| k.name).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted by name");
    for k in [
        "selftest_block_sum",
        "selftest_mma_f16",
        "selftest_cp_async",
    ] {
        let found = emu::find(k).unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(found.file, "selftest");
    }
    let sources = instagen::kernels::kernel_sources();
    assert!(emu::kernels().iter().all(|k| sources.contains(&k.file)));
}
