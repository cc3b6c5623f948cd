//! Strided iteration: a row-major walk over an output shape that reads `K` operands through element strides
//! (0 for broadcast axes, permuted strides for transposes). Adjacent axes that are contiguous for every operand
//! are merged first, so the common cases become a few long runs.

/// A coalesced walk: `dims` (at least one; the last is the inner axis) and per-operand strides for each.
pub(crate) struct Walk<const K: usize> {
    dims: Vec<usize>,
    strides: [Vec<usize>; K],
}

impl<const K: usize> Walk<K> {
    /// A walk over `shape` where operand `k` has element stride `strides[k][i]` along axis `i`.
    pub(crate) fn new(shape: &[usize], strides: [&[usize]; K]) -> Self {
        let mut dims: Vec<usize> = Vec::with_capacity(shape.len());
        let mut st: [Vec<usize>; K] = std::array::from_fn(|_| Vec::with_capacity(shape.len()));
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let merge = match dims.last() {
                Some(_) => (0..K).all(|k| st[k].last() == Some(&(strides[k][i] * d))),
                None => false,
            };
            if merge {
                if let Some(last) = dims.last_mut() {
                    *last *= d;
                }
                for k in 0..K {
                    if let Some(s) = st[k].last_mut() {
                        *s = strides[k][i];
                    }
                }
            } else {
                dims.push(d);
                for k in 0..K {
                    st[k].push(strides[k][i]);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            for s in st.iter_mut() {
                s.push(0);
            }
        }
        Walk { dims, strides: st }
    }

    /// Length of the inner (last) axis.
    pub(crate) fn inner(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    /// Each operand's stride along the inner axis.
    pub(crate) fn inner_strides(&self) -> [usize; K] {
        std::array::from_fn(|k| self.strides[k][self.dims.len() - 1])
    }

    /// Visits the output elements `e0..e1` (row-major order) as runs along the inner axis: `f(pos, offsets, len)`
    /// covers output elements `pos..pos + len`, whose first element reads operand `k` at `offsets[k]` (the next
    /// ones step by [`Walk::inner_strides`]).
    pub(crate) fn runs(&self, e0: usize, e1: usize, mut f: impl FnMut(usize, [usize; K], usize)) {
        if e0 >= e1 {
            return;
        }
        let inner = self.inner();
        let inner_st = self.inner_strides();
        let outer = &self.dims[..self.dims.len() - 1];
        let r0 = e0 / inner;
        let r1 = e1.div_ceil(inner);
        // Multi-index of row r0 over the outer axes, and each operand's offset there.
        let mut idx = vec![0usize; outer.len()];
        let mut rem = r0;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
        }
        let mut offs: [usize; K] = std::array::from_fn(|k| idx.iter().zip(&self.strides[k]).map(|(i, s)| i * s).sum());
        for r in r0..r1 {
            let row = r * inner;
            let s = row.max(e0);
            let e = (row + inner).min(e1);
            let skip = s - row;
            f(s, std::array::from_fn(|k| offs[k] + skip * inner_st[k]), e - s);
            for d in (0..outer.len()).rev() {
                idx[d] += 1;
                for (o, st) in offs.iter_mut().zip(&self.strides) {
                    *o += st[d];
                }
                if idx[d] < outer[d] {
                    break;
                }
                idx[d] = 0;
                for (o, st) in offs.iter_mut().zip(&self.strides) {
                    *o -= st[d] * outer[d];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_merges_contiguous_axes() {
        let w = Walk::<1>::new(&[2, 3, 4], [&[12, 4, 1]]);
        assert_eq!(w.dims, vec![24]);
        let w = Walk::<2>::new(&[2, 3, 4], [&[12, 4, 1], &[0, 4, 1]]);
        assert_eq!(w.dims, vec![2, 12]);
        let w = Walk::<1>::new(&[1, 1], [&[1, 1]]);
        assert_eq!(w.dims, vec![1]);
    }

    #[test]
    fn walk_runs_cover_range_in_order() {
        // A transpose of [3, 5] read through strides (1, 3).
        let w = Walk::<1>::new(&[5, 3], [&[1, 5]]);
        let mut got = Vec::new();
        w.runs(2, 13, |pos, [o], len| {
            for j in 0..len {
                got.push((pos + j, o + j * w.inner_strides()[0]));
            }
        });
        let want: Vec<(usize, usize)> = (2..13).map(|e| (e, (e % 3) * 5 + e / 3)).collect();
        assert_eq!(got, want);
    }
}
