//! Optimiser settings (a leaf module: `backend` takes them as kernel parameters, `runtime` keeps the state):
//! AdamW and SGD, parameter groups, loss scaling and what a `runtime::Trainer` is configured with.

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

/// SGD as in PyTorch (`torch.optim.SGD`): weight decay added to the gradient, then momentum (the buffer starts
/// as the first gradient), dampening and Nesterov momentum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// PyTorch's defaults (`lr` has none there).
    fn default() -> Self {
        SgdConfig { lr: 1e-2, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Algorithm {
    AdamW(AdamWConfig),
    Sgd(SgdConfig),
}

impl Algorithm {
    pub fn weight_decay(&self) -> f32 {
        match self {
            Algorithm::AdamW(c) => c.weight_decay,
            Algorithm::Sgd(c) => c.weight_decay,
        }
    }
    /// The same rule with another learning rate and weight decay (a parameter group's).
    pub fn with(&self, lr: f32, weight_decay: f32) -> Algorithm {
        match *self {
            Algorithm::AdamW(c) => Algorithm::AdamW(AdamWConfig { lr, weight_decay, ..c }),
            Algorithm::Sgd(c) => Algorithm::Sgd(SgdConfig { lr, weight_decay, ..c }),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::AdamW(_) => "adamw",
            Algorithm::Sgd(_) => "sgd",
        }
    }
}

/// A parameter group's settings: the learning rate is the step's times `lr_factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    pub lr_factor: f32,
    pub weight_decay: f32,
}

impl ParamGroup {
    /// Every parameter in one group with weight decay `wd`.
    pub fn default_for(wd: f32) -> ParamGroup {
        ParamGroup { lr_factor: 1.0, weight_decay: wd }
    }

    /// The usual rule: no weight decay on 1-D tensors (norm scales and biases), `wd` on the rest.
    pub fn no_decay_on_1d(wd: f32) -> impl Fn(&str, &[usize]) -> ParamGroup {
        move |_, shape| ParamGroup { lr_factor: 1.0, weight_decay: if shape.len() <= 1 { 0.0 } else { wd } }
    }
}

/// Dynamic loss scaling as PyTorch's `torch.amp.GradScaler`: the loss is multiplied by `scale` before the
/// backward pass and the gradients divided by it; a step whose gradients hold inf/NaN is skipped and the scale
/// multiplied by `backoff`; after `growth_interval` good steps in a row it is multiplied by `growth`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleConfig {
    pub init_scale: f32,
    pub growth: f32,
    pub backoff: f32,
    pub growth_interval: u32,
}

impl Default for LossScaleConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        LossScaleConfig { init_scale: 65536.0, growth: 2.0, backoff: 0.5, growth_interval: 2000 }
    }
}

/// Everything a `runtime::Trainer` does besides the parameters it trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    pub algorithm: Algorithm,
    /// Clip the global gradient L2 norm to this (as `torch.nn.utils.clip_grad_norm_`).
    pub max_grad_norm: Option<f32>,
    /// Dynamic loss scaling; `None` is a fixed scale of 1 (inf/NaN gradients still skip the step).
    pub loss_scale: Option<LossScaleConfig>,
    /// Keep an f32 exponential moving average of the weights with this decay.
    pub ema_decay: Option<f32>,
    /// Keep f32 gradient accumulators (for gradient accumulation over micro-batches).
    pub accumulation: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            algorithm: Algorithm::AdamW(AdamWConfig::default()),
            max_grad_norm: None,
            loss_scale: None,
            ema_decay: None,
            accumulation: false,
        }
    }
}
