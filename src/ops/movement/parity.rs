//! Parity cases: movement kernels (`kernels/movement.cu`): reshape (copied and in place), permute, broadcast,
//! slice, pad and concat on f32, f16, i64 and u8 at odd shapes of rank 1 to 5.
//!
//! Copies move bits, so every case must match exactly (the default tolerance is far looser than needed).
//! Which `copy_strided_b*` kernel a case launches depends on the element size and on whether the launcher
//! can widen the innermost contiguous run (see ops/movement/launch.rs); each case lists the one it
//! is expected to use.

use crate::parity::{Case, Gen, Tol, Work};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::I64, DType::U8];

fn draw(dt: DType) -> Gen {
    if dt.is_float() { Gen::Normal } else { Gen::Uniform(-100.0, 250.0) }
}

/// The copy kernel for `es`-byte elements.
fn copy_kernel(es: usize) -> String {
    format!("copy_strided_b{es}")
}

/// The kernel a copy whose innermost contiguous run holds `run` elements (on both sides, with every other
/// stride and offset a multiple of it) uses: the widest of 8/4/2 bytes dividing the run's bytes.
fn widened(dt: DType, run: usize) -> String {
    let es = dt.size();
    for w in [8usize, 4, 2] {
        if w > es && w.is_multiple_of(es) && (run * es).is_multiple_of(w) {
            return copy_kernel(w);
        }
    }
    copy_kernel(es)
}

type BuildFn = Box<dyn Fn(&mut Graph, NodeId) -> Result<NodeId> + Send + Sync>;

