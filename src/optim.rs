//! Optimiser settings (a leaf module: `backend` takes them as kernel parameters, `runtime` keeps the state).

/// AdamW as in PyTorch (`torch.optim.AdamW`): decoupled weight decay, bias-corrected moments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}
