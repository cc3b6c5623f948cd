//! Exact rectangular linear-sum assignment (the "Hungarian matching" of DETR-style heads), on the CPU.
//!
//! Same contract as `scipy.optimize.linear_sum_assignment`: for a `rows x cols` cost matrix (row-major), pick
//! `min(rows, cols)` pairs with distinct rows and distinct columns whose total cost is the smallest (or largest with
//! `maximize`). Row indices come back sorted ascending. `+inf` entries are forbidden pairs and are allowed as long as a
//! full assignment of finite cost exists; NaN and `-inf` entries are rejected (after negation when maximizing, as
//! scipy does, so `maximize` rejects `+inf` and accepts `-inf`).
//!
//! The method is the shortest augmenting path one of Jonker and Volgenant, in the form of D. F. Crouse, "On
//! implementing 2D rectangular assignment algorithms", IEEE TAES 52(4), 2016 (the one scipy uses): with at most as many
//! rows as columns (the matrix is transposed otherwise), each row in turn is joined to the matching by a Dijkstra
//! search over reduced costs `c[i][j] - u[i] - v[j]` from that row to a free column, then the duals `u`, `v` are
//! updated so that reduced costs stay non-negative and the path is flipped. O(n^2 m) for `n <= m`.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// The pairs of an optimal assignment: `(row_ind[k], col_ind[k])`, with `row_ind` strictly ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    pub row_ind: Vec<usize>,
    pub col_ind: Vec<usize>,
}

impl Assignment {
    /// Number of pairs (`min(rows, cols)`).
    pub fn len(&self) -> usize {
        self.row_ind.len()
    }
    pub fn is_empty(&self) -> bool {
        self.row_ind.is_empty()
    }
    /// Sum of `cost[row][col]` over the pairs, for a row-major matrix with `cols` columns.
    /// Pairs outside the matrix count as NaN (an assignment only ever holds pairs inside it).
    pub fn total_cost(&self, cost: &[f64], cols: usize) -> f64 {
        self.row_ind
            .iter()
            .zip(&self.col_ind)
            .map(|(&r, &c)| if c < cols { cost.get(r * cols + c).copied().unwrap_or(f64::NAN) } else { f64::NAN })
            .sum()
    }
}

const NONE: usize = usize::MAX;

/// Solve the assignment problem for a row-major `rows x cols` matrix (scipy's `linear_sum_assignment`).
///
/// Errors: `cost.len() != rows * cols`; a NaN or `-inf` entry (`+inf` with `maximize`), named by row and column;
/// no full assignment of finite cost ("cost matrix is infeasible").
pub fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize, maximize: bool) -> Result<Assignment> {
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::Other(format!("linear_sum_assignment: shape {rows}x{cols} overflows")))?;
    if cost.len() != n {
        return Err(Error::Other(format!(
            "linear_sum_assignment: cost has {} entries, shape {rows}x{cols} needs {n}",
            cost.len()
        )));
    }
    if n == 0 {
        return Ok(Assignment::default());
    }
    // Work on a matrix with no more rows than columns, negated when maximizing, checked as scipy checks it.
    let transpose = rows > cols;
    let (nr, nc) = if transpose { (cols, rows) } else { (rows, cols) };
    let sign = if maximize { -1.0 } else { 1.0 };
    let mut c = vec![0.0f64; n];
    for r in 0..rows {
        for k in 0..cols {
            let x = cost[r * cols + k];
            let y = sign * x;
            if y.is_nan() || y == f64::NEG_INFINITY {
                return Err(Error::Other(format!(
                    "linear_sum_assignment: invalid entry {x} at row {r}, column {k} of the {rows}x{cols} cost matrix \
                     (NaN and -inf are not allowed{})",
                    if maximize { "; with maximize, +inf is not allowed either" } else { "" }
                )));
            }
            if transpose {
                c[k * nc + r] = y;
            } else {
                c[r * nc + k] = y;
            }
        }
    }
    let col4row = solve(&c, nr, nc).map_err(|()| {
        Error::Other(format!(
            "linear_sum_assignment: cost matrix is infeasible ({rows}x{cols}: no full assignment of finite cost)"
        ))
    })?;
    if transpose {
        // col4row maps each original column to its original row; sort the pairs by row.
        let mut pairs: Vec<(usize, usize)> = col4row.iter().enumerate().map(|(k, &r)| (r, k)).collect();
        pairs.sort_unstable();
        Ok(Assignment { row_ind: pairs.iter().map(|p| p.0).collect(), col_ind: pairs.iter().map(|p| p.1).collect() })
    } else {
        Ok(Assignment { row_ind: (0..nr).collect(), col_ind: col4row })
    }
}

