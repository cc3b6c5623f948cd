//! Finds the NVIDIA driver and the GPUs it exposes, without ever panicking on a machine that has
//! no driver: cudarc's dynamic loader panics when libcuda is missing, so its presence is checked
//! first, and the whole probe runs under `catch_unwind` as a second guard.

use std::panic::{self, AssertUnwindSafe};

use cudarc::driver::{result, sys};

/// One CUDA device as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: i32,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
    pub multiprocessors: i32,
}

/// What [`probe`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuProbe {
    /// libcuda could be loaded.
    pub driver_found: bool,
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    pub driver_version: Option<i32>,
    /// Always empty when `driver_found` is false.
    pub devices: Vec<GpuInfo>,
    /// The first driver error met (cuInit, device queries), if any. A missing driver is not an error.
    pub error: Option<String>,
}

impl GpuProbe {
    pub fn has_gpu(&self) -> bool {
        !self.devices.is_empty()
    }

    /// "13.0" for 13000.
    pub fn driver_version_string(&self) -> Option<String> {
        self.driver_version
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
    }
}

/// Probes the driver and enumerates the devices. Never panics.
pub fn probe() -> GpuProbe {
    // SAFETY: only tries to dlopen libcuda by its usual names; loads nothing into cudarc's cache.
    let present = panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return GpuProbe::default();
    }
    match panic::catch_unwind(AssertUnwindSafe(enumerate)) {
        Ok(p) => p,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            GpuProbe {
                driver_found: true,
                error: Some(format!("CUDA driver probe panicked: {msg}")),
                ..GpuProbe::default()
            }
        }
    }
}

fn enumerate() -> GpuProbe {
    let mut p = GpuProbe {
        driver_found: true,
        ..GpuProbe::default()
    };
    let mut version = 0;
    // SAFETY: a valid out-pointer; cuDriverGetVersion may be called before cuInit.
    if unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .is_ok()
    {
        p.driver_version = Some(version);
    }
    if let Err(e) = result::init() {
        p.error = Some(format!("cuInit: {e}"));
        return p;
    }
    let count = match result::device::get_count() {
        Ok(n) => n,
        Err(e) => {
            p.error = Some(format!("cuDeviceGetCount: {e}"));
            return p;
        }
    };
    for ordinal in 0..count {
        match device_info(ordinal) {
            Ok(d) => p.devices.push(d),
            Err(e) => {
                p.error.get_or_insert(format!("device {ordinal}: {e}"));
            }
        }
    }
    p
}

fn device_info(ordinal: i32) -> Result<GpuInfo, result::DriverError> {
    use sys::CUdevice_attribute as A;
    let dev = result::device::get(ordinal)?;
    // SAFETY: `dev` was returned by cuDeviceGet after a successful cuInit.
    let (major, minor, sms, total) = unsafe {
        (
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            result::device::total_mem(dev)?,
        )
    };
    Ok(GpuInfo {
        ordinal,
        name: result::device::get_name(dev)?,
        compute_capability: (major, minor),
        total_memory_bytes: total,
        multiprocessors: sms,
    })
}
