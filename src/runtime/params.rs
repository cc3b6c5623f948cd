//! Device parameters: the parameter region and the optimiser-state region of one backend, uploaded once and
//! shared by every executor built on them (graphs for different input sizes, a forward-only graph beside a
//! training graph). An update through one executor is what the others compute with.
//!
//! Sharing is by reference counting (`Rc<RefCell<..>>`, one thread): a [`DeviceParams`] is a cheap handle and
//! cloning it shares the regions. An executor borrows the two regions for the length of one run or optimiser
//! step (see `Executor::attach`).

use std::cell::{Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::backend::{Backend, Loc, Space};
use crate::error::{Error, Result};
use crate::graph::plan::ALIGN;
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};

/// Where one parameter lives in the parameter region.
#[derive(Clone, Debug)]
pub struct ParamSlot {
    pub loc: Loc,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl ParamSlot {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The regions behind a [`DeviceParams`] handle.
pub(crate) struct Regions<M> {
    /// `None` while an executor has borrowed the region for a run.
    pub params: Option<M>,
    pub state: Option<M>,
    pub slots: BTreeMap<String, ParamSlot>,
}

/// Parameters (and optimiser state) on a backend, shared by the executors built on them.
pub struct DeviceParams<B: Backend> {
    backend: B,
    inner: Rc<RefCell<Regions<B::Mem>>>,
}

impl<B: Backend + Clone> Clone for DeviceParams<B> {
    /// Another handle on the same regions (nothing is copied).
    fn clone(&self) -> Self {
        DeviceParams { backend: self.backend.clone(), inner: Rc::clone(&self.inner) }
    }
}

/// Offsets of consecutive tensors of the given byte sizes, each [`ALIGN`]-aligned, and the total.
pub(crate) fn place(sizes: &[usize]) -> (Vec<usize>, usize) {
    let mut offs = Vec::with_capacity(sizes.len());
    let mut end = 0;
    for s in sizes {
        offs.push(end);
        end += s.div_ceil(ALIGN).max(1) * ALIGN;
    }
    (offs, end)
}

impl<B: Backend> DeviceParams<B> {
    /// Upload every tensor of `store`.
    pub fn upload(backend: B, store: &ParamStore) -> Result<Self> {
        let tensors: Vec<(&str, &HostTensor)> = store.iter().collect();
        Self::upload_tensors(backend, &tensors)
    }

    /// Upload the named tensors of `store`, each checked against the wanted shape and dtype.
    pub fn upload_checked(backend: B, store: &ParamStore, wanted: &[(String, Vec<usize>, DType)]) -> Result<Self> {
        let mut tensors = Vec::with_capacity(wanted.len());
        for (name, shape, dtype) in wanted {
            tensors.push((name.as_str(), store.require(name, shape, *dtype)?));
        }
        Self::upload_tensors(backend, &tensors)
    }

    fn upload_tensors(backend: B, tensors: &[(&str, &HostTensor)]) -> Result<Self> {
        let (offs, total) = place(&tensors.iter().map(|(_, t)| t.data.len()).collect::<Vec<_>>());
        let available = backend.memory_available()?;
        if total > available {
            let detail = format!("{total} for parameters on {}", backend.name());
            return Err(Error::Memory { what: String::new(), needed: total as u128, available, detail });
        }
        let mut mem = backend.alloc(total)?;
        let mut slots = BTreeMap::new();
        for ((name, t), off) in tensors.iter().zip(offs) {
            backend.write(&mut mem, off, &t.data)?;
            let loc = Loc { space: Space::Params, offset: off, bytes: t.data.len() };
            slots.insert(name.to_string(), ParamSlot { loc, shape: t.shape.clone(), dtype: t.dtype });
        }
        let state = backend.alloc(0)?;
        let inner = Regions { params: Some(mem), state: Some(state), slots };
        Ok(DeviceParams { backend, inner: Rc::new(RefCell::new(inner)) })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether `other` is a handle on the same regions.
    pub fn same(&self, other: &DeviceParams<B>) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn regions(&self) -> Ref<'_, Regions<B::Mem>> {
        self.inner.borrow()
    }
    pub(crate) fn regions_mut(&self) -> RefMut<'_, Regions<B::Mem>> {
        self.inner.borrow_mut()
    }

    /// Every parameter's name and slot, in name order.
    pub fn slots(&self) -> Vec<(String, ParamSlot)> {
        self.regions().slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn slot(&self, name: &str) -> Result<ParamSlot> {
        self.regions().slots.get(name).cloned().ok_or_else(|| Error::Mismatch {
            what: format!("parameter '{name}'"),
            msg: "is not among the device parameters".into(),
        })
    }

    /// Replace the optimiser-state region with a fresh one of `bytes` (zeroed) and return nothing of the old.
    pub(crate) fn alloc_state(&self, bytes: usize) -> Result<()> {
        let mut mem = self.backend.alloc(bytes)?;
        if bytes > 0 {
            self.backend.write(&mut mem, 0, &vec![0u8; bytes])?;
        }
        self.regions_mut().state = Some(mem);
        Ok(())
    }

    /// Read `out.len()` bytes at `loc` (in the parameter or state region).
    pub fn read_loc(&self, loc: Loc, out: &mut [u8]) -> Result<()> {
        let r = self.regions();
        let mem = match loc.space {
            Space::Params => r.params.as_ref(),
            Space::State => r.state.as_ref(),
            Space::Arena => return Err(Error::Plan("DeviceParams holds no activation arena".into())),
        };
        let mem = mem.ok_or_else(|| Error::Plan("device parameters are borrowed by a running executor".into()))?;
        self.backend.read(mem, loc.offset, out)
    }

    /// Write `data` at `loc` (in the parameter or state region).
    pub fn write_loc(&self, loc: Loc, data: &[u8]) -> Result<()> {
        let mut r = self.regions_mut();
        let mem = match loc.space {
            Space::Params => r.params.as_mut(),
            Space::State => r.state.as_mut(),
            Space::Arena => return Err(Error::Plan("DeviceParams holds no activation arena".into())),
        };
        let mem = mem.ok_or_else(|| Error::Plan("device parameters are borrowed by a running executor".into()))?;
        self.backend.write(mem, loc.offset, data)
    }

    /// The current value of a parameter.
    pub fn get(&self, name: &str) -> Result<HostTensor> {
        let s = self.slot(name)?;
        let mut t = HostTensor::zeros(&s.shape, s.dtype);
        self.read_loc(s.loc, &mut t.data)?;
        Ok(t)
    }

    /// Overwrite a parameter (shape and dtype must match). Optimiser master weights are not touched: load
    /// them with the optimiser state.
    pub fn set(&self, name: &str, t: &HostTensor) -> Result<()> {
        let s = self.slot(name)?;
        if t.shape != s.shape || t.dtype != s.dtype {
            return Err(Error::Mismatch {
                what: format!("parameter '{name}'"),
                msg: format!("device holds {} {:?}, got {} {:?}", s.dtype, s.shape, t.dtype, t.shape),
            });
        }
        self.write_loc(s.loc, &t.data)
    }

    /// Every parameter, read back.
    pub fn download(&self) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        for (name, _) in self.slots() {
            out.insert(&name, self.get(&name)?);
        }
        Ok(out)
    }
}