/// One single-input case per dtype: `kernel(dt)` names the expected kernel.
fn per_dtype(
    v: &mut Vec<Case>,
    what: &str,
    shape: &[usize],
    kernel: impl Fn(DType) -> String,
    build: impl Fn() -> BuildFn,
) {
    for dt in DTYPES {
        let b = build();
        let name = format!("{what} {dt} {shape:?}");
        v.push(Case::new(
            name,
            vec![(shape.to_vec(), dt, draw(dt))],
            Tol::for_dtype(dt),
            &[&kernel(dt)],
            move |g, x| b(g, x[0]),
        ));
    }
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();

    // Reshape: a copy when the input must survive (it is also a graph output), nothing when in place.
    per_dtype(
        &mut v,
        "reshape copy [6, 35] -> [14, 15]",
        &[6, 35],
        |dt| widened(dt, 210),
        || {
            Box::new(|g, x| {
                g.mark_output(x);
                g.reshape(x, &[14, 15])
            })
        },
    );
    for dt in DTYPES {
        let name = format!("reshape in place {dt} [3, 5, 7] -> [105]");
        v.push(Case::new(name, vec![(vec![3, 5, 7], dt, draw(dt))], Tol::for_dtype(dt), &[], |g, x| {
            g.reshape(x[0], &[105])
        }));
    }

    // StopGradient: a plain copy.
    per_dtype(&mut v, "stop_gradient [6, 35]", &[6, 35], |dt| widened(dt, 210), || Box::new(|g, x| g.stop_gradient(x)));

    // Permute, rank 1 to 5.
    let perms: [(&[usize], &[usize]); 6] = [
        (&[1011], &[0]),
        (&[37, 29], &[1, 0]),
        (&[3, 5, 7], &[2, 0, 1]),
        (&[2, 3, 5, 7], &[2, 0, 3, 1]),
        (&[2, 3, 4, 5, 3], &[4, 1, 3, 0, 2]),
        (&[2, 3, 4, 5, 3], &[0, 1, 2, 4, 3]),
    ];
    for (shape, perm) in perms {
        let p = perm.to_vec();
        // Only the identity permutation leaves a contiguous inner run (the whole tensor).
        let run = if perm.iter().enumerate().all(|(i, &q)| i == q) { shape.iter().product() } else { 1 };
        per_dtype(
            &mut v,
            &format!("permute {perm:?}"),
            shape,
            move |dt| widened(dt, run),
            move || {
                let p = p.clone();
                Box::new(move |g, x| g.permute(x, &p))
            },
        );
    }
    // A permute that keeps a contiguous inner axis (the attention head split): 40 elements per run.
    per_dtype(
        &mut v,
        "permute [0, 2, 1, 3]",
        &[2, 9, 3, 40],
        |dt| widened(dt, 40),
        || Box::new(|g, x| g.permute(x, &[0, 2, 1, 3])),
    );

    // BroadcastTo.
    let bcasts: [(&[usize], &[usize], usize); 4] = [
        (&[37, 1], &[5, 37, 29], 1),
        (&[41], &[3, 7, 41], 41),
        (&[1], &[1000], 1),
        (&[3, 1, 5, 1], &[2, 3, 4, 5, 6], 1),
    ];
    for (shape, to, run) in bcasts {
        let t = to.to_vec();
        per_dtype(
            &mut v,
            &format!("broadcast_to {to:?}"),
            shape,
            move |dt| widened(dt, run),
            move || {
                let t = t.clone();
                Box::new(move |g, x| g.broadcast_to(x, &t))
            },
        );
    }

    // Slice (axis, start, end) of [5, 37, 29] and of a rank-1 tensor.
    let slices: [(&[usize], usize, usize, usize); 5] = [
        (&[5, 37, 29], 1, 3, 20),
        (&[5, 37, 29], 0, 1, 4),
        (&[5, 37, 29], 2, 1, 28),
        (&[1001], 0, 3, 999),
        (&[6, 16], 1, 4, 12),
    ];
    for (shape, axis, start, end) in slices {
        // The merged walk: runs of (end - start) * inner elements, read at start * inner within input rows of
        // shape[axis] * inner (axis 0 has no outer rows); widening needs all three divisible.
        let inner: usize = shape[axis + 1..].iter().product();
        let in_row = if axis > 0 { shape[axis] * inner } else { 0 };
        let run = gcd(gcd((end - start) * inner, start * inner), in_row);
        per_dtype(
            &mut v,
            &format!("slice axis {axis} {start}..{end}"),
            shape,
            move |dt| widened(dt, run),
            move || Box::new(move |g, x| g.slice(x, axis, start, end)),
        );
    }

    // Pad (axis, before, after): zeros outside, the input inside, one kernel.
    let pads: [(&[usize], usize, usize, usize); 6] = [
        (&[5, 37, 29], 1, 2, 3),
        (&[4, 8], 1, 8, 16),
        (&[5, 37, 29], 2, 1, 0),
        (&[5, 37, 29], 0, 0, 2),
        (&[2, 3, 4, 5], 3, 4, 4),
        (&[101], 0, 3, 5),
    ];
    for (shape, axis, before, after) in pads {
        let inner: usize = shape[axis + 1..].iter().product();
        // Merged walk: the pad axis times everything inside it; bounds at before*inner and (before+len)*inner.
        let outer_run = (shape[axis] + before + after) * inner;
        let run = gcd(gcd(outer_run, before * inner), shape[axis] * inner);
        per_dtype(
            &mut v,
            &format!("pad axis {axis} ({before}, {after})"),
            shape,
            move |dt| widened(dt, run),
            move || Box::new(move |g, x| g.pad(x, axis, before, after)),
        );
    }

    // Concat of three inputs along each axis of rank-3 shapes.
    for axis in 0..3 {
        for dt in DTYPES {
            let mut shapes = vec![vec![4, 3, 7], vec![4, 3, 7], vec![4, 3, 7]];
            for (s, d) in shapes.iter_mut().zip([2, 1, 5]) {
                s[axis] = d;
            }
            let ins: Vec<_> = shapes.iter().map(|s| (s.clone(), dt, draw(dt))).collect();
            // Each input's run: its own extent from `axis` inward; also offset by the inputs before it.
            let inner: usize = shapes[0][axis + 1..].iter().product();
            let mut kernels = Vec::new();
            let mut at = 0;
            for s in &shapes {
                let run = s[axis] * inner;
                let out_row = 8 * inner;
                let k = widened(dt, gcd(gcd(run, at * inner), if axis == 0 { run } else { out_row }));
                if !kernels.contains(&k) {
                    kernels.push(k);
                }
                at += s[axis];
            }
            let ks: Vec<&str> = kernels.iter().map(|s| s.as_str()).collect();
            let name = format!("concat axis {axis} {dt} {shapes:?}");
            v.push(Case::new(name, ins, Tol::for_dtype(dt), &ks, move |g, x| g.concat(x, axis)));
        }
    }
    v
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let shape = vec![2, 4096, 8, 40];
    let bytes = shape.iter().product::<usize>() as u64 * 2 * 2;
    let c = Case::new(
        format!("permute f16 {shape:?} -> [0, 2, 1, 3]"),
        vec![(shape, DType::F16, Gen::Normal)],
        Tol::for_dtype(DType::F16),
        &["copy_strided_b8"],
        |g, x| g.permute(x[0], &[0, 2, 1, 3]),
    );
    let mut v = vec![(c, Work::Bytes(bytes))];
    // Zero padding of an f16 activation's channel axis (2-byte copies): [2, 4096, 77] -> [2, 4096, 80].
    let c = Case::new(
        "pad f16 [2, 4096, 77] axis 2 (0, 3)",
        vec![(vec![2, 4096, 77], DType::F16, Gen::Normal)],
        Tol::for_dtype(DType::F16),
        &["copy_strided_b2"],
        |g, x| g.pad(x[0], 2, 0, 3),
    );
    v.push((c, Work::Bytes((2 * 4096 * (77 + 80) * 2) as u64)));
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks of every movement op, and of a parameter.
fn grad_cases() -> Vec<Case> {
    vec![
        Case::grad("reshape", &[(&[2, 6], Gen::Normal)], |g, x| g.reshape(x[0], &[3, 4])),
        Case::grad("permute", &[(&[2, 3, 4], Gen::Normal)], |g, x| g.permute(x[0], &[2, 0, 1])),
        Case::grad("broadcast_to", &[(&[3, 1], Gen::Normal)], |g, x| g.broadcast_to(x[0], &[2, 3, 4])),
        Case::grad("concat", &[(&[2, 1, 3], Gen::Normal), (&[2, 2, 3], Gen::Normal), (&[2, 3, 3], Gen::Normal)], |g, x| {
            g.concat(x, 1)
        }),
        Case::grad("slice", &[(&[3, 7], Gen::Normal)], |g, x| g.slice(x[0], 1, 2, 5)),
        Case::grad("pad", &[(&[3, 2], Gen::Normal)], |g, x| g.pad(x[0], 0, 1, 2)),
        // The detached operand carries no gradient: x * stop_gradient(y) differentiated w.r.t. x only.
        Case::grad("stop_gradient (the detached side is a constant)", &[(&[2, 3], Gen::Normal)], |g, x| {
            let y = g.fill(1.5, &[2, 3], DType::F32);
            let y = g.stop_gradient(y)?;
            g.mul(x[0], y)
        }),
        Case::grad("param (as an operand)", &[(&[2, 3], Gen::Normal)], |g, x| {
            let w = g.param("w", &[3], DType::F32)?;
            g.mul(x[0], w)
        }),
    ]
}
