//! Turning a batch of samples into tensors: stacking same-shape tensors, and padding variable counts (boxes per
//! image) to a fixed width with a mask.

use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};

/// `B` tensors of one shape and dtype stacked into one `[B, ...]` tensor.
pub fn stack(items: &[HostTensor]) -> Result<HostTensor> {
    let first = items.first().ok_or_else(|| Error::Mismatch { what: "stack".into(), msg: "no tensors".into() })?;
    let mut data = Vec::with_capacity(first.data.len() * items.len());
    for (i, t) in items.iter().enumerate() {
        if t.shape != first.shape || t.dtype != first.dtype {
            return Err(Error::Mismatch {
                what: format!("stack: sample {i} of the batch"),
                msg: format!("is {} {:?}, sample 0 is {} {:?}", t.dtype, t.shape, first.dtype, first.shape),
            });
        }
        data.extend_from_slice(&t.data);
    }
    let mut shape = vec![items.len()];
    shape.extend_from_slice(&first.shape);
    HostTensor::from_bytes(&shape, first.dtype, data)
}

/// Rows of `K` values per sample (for example boxes `[x0, y0, x1, y1]`) padded to `[B, width, K]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Padded {
    /// `[B, width, K]` f32; padding rows are zero.
    pub values: HostTensor,
    /// `[B, width]` f32: 1 for a real row, 0 for padding.
    pub mask: HostTensor,
    /// The real number of rows of each sample.
    pub counts: Vec<usize>,
}

/// Pads each sample's rows to a common width: `width` when given (graphs have static shapes, so a run usually
/// fixes it; a sample with more rows is an error naming it), else the largest count in the batch (at least 1,
/// so no dimension is zero).
pub fn pad_rows<const K: usize>(rows: &[Vec<[f32; K]>], width: Option<usize>) -> Result<Padded> {
    let most = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let w = match width {
        Some(w) => {
            if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() > w) {
                return Err(Error::Mismatch {
                    what: format!("batch sample {i}"),
                    msg: format!("has {} rows, more than the padded width {w}", r.len()),
                });
            }
            w
        }
        None => most.max(1),
    };
    let b = rows.len();
    let mut values = vec![0f32; b * w * K];
    let mut mask = vec![0f32; b * w];
    for (i, r) in rows.iter().enumerate() {
        for (j, row) in r.iter().enumerate() {
            values[(i * w + j) * K..(i * w + j + 1) * K].copy_from_slice(row);
            mask[i * w + j] = 1.0;
        }
    }
    Ok(Padded {
        values: HostTensor::from_f32(&[b, w, K], DType::F32, &values)?,
        mask: HostTensor::from_f32(&[b, w], DType::F32, &mask)?,
        counts: rows.iter().map(|r| r.len()).collect(),
    })
}
