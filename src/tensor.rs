//! Element types and host tensors (a shape, a dtype and little-endian bytes).

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Storage element type. Floating types compute in f32; integer types are for indices, labels and masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I64,
    U8,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8];

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::U8 => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }
    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::I32 => safetensors::Dtype::I32,
            DType::I64 => safetensors::Dtype::I64,
            DType::U8 => safetensors::Dtype::U8,
        }
    }
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        Some(match d {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::I32 => DType::I32,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::U8 => DType::U8,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides (in elements) of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Decode `n` elements of `dtype` from `bytes` into f32 (integers convert by value).
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            // Byte buffers need not be 4-byte aligned: read each value unaligned.
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::I32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32;
            }
        }
        DType::I64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = i64::from_le_bytes(b) as f32;
            }
        }
        DType::U8 => {
            for (o, &c) in out.iter_mut().zip(bytes.iter()) {
                *o = c as f32;
            }
        }
    }
}

/// Encode f32 values as `dtype` (round to nearest even for f16/bf16; saturating truncation for integers).
pub fn encode_f32(dtype: DType, vals: &[f32], bytes: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (v, c) in vals.iter().zip(bytes.chunks_exact_mut(4)) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (v, c) in vals.iter().zip(bytes.chunks_exact_mut(2)) {
                c.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (v, c) in vals.iter().zip(bytes.chunks_exact_mut(2)) {
                c.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        DType::I32 => {
            for (v, c) in vals.iter().zip(bytes.chunks_exact_mut(4)) {
                c.copy_from_slice(&(*v as i32).to_le_bytes());
            }
        }
        DType::I64 => {
            for (v, c) in vals.iter().zip(bytes.chunks_exact_mut(8)) {
                c.copy_from_slice(&(*v as i64).to_le_bytes());
            }
        }
        DType::U8 => {
            for (v, c) in vals.iter().zip(bytes.iter_mut()) {
                *c = *v as u8;
            }
        }
    }
}

/// A tensor in host memory: row-major, contiguous, little-endian.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        HostTensor { shape: shape.to_vec(), dtype, data: vec![0u8; numel(shape) * dtype.size()] }
    }

    /// Build from f32 values, stored as `dtype`.
    pub fn from_f32(shape: &[usize], dtype: DType, vals: &[f32]) -> Result<Self> {
        if vals.len() != numel(shape) {
            return Err(Error::Mismatch {
                what: "HostTensor::from_f32".into(),
                msg: format!("{} values for shape {:?} ({} elements)", vals.len(), shape, numel(shape)),
            });
        }
        let mut t = HostTensor::zeros(shape, dtype);
        encode_f32(dtype, vals, &mut t.data);
        Ok(t)
    }

    /// Build from raw bytes, checking the length.
    pub fn from_bytes(shape: &[usize], dtype: DType, data: Vec<u8>) -> Result<Self> {
        let want = numel(shape) * dtype.size();
        if data.len() != want {
            return Err(Error::Mismatch {
                what: "HostTensor::from_bytes".into(),
                msg: format!("{} bytes for {dtype} shape {shape:?} (want {want})", data.len()),
            });
        }
        Ok(HostTensor { shape: shape.to_vec(), dtype, data })
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// The values converted to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.numel()];
        decode_f32(self.dtype, &self.data, &mut v);
        v
    }

    /// Convert to another dtype (through f32 for floats; integers convert by value).
    pub fn cast(&self, dtype: DType) -> HostTensor {
        if dtype == self.dtype {
            return self.clone();
        }
        let mut t = HostTensor::zeros(&self.shape, dtype);
        match (self.dtype, dtype) {
            (DType::I64, DType::I32) | (DType::I32, DType::I64) | (DType::I64, DType::U8) | (DType::I32, DType::U8) => {
                let vals = self.to_i64();
                for (i, v) in vals.iter().enumerate() {
                    let sz = dtype.size();
                    let b = v.to_le_bytes();
                    t.data[i * sz..(i + 1) * sz].copy_from_slice(&b[..sz]);
                }
            }
            _ => encode_f32(dtype, &self.to_f32(), &mut t.data),
        }
        t
    }

    /// Integer values (floats truncate).
    pub fn to_i64(&self) -> Vec<i64> {
        match self.dtype {
            DType::I64 => self.data.chunks_exact(8).map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                i64::from_le_bytes(b)
            }).collect(),
            DType::I32 => self.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            DType::U8 => self.data.iter().map(|&b| b as i64).collect(),
            _ => self.to_f32().iter().map(|&v| v as i64).collect(),
        }
    }

    pub fn scalar_f32(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::Mismatch { what: "scalar".into(), msg: format!("tensor has shape {:?}", self.shape) });
        }
        Ok(self.to_f32()[0])
    }
}
