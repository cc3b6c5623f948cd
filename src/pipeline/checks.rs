//! Checks on the numbers and sizes a run is given, made before anything big is built or allocated, with
//! messages that name the flag or config field at fault.
//!
//! Sizes are multiplied in checked `u128` arithmetic; the bytes of the largest tensor a model must hold are
//! compared with the memory the backend has ([`crate::backend::Backend::memory_available`]: `MemAvailable` on the
//! host, `cuMemGetInfo` on a GPU). The executor then checks the whole memory plan of each graph the same way.

use crate::error::{Error, Result};
use crate::models::unet::UNetConfig;
use crate::tensor::DType;

/// `--guidance` must lie in `[0, GUIDANCE_MAX]` (InstaGen uses 5; diffusers' default is 7.5).
pub const GUIDANCE_MAX: f32 = 100.0;

fn err(msg: String) -> Error {
    Error::Other(msg)
}

/// `dims` multiplied, with `elem` bytes per element; `None` when even `u128` overflows.
pub fn bytes_of(dims: &[usize], elem: usize) -> Option<u128> {
    dims.iter().try_fold(elem as u128, |acc, &d| acc.checked_mul(d as u128))
}

/// An error unless a `[dims]` tensor of `dtype` fits in `available` bytes. `what` names the tensor and
/// `culprit` the flags or config fields that sized it.
pub fn check_tensor_fits(what: &str, dims: &[usize], dtype: DType, available: usize, culprit: &str) -> Result<()> {
    match bytes_of(dims, dtype.size()) {
        None => Err(err(format!("{culprit}: {what} {dims:?} of {dtype} is too large (its size overflows)"))),
        Some(b) if b > available as u128 => Err(Error::Memory {
            what: format!("{culprit}: "),
            needed: b,
            available,
            detail: format!("{what} {dims:?} of {dtype} alone"),
        }),
        Some(_) => Ok(()),
    }
}

/// The latent side must be a positive multiple of the UNet's total downsampling (2^(levels - 1); 8 for SD
/// v1.x). `source` names where the side came from (`--latent` or `sample_size in unet/config.json`).
pub fn check_latent_side(cfg: &UNetConfig, side: usize, source: &str) -> Result<()> {
    let levels = cfg.block_out_channels.len().max(1);
    let multiple = 1usize.checked_shl(levels as u32 - 1).unwrap_or(usize::MAX);
    if side == 0 || side % multiple != 0 {
        return Err(err(format!(
            "{source} {side}: the latent side must be a positive multiple of {multiple} (the UNet halves it {} times)",
            levels - 1
        )));
    }
    Ok(())
}

/// The UNet's memory floor for `batch` rows of `side`x`side` latents: its first activation `[batch, side, side,
/// block_out_channels[0]]` must fit.
pub fn check_unet_fits(cfg: &UNetConfig, batch: usize, side: usize, dtype: DType, available: usize, culprit: &str) -> Result<()> {
    let c0 = cfg.block_out_channels.first().copied().unwrap_or(1);
    check_tensor_fits("the UNet's first activation", &[batch, side, side, c0], dtype, available, culprit)
}

/// An error ([`Error::Memory`]) unless `graph`'s parameters and planned activations fit in `available` bytes.
pub fn check_graph_fits(graph: &crate::graph::Graph, available: usize) -> Result<()> {
    let plan = crate::graph::Plan::new(graph);
    let params: u128 = graph.params().iter().map(|(id, _)| graph.node(*id).bytes() as u128).sum();
    let needed = params + plan.arena_bytes as u128;
    if needed > available as u128 {
        let detail = format!("{params} for parameters + {} for activations", plan.arena_bytes);
        return Err(Error::Memory { what: String::new(), needed, available, detail });
    }
    Ok(())
}

/// `--guidance`: finite and within `[0, GUIDANCE_MAX]`.
pub fn check_guidance(g: f32) -> Result<()> {
    if !g.is_finite() || !(0.0..=GUIDANCE_MAX).contains(&g) {
        return Err(err(format!("--guidance {g}: must be a finite number in [0, {GUIDANCE_MAX}]")));
    }
    Ok(())
}

/// An error naming `what` (for example `UNet output at step 3/50 (t=901)`) when a value is NaN or infinite.
pub fn check_finite(values: &[f32], what: impl FnOnce() -> String) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let bad = values.iter().filter(|v| !v.is_finite()).count();
            Err(err(format!(
                "{}: {bad} of {} values are not finite (first at index {i}: {}); check the weights and --guidance",
                what(),
                values.len(),
                values[i]
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_overflow_and_memory_are_errors_naming_the_culprit() {
        assert_eq!(bytes_of(&[2, 3], 4), Some(24));
        assert_eq!(bytes_of(&[usize::MAX, usize::MAX, 4], 2), None);
        let e = check_tensor_fits("x", &[usize::MAX, usize::MAX, 4], DType::F16, 1 << 30, "--batch").unwrap_err().to_string();
        assert!(e.contains("--batch") && e.contains("overflows"), "{e}");
        let e = check_tensor_fits("x", &[1000, 1000, 1000], DType::F32, 1 << 30, "--latent 1000").unwrap_err().to_string();
        assert!(e.contains("--latent 1000") && e.contains("4000000000 bytes") && e.contains(&format!("{}", 1u64 << 30)), "{e}");
        check_tensor_fits("x", &[10, 10], DType::F32, 400, "-").unwrap();
        let cfg = UNetConfig::sd_v1();
        for side in [0, 1, 3, 12] {
            let e = check_latent_side(&cfg, side, "--latent").unwrap_err().to_string();
            assert!(e.contains(&format!("--latent {side}")) && e.contains("multiple of 8"), "{e}");
        }
        check_latent_side(&cfg, 64, "--latent").unwrap();
        for g in [f32::NAN, f32::INFINITY, -1.0, 101.0] {
            assert!(check_guidance(g).unwrap_err().to_string().contains("--guidance"), "{g}");
        }
        check_guidance(7.5).unwrap();
        let e = check_finite(&[1.0, f32::NAN, 2.0], || "step 2".into()).unwrap_err().to_string();
        assert!(e.contains("step 2") && e.contains("1 of 3"), "{e}");
    }
}