/// [`linear_sum_assignment`] for an f32 matrix (computed in f64).
pub fn linear_sum_assignment_f32(cost: &[f32], rows: usize, cols: usize, maximize: bool) -> Result<Assignment> {
    let c: Vec<f64> = cost.iter().map(|&x| x as f64).collect();
    linear_sum_assignment(&c, rows, cols, maximize)
}

/// Minimum-cost assignments of many matrices (one per image: `(cost, rows, cols)`, row-major f32), in parallel.
/// The first error (in input order) is returned, prefixed with the index of its matrix.
pub fn batched(costs: &[(Vec<f32>, usize, usize)]) -> Result<Vec<Assignment>> {
    costs
        .par_iter()
        .enumerate()
        .map(|(b, (c, r, k))| {
            linear_sum_assignment_f32(c, *r, *k, false).map_err(|e| Error::Other(format!("batched: matrix {b}: {e}")))
        })
        .collect()
}

/// Shortest augmenting path for a row-major `nr x nc` matrix with `1 <= nr <= nc`, entries finite or `+inf`.
/// Returns the column of each row, or `Err(())` when some row cannot be joined at finite cost.
fn solve(c: &[f64], nr: usize, nc: usize) -> std::result::Result<Vec<usize>, ()> {
    let mut u = vec![0.0f64; nr]; // row duals
    let mut v = vec![0.0f64; nc]; // column duals
    let mut col4row = vec![NONE; nr];
    let mut row4col = vec![NONE; nc];
    // Per search: tentative shortest distance to each column and the row it was reached from; the columns not yet
    // fixed (kept compact by swap-removal, so each step scans only those); the rows and columns reached.
    let mut dist = vec![f64::INFINITY; nc];
    let mut pred = vec![NONE; nc];
    let mut remaining: Vec<usize> = Vec::with_capacity(nc);
    let mut rows_seen: Vec<usize> = Vec::with_capacity(nr);
    let mut cols_seen: Vec<usize> = Vec::with_capacity(nc);

    for start in 0..nr {
        dist.fill(f64::INFINITY);
        remaining.clear();
        remaining.extend(0..nc);
        rows_seen.clear();
        cols_seen.clear();

        // Dijkstra from `start` over the alternating tree until a free column is the nearest one.
        let mut i = start;
        let mut d = 0.0f64; // distance of the column last fixed (the current search radius)
        let sink = loop {
            rows_seen.push(i);
            let ci = &c[i * nc..(i + 1) * nc];
            let base = d - u[i];
            let mut best = f64::INFINITY;
            let mut best_k = NONE;
            let mut best_free = false;
            for (k, &j) in remaining.iter().enumerate() {
                let r = base + ci[j] - v[j];
                let mut dj = dist[j];
                if r < dj {
                    dj = r;
                    dist[j] = r;
                    pred[j] = i;
                }
                // Nearest column; among equals, prefer a free one (ends the search sooner).
                if dj < best || (dj == best && !best_free && row4col[j] == NONE) {
                    best = dj;
                    best_k = k;
                    best_free = row4col[j] == NONE;
                }
            }
            if best_k == NONE || best == f64::INFINITY {
                return Err(());
            }
            d = best;
            let j = remaining.swap_remove(best_k);
            cols_seen.push(j);
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };

        // Dual update: keeps every reduced cost >= 0 and those on the matching (and the new path) at 0.
        u[start] += d;
        for &r in &rows_seen[1..] {
            u[r] += d - dist[col4row[r]];
        }
        for &j in &cols_seen {
            v[j] -= d - dist[j];
        }

        // Flip the path from the sink back to `start`.
        let mut j = sink;
        loop {
            let r = pred[j];
            row4col[j] = r;
            let prev = std::mem::replace(&mut col4row[r], j);
            if r == start {
                break;
            }
            j = prev;
        }
    }
    Ok(col4row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_square() {
        let c = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let a = linear_sum_assignment(&c, 3, 3, false).unwrap();
        assert_eq!(a.row_ind, vec![0, 1, 2]);
        assert_eq!(a.col_ind, vec![1, 0, 2]);
        assert_eq!(a.total_cost(&c, 3), 5.0);
    }

    #[test]
    fn tall_is_sorted_by_row() {
        // 3x2: the best is rows 2 and 0.
        let c = [1.0, 5.0, 9.0, 9.0, 5.0, 1.0];
        let a = linear_sum_assignment(&c, 3, 2, false).unwrap();
        assert_eq!(a.row_ind, vec![0, 2]);
        assert_eq!(a.col_ind, vec![0, 1]);
    }
}
