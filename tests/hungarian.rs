//! Linear-sum assignment parity with `scipy.optimize.linear_sum_assignment`: fixtures in tests/fixtures/lsap,
//! written by tools/make_lsap_fixtures.py (numpy and scipy versions recorded in lsap.json). Plus an exhaustive check
//! on every small shape, and the error cases.

use instagen::detection::hungarian::{Assignment, batched, linear_sum_assignment, linear_sum_assignment_f32};
use instagen::util::Rng;
use serde_json::Value;
use std::path::PathBuf;

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lsap/lsap.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        _ => v.as_f64().unwrap(),
    }
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// `min(rows, cols)` pairs, rows strictly ascending, columns distinct, all in range.
fn check_valid(a: &Assignment, rows: usize, cols: usize, what: &str) {
    let k = rows.min(cols);
    assert_eq!(a.row_ind.len(), k, "{what}: row_ind length");
    assert_eq!(a.col_ind.len(), k, "{what}: col_ind length");
    assert!(a.row_ind.windows(2).all(|w| w[0] < w[1]), "{what}: rows not strictly ascending: {:?}", a.row_ind);
    assert!(a.row_ind.iter().all(|&r| r < rows), "{what}: row out of range");
    assert!(a.col_ind.iter().all(|&c| c < cols), "{what}: column out of range");
    let mut seen = vec![false; cols];
    for &c in &a.col_ind {
        assert!(!seen[c], "{what}: column {c} used twice");
        seen[c] = true;
    }
}

fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0)
}

#[test]
fn matches_scipy_on_fixtures() {
    let doc = fixture();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rows = case["rows"].as_u64().unwrap() as usize;
        let cols = case["cols"].as_u64().unwrap() as usize;
        let maximize = case["maximize"].as_bool().unwrap();
        let cost: Vec<f64> = case["cost"].as_array().unwrap().iter().map(num).collect();
        assert_eq!(cost.len(), rows * cols, "{name}");
        let got = linear_sum_assignment(&cost, rows, cols, maximize);
        match case["error"].as_str() {
            Some(kind) => {
                let err = got.err().unwrap_or_else(|| panic!("{name}: scipy raised ({kind}), we did not")).to_string();
                match kind {
                    "infeasible" => assert!(err.contains("infeasible"), "{name}: {err}"),
                    _ => assert!(err.contains("invalid entry") && err.contains("row"), "{name}: {err}"),
                }
            }
            None => {
                let a = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                check_valid(&a, rows, cols, name);
                let ours = a.total_cost(&cost, cols);
                let theirs = case["total"].as_f64().unwrap();
                assert!(close(ours, theirs), "{name}: ours {ours} vs scipy {theirs}");
                worst = worst.max((ours - theirs).abs() / theirs.abs().max(1.0));
                // scipy's own pairs are valid too and give its total (a check on the fixture reading).
                let sr = indices(&case["row_ind"]);
                let sc = indices(&case["col_ind"]);
                let s = Assignment { row_ind: sr, col_ind: sc };
                assert!(close(s.total_cost(&cost, cols), theirs), "{name}: fixture total");
            }
        }
    }
    eprintln!("largest relative difference from scipy: {worst:e}");
}

/// Smallest total over all injective maps of the shorter side into the longer one (by recursion).
fn brute_force(cost: &[f64], rows: usize, cols: usize) -> f64 {
    let (n, m) = if rows <= cols { (rows, cols) } else { (cols, rows) };
    let at = |i: usize, j: usize| if rows <= cols { cost[i * cols + j] } else { cost[j * cols + i] };
    fn go(i: usize, n: usize, m: usize, used: &mut [bool], at: &dyn Fn(usize, usize) -> f64) -> f64 {
        if i == n {
            return 0.0;
        }
        let mut best = f64::INFINITY;
        for j in 0..m {
            if !used[j] {
                used[j] = true;
                best = best.min(at(i, j) + go(i + 1, n, m, used, at));
                used[j] = false;
            }
        }
        best
    }
    go(0, n, m, &mut vec![false; m], &at)
}

