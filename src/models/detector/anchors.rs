//! Anchors of the region proposal network, as torchvision's `AnchorGenerator` computes them (on the host: they
//! depend only on the padded input size and the feature map sizes).
//!
//! Per level, the cell anchors are `round([-w, -h, w, h] / 2)` (round half to even, f32) for every (ratio,
//! size) pair, ratio-major, with `h = sqrt(ratio) * size` and `w = size / sqrt(ratio)` (ratio = height /
//! width). They are shifted to every cell of the level's grid, row-major, all cell anchors of a cell together,
//! by the level's stride `padded_size / grid_size` in integer division (torchvision's rule: a 96-pixel side
//! with a 2-cell top level gets stride 48, not 64). The levels are concatenated finest first, which is the order
//! of the RPN head's outputs ([`super::rpn::RpnHead`]).

use crate::error::{Error, Result};

/// The anchors of one padded input size: the same for every image of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Anchors {
    /// xyxy anchors, level by level (finest first), then row, column, cell anchor.
    pub boxes: Vec<[f32; 4]>,
    /// How many anchors each level has (`h * w * anchors_per_location`).
    pub per_level: Vec<usize>,
}

impl Anchors {
    pub fn len(&self) -> usize {
        self.boxes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
    /// The level of every anchor.
    pub fn levels(&self) -> Vec<usize> {
        self.per_level.iter().enumerate().flat_map(|(l, &n)| std::iter::repeat_n(l, n)).collect()
    }
}

/// The cell anchors of one level, centred on 0: one per (ratio, size) pair, ratio-major.
pub fn cell_anchors(sizes: &[f32], ratios: &[f32]) -> Vec<[f32; 4]> {
    let mut out = Vec::with_capacity(sizes.len() * ratios.len());
    for &r in ratios {
        let h_ratio = r.sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in sizes {
            let (w, h) = (w_ratio * s, h_ratio * s);
            out.push([-w, -h, w, h].map(|v| (v / 2.0).round_ties_even()));
        }
    }
    out
}

/// Anchors for a padded input of `padded` (h, w) pixels and feature maps of `grids` (h, w) cells (finest
/// first), with `sizes[l]` the anchor sizes of level l and `ratios` the aspect ratios of every level.
pub fn anchors(padded: (usize, usize), grids: &[(usize, usize)], sizes: &[Vec<f32>], ratios: &[f32]) -> Result<Anchors> {
    if grids.len() != sizes.len() {
        return Err(Error::Other(format!(
            "anchors: {} feature maps but anchor sizes for {} levels ({sizes:?})",
            grids.len(),
            sizes.len()
        )));
    }
    let mut boxes = Vec::new();
    let mut per_level = Vec::with_capacity(grids.len());
    for (&(gh, gw), level_sizes) in grids.iter().zip(sizes) {
        if gh == 0 || gw == 0 || gh > padded.0 || gw > padded.1 {
            return Err(Error::Other(format!("anchors: a {gh}x{gw} feature map of a {}x{} input", padded.0, padded.1)));
        }
        let (sh, sw) = ((padded.0 / gh) as f32, (padded.1 / gw) as f32);
        let cell = cell_anchors(level_sizes, ratios);
        let before = boxes.len();
        for y in 0..gh {
            let dy = y as f32 * sh;
            for x in 0..gw {
                let dx = x as f32 * sw;
                boxes.extend(cell.iter().map(|c| [dx + c[0], dy + c[1], dx + c[2], dy + c[3]]));
            }
        }
        per_level.push(boxes.len() - before);
    }
    Ok(Anchors { boxes, per_level })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_cell_anchors() {
        // torchvision AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
        assert_eq!(
            cell_anchors(&[32.0], &[0.5, 1.0, 2.0]),
            vec![[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
        );
        // Halves round to even: size 1 at ratio 1 gives +-0.5 -> 0.
        assert_eq!(cell_anchors(&[1.0, 3.0], &[1.0]), vec![[0.0, 0.0, 0.0, 0.0], [-2.0, -2.0, 2.0, 2.0]]);
    }

    #[test]
    fn grid_order_and_integer_strides() {
        let a = anchors((96, 128), &[(2, 2)], &[vec![32.0]], &[1.0]).unwrap();
        // Strides 96 / 2 = 48 and 128 / 2 = 64; row-major cells.
        assert_eq!(a.per_level, vec![4]);
        assert_eq!(a.boxes[1], [64.0 - 16.0, -16.0, 64.0 + 16.0, 16.0]);
        assert_eq!(a.boxes[2], [-16.0, 48.0 - 16.0, 16.0, 48.0 + 16.0]);
        assert!(anchors((96, 128), &[(2, 2)], &[], &[1.0]).is_err());
    }
}
