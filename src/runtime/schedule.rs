//! Learning-rate schedules: pure functions of the step (the number of optimiser steps taken before this one,
//! PyTorch's `last_epoch`), in the closed forms of `torch.optim.lr_scheduler`.

/// A schedule; [`Schedule::lr`] gives the rate of step `t` from the base rate.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// `LinearLR(start_factor, end_factor=1, total_iters=warmup)`: the factor goes linearly from
    /// `start_factor` to 1 over `warmup` steps, then stays 1.
    LinearWarmup { start_factor: f64, warmup: u64 },
    /// `MultiStepLR(milestones, gamma)`: times `gamma` for every milestone reached (`t >= milestone`).
    MultiStep { milestones: Vec<u64>, gamma: f64 },
    /// `CosineAnnealingLR(T_max, eta_min)`: `eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2`.
    Cosine { t_max: u64, eta_min: f64 },
    /// `SequentialLR([LinearLR(start_factor, 1, warmup), CosineAnnealingLR(total - warmup, eta_min)],
    /// milestones=[warmup])`: linear warmup, then cosine annealing to `eta_min` at step `total`.
    WarmupCosine { start_factor: f64, warmup: u64, total: u64, eta_min: f64 },
}

fn linear(start_factor: f64, warmup: u64, t: u64) -> f64 {
    if warmup == 0 {
        return 1.0;
    }
    start_factor + (1.0 - start_factor) * t.min(warmup) as f64 / warmup as f64
}

fn cosine(base: f64, eta_min: f64, t_max: u64, t: u64) -> f64 {
    if t_max == 0 {
        return base;
    }
    eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t as f64 / t_max as f64).cos()) / 2.0
}

impl Schedule {
    /// The learning rate of step `t` (0 for the first step).
    pub fn lr(&self, base: f64, t: u64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::LinearWarmup { start_factor, warmup } => base * linear(*start_factor, *warmup, t),
            Schedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| t >= m).count() as i32)
            }
            Schedule::Cosine { t_max, eta_min } => cosine(base, *eta_min, *t_max, t),
            Schedule::WarmupCosine { start_factor, warmup, total, eta_min } => {
                if t < *warmup {
                    base * linear(*start_factor, *warmup, t)
                } else {
                    cosine(base, *eta_min, total.saturating_sub(*warmup), t - warmup)
                }
            }
        }
    }
}