#[test]
fn equals_brute_force_on_small_matrices() {
    let mut rng = Rng::new(7);
    let mut checked = 0;
    for rows in 1..=6 {
        for cols in 1..=6 {
            for seed in 0..40 {
                // Alternate continuous costs, small integers (ties), negatives and forbidden (+inf) pairs.
                let cost: Vec<f64> = (0..rows * cols)
                    .map(|_| match seed % 4 {
                        0 => rng.uniform() as f64,
                        1 => rng.below(3) as f64,
                        2 => (rng.normal() * 100.0) as f64,
                        _ => {
                            if rng.below(3) == 0 {
                                f64::INFINITY
                            } else {
                                rng.below(10) as f64
                            }
                        }
                    })
                    .collect();
                let best = brute_force(&cost, rows, cols);
                let what = format!("{rows}x{cols} seed {seed}");
                match linear_sum_assignment(&cost, rows, cols, false) {
                    Ok(a) => {
                        check_valid(&a, rows, cols, &what);
                        let ours = a.total_cost(&cost, cols);
                        assert!(close(ours, best), "{what}: ours {ours} vs exhaustive {best}; {cost:?}");
                    }
                    Err(e) => {
                        assert!(best.is_infinite(), "{what}: error {e} but exhaustive optimum is {best}");
                        assert!(e.to_string().contains("infeasible"), "{what}: {e}");
                    }
                }
                // Maximizing is minimizing the negation (no +inf here: maximize rejects it).
                if seed % 4 != 3 {
                    let neg: Vec<f64> = cost.iter().map(|x| -x).collect();
                    let a = linear_sum_assignment(&cost, rows, cols, true).unwrap();
                    check_valid(&a, rows, cols, &what);
                    let ours = a.total_cost(&cost, cols);
                    let best_max = -brute_force(&neg, rows, cols);
                    assert!(close(ours, best_max), "{what} maximize: ours {ours} vs exhaustive {best_max}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36 * 40);
}

#[test]
fn degenerate_shapes() {
    for (r, c) in [(0, 0), (0, 5), (5, 0)] {
        let a = linear_sum_assignment(&[], r, c, false).unwrap();
        assert!(a.is_empty(), "{r}x{c}");
    }
    let row = [3.0, 1.0, 2.0];
    let a = linear_sum_assignment(&row, 1, 3, false).unwrap();
    assert_eq!((a.row_ind, a.col_ind), (vec![0], vec![1]));
    let a = linear_sum_assignment(&row, 3, 1, false).unwrap();
    assert_eq!((a.row_ind, a.col_ind), (vec![1], vec![0]));
    let a = linear_sum_assignment(&row, 3, 1, true).unwrap();
    assert_eq!((a.row_ind, a.col_ind), (vec![0], vec![0]));
}

#[test]
fn errors_name_the_problem() {
    let e = linear_sum_assignment(&[1.0, 2.0, 3.0], 2, 2, false).unwrap_err().to_string();
    assert!(e.contains("3 entries") && e.contains("2x2"), "{e}");
    let e = linear_sum_assignment(&[1.0, 2.0, f64::NAN, 4.0], 2, 2, false).unwrap_err().to_string();
    assert!(e.contains("NaN at row 1, column 0"), "{e}");
    let e = linear_sum_assignment(&[1.0, f64::NEG_INFINITY, 3.0, 4.0], 2, 2, false).unwrap_err().to_string();
    assert!(e.contains("-inf at row 0, column 1"), "{e}");
    let e = linear_sum_assignment(&[1.0, f64::INFINITY, 3.0, 4.0], 2, 2, true).unwrap_err().to_string();
    assert!(e.contains("inf at row 0, column 1"), "{e}");
    let inf = f64::INFINITY;
    let e = linear_sum_assignment(&[1.0, inf, 2.0, inf], 2, 2, false).unwrap_err().to_string();
    assert!(e.contains("infeasible"), "{e}");
    // Tall infeasible: two columns, but only one row can take either.
    let e = linear_sum_assignment(&[1.0, 2.0, inf, inf, inf, inf], 3, 2, false).unwrap_err().to_string();
    assert!(e.contains("infeasible"), "{e}");
}

#[test]
fn batched_matches_one_by_one() {
    let mut rng = Rng::new(3);
    let mut costs = Vec::new();
    for b in 0..24 {
        let (r, c) = (1 + rng.below(40), 1 + rng.below(12));
        let (r, c) = if b % 2 == 0 { (r, c) } else { (c, r) };
        costs.push((rng.uniform_vec(r * c, 0.0, 1.0), r, c));
    }
    costs.push((Vec::new(), 0, 7));
    let all = batched(&costs).unwrap();
    assert_eq!(all.len(), costs.len());
    for ((c, r, k), a) in costs.iter().zip(&all) {
        assert_eq!(a, &linear_sum_assignment_f32(c, *r, *k, false).unwrap());
    }
    costs[5].0[0] = f32::NAN;
    let e = batched(&costs).unwrap_err().to_string();
    assert!(e.contains("matrix 5") && e.contains("NaN"), "{e}");
}
