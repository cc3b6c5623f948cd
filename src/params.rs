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
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_safetensors_bytes(&bytes, path)
    }

    pub fn from_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let werr = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| werr(format!("not a valid safetensors file ({} bytes): {e}", bytes.len())))?;
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
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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
