//! Named parameters (weights), loaded from and saved to safetensors by their checkpoint key names.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};

/// Parameters by name, in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamStore {
    tensors: BTreeMap<String, HostTensor>,
}

/// The message for a safetensors file that does not deserialize: the first tensor whose `data_offsets` do not
/// match its dtype and shape, or lie outside the file, is named; otherwise the parser's own message.
pub fn safetensors_error(bytes: &[u8], e: &safetensors::SafeTensorError) -> String {
    let general = format!("not a valid safetensors file ({} bytes; truncated or corrupt?): {e}", bytes.len());
    let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap())) else { return general };
    let Some(header) = usize::try_from(n).ok().and_then(|n| bytes.get(8..n.checked_add(8)?)) else { return general };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header) else { return general };
    let data_len = bytes.len() - 8 - header.len();
    let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
    for (name, v) in &map {
        if name == "__metadata__" {
            continue;
        }
        let elem = match v["dtype"].as_str() {
            Some("F64" | "I64" | "U64") => 8,
            Some("F32" | "I32" | "U32") => 4,
            Some("F16" | "BF16" | "I16" | "U16") => 2,
            Some("I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => 1,
            _ => continue,
        };
        let shape: Option<Vec<usize>> = v["shape"].as_array().and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect());
        let offs: Option<Vec<u64>> = v["data_offsets"].as_array().and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offs)) = (shape, offs) else { continue };
        if offs.len() != 2 {
            continue;
        }
        let need = shape.iter().try_fold(elem as u64, |acc, &d| acc.checked_mul(d as u64));
        let (start, end) = (offs[0], offs[1]);
        let dtype = v["dtype"].as_str().unwrap_or("?");
        match need {
            None => return format!("tensor '{name}': shape {shape:?} overflows"),
            Some(need) if end < start || end - start != need => {
                return format!("tensor '{name}': {dtype} {shape:?} needs {need} bytes but its data_offsets [{start}, {end}] give {}",
                    end as i128 - start as i128);
            }
            Some(_) if end > data_len as u64 => {
                return format!("tensor '{name}': data_offsets [{start}, {end}] run past the end of the data ({data_len} bytes; truncated?)");
            }
            _ => ranges.push((start, end, name)),
        }
    }
    // The tensors must cover the data exactly, without gaps or overlaps.
    ranges.sort();
    let mut at = 0u64;
    for (start, end, name) in &ranges {
        if *start != at {
            return if *start > at {
                format!("bytes [{at}, {start}) of the data belong to no tensor (the next is '{name}'; a header entry removed?)")
            } else {
                format!("tensor '{name}': data_offsets [{start}, {end}] overlap the previous tensor (which ends at {at})")
            };
        }
        at = *end;
    }
    if at != data_len as u64 {
        return format!("bytes [{at}, {data_len}) of the data belong to no tensor (a header entry removed?)");
    }
    general
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, name: &str, t: HostTensor) {
        self.tensors.insert(name.to_string(), t);
    }
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// Total number of parameter elements.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(|t| t.numel()).sum()
    }

    /// Read every tensor of a safetensors file. A truncated or malformed file, or a dtype the engine does not
    /// store, is an error naming the file (and the key).
    pub fn load_safetensors(path: &Path) -> Result<Self> {
        let bytes = crate::util::files::read_input(path, None).map_err(|e| Error::io(path, e))?;
        Self::from_safetensors_bytes(&bytes, path)
    }

    pub fn from_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let werr = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| werr(safetensors_error(bytes, &e)))?;
        let mut store = ParamStore::new();
        for (name, view) in st.tensors() {
            let dtype = DType::from_safetensors(view.dtype())
                .ok_or_else(|| werr(format!("key '{name}': unsupported dtype {:?}", view.dtype())))?;
            let t = HostTensor::from_bytes(view.shape(), dtype, view.data().to_vec())
                .map_err(|e| werr(format!("key '{name}': {e}")))?;
            store.insert(&name, t);
        }
        Ok(store)
    }

    /// Write every tensor to a safetensors file (atomically: a temporary file renamed into place, so an
    /// interrupted save never leaves a truncated file behind).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = (self.tensors.iter())
            .map(|(k, t)| {
                safetensors::tensor::TensorView::new(t.dtype.to_safetensors(), t.shape.clone(), &t.data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| Error::Weights { path: path.to_path_buf(), msg: format!("key '{k}': {e}") })
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::tensor::serialize(views, None)
            .map_err(|e| Error::Weights { path: path.to_path_buf(), msg: e.to_string() })?;
        crate::util::files::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
    }

    /// The tensor under `name` with the expected shape and dtype, or an error naming the key and both shapes.
    pub fn require(&self, name: &str, shape: &[usize], dtype: DType) -> Result<&HostTensor> {
        let t = self.get(name).ok_or_else(|| Error::Mismatch {
            what: format!("parameter '{name}'"),
            msg: format!("missing (expected {dtype} {shape:?})"),
        })?;
        if t.shape != shape || t.dtype != dtype {
            return Err(Error::Mismatch {
                what: format!("parameter '{name}'"),
                msg: format!("expected {dtype} {shape:?}, found {} {:?}", t.dtype, t.shape),
            });
        }
        Ok(t)
    }
}
