//! DDIM sampling (Song et al. 2021) as diffusers' `DDIMScheduler` does it, on host `&[f32]` slices.
//!
//! The UNet runs in graphs; the scheduler step is elementwise math on the latent, done here on the host (each
//! element in f64, rounded to f32 once). Parity with diffusers 0.42.1 is checked by `tests/ddim.rs` against fixtures
//! written by `tools/make_ddim_fixtures.py`: timesteps exact; `alphas_cumprod` within 1e-6 relative (mostly
//! bit-equal); step outputs within 1e-6 of each tensor's largest magnitude (diffusers rounds every f32 torch op, we
//! round once, so elements that are small differences of large terms differ by a few ulps of those terms).
//!
//! - Config: read from a diffusers `scheduler/scheduler_config.json` ([`DdimConfig::from_file`]); unknown keys are
//!   ignored (SD v1.x ships a `PNDMScheduler` config, whose shared keys DDIM reads, as diffusers'
//!   `DDIMScheduler.from_pretrained` does). Missing keys take SD v1.4's values, not diffusers' class defaults.
//! - Supported: betas `linear` / `scaled_linear`, prediction `epsilon` / `v_prediction` / `sample`, spacing
//!   `leading` / `trailing` / `linspace`, `clip_sample`, `set_alpha_to_one`, `steps_offset`, any eta (with
//!   caller-given noise). Anything else (`squaredcos_cap_v2`, `trained_betas`, `thresholding`,
//!   `rescale_betas_zero_snr`) is an error naming the key and the file.
//! - Noise: diffusers draws with `torch.randn`, whose CPU/CUDA generators (MT19937 / Philox) we do not reimplement,
//!   so a seed here does not give torch's image. [`GaussianNoise`] is our own documented generator (SplitMix64 +
//!   Box-Muller); its stream is frozen by a test so that a seed names the same latent across versions.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The SD v1 VAE's latent scale: `latent = vae.encode(x).sample() * LATENT_SCALE`, `x = vae.decode(latent / ..)`.
pub const LATENT_SCALE: f32 = 0.18215;

/// The keys of a diffusers scheduler config that DDIM reads, as written in the file (strings are checked by
/// [`DdimScheduler::new`]). Defaults are SD v1.4's.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct DdimConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    /// Must be null/absent: explicit betas are not supported.
    pub trained_betas: Option<serde_json::Value>,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: String,
    pub timestep_spacing: String,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
}

impl Default for DdimConfig {
    /// SD v1.4's `scheduler_config.json` plus diffusers' defaults for the keys it lacks.
    fn default() -> Self {
        DdimConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            trained_betas: None,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: false,
            steps_offset: 1,
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
            thresholding: false,
            rescale_betas_zero_snr: false,
        }
    }
}

impl DdimConfig {
    /// Reads `scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses config JSON; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        crate::util::json::from_object(text)
            .map_err(|e| Error::Weights { path: origin.as_ref().to_path_buf(), msg: format!("scheduler config: {e}") })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// What one DDIM step returns (both `len` = the latent's element count).
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// x_{t-1}.
    pub prev_sample: Vec<f32>,
    /// The model's estimate of x_0 (after `clip_sample`, if set).
    pub pred_original_sample: Vec<f32>,
}

/// diffusers' `DDIMScheduler`.
#[derive(Clone, Debug)]
pub struct DdimScheduler {
    pub config: DdimConfig,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    /// Where the config came from (for errors); `<default>` when built in code.
    origin: PathBuf,
    /// float32 like torch's, so that `alphas_cumprod` matches diffusers bit for bit or within an ulp.
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    timesteps: Vec<usize>,
}

fn unsupported(origin: &Path, key: &str, value: impl std::fmt::Display, supported: &str) -> Error {
    Error::Weights {
        path: origin.to_path_buf(),
        msg: format!("scheduler config: {key}: unsupported value {value} (supported: {supported})"),
    }
}

impl DdimScheduler {
    /// Builds the scheduler from SD v1.4's settings (never fails; a unit test checks).
    pub fn sd_v1() -> Result<Self> {
        Self::new(DdimConfig::default(), "<default>")
    }

    /// Reads `scheduler_config.json` and builds the scheduler.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::new(DdimConfig::from_file(path)?, path)
    }

    /// Validates `config` (`origin` names its file in errors) and computes the beta schedule.
    pub fn new(config: DdimConfig, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref().to_path_buf();
        let beta_schedule = match config.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            s => return Err(unsupported(&origin, "beta_schedule", format!("{s:?}"), "linear, scaled_linear")),
        };
        let prediction_type = match config.prediction_type.as_str() {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            s => {
                return Err(unsupported(&origin, "prediction_type", format!("{s:?}"), "epsilon, v_prediction, sample"));
            }
        };
        let timestep_spacing = match config.timestep_spacing.as_str() {
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            "linspace" => TimestepSpacing::Linspace,
            s => return Err(unsupported(&origin, "timestep_spacing", format!("{s:?}"), "leading, trailing, linspace")),
        };
        if let Some(v) = config.trained_betas.as_ref().filter(|v| !v.is_null()) {
            let shown = if v.is_array() { "an array".to_string() } else { v.to_string() };
            return Err(unsupported(&origin, "trained_betas", shown, "null"));
        }
        if config.thresholding {
            return Err(unsupported(&origin, "thresholding", true, "false"));
        }
        if config.rescale_betas_zero_snr {
            return Err(unsupported(&origin, "rescale_betas_zero_snr", true, "false"));
        }
        if config.num_train_timesteps < 2 {
            return Err(unsupported(&origin, "num_train_timesteps", config.num_train_timesteps, ">= 2"));
        }
        for (key, b) in [("beta_start", config.beta_start), ("beta_end", config.beta_end)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(unsupported(&origin, key, b, "a number in (0, 1)"));
            }
        }
        let n = config.num_train_timesteps;
        let betas: Vec<f32> = match beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
            BetaSchedule::ScaledLinear => torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
        };
        // Every beta in (0, 1) (f32 rounding of a value near 0 or 1 could still leave it).
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
            return Err(unsupported(&origin, "beta_start / beta_end", format!("(beta {i} is {b})"), "betas in (0, 1)"));
        }
        // torch: alphas = 1 - betas (f32); cumprod on the CPU accumulates in f64 and stores f32.
        let mut acc = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(DdimScheduler {
            config,
            beta_schedule,
            prediction_type,
            timestep_spacing,
            origin,
            betas,
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: None,
            timesteps: Vec::new(),
        })
    }

    /// The standard deviation of the initial noise (1 for DDIM).
    pub fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// cumprod(1 - beta), `num_train_timesteps` values.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The alpha-bar used as "previous" at the last step (1, or `alphas_cumprod[0]` without `set_alpha_to_one`).
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// The timesteps set by [`Self::set_timesteps`], first (noisiest) first; empty before.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    /// Chooses `n` timesteps as diffusers does for the configured spacing. SD v1 (leading, offset 1), 50 steps:
    /// 981, 961, ..., 21, 1.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let train = self.config.num_train_timesteps;
        if n == 0 || n > train {
            return Err(Error::Mismatch {
                what: "ddim set_timesteps".into(),
                msg: format!("num_inference_steps {n} must be in 1..={train} (num_train_timesteps, {:?})", self.origin),
            });
        }
        let ts: Vec<i64> = match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = (train / n) as i64;
                (0..n as i64).rev().map(|i| i * ratio + self.config.steps_offset as i64).collect()
            }
            TimestepSpacing::Linspace => numpy_linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Trailing => {
                // np.round(np.arange(train, 0, -train / n)) - 1, with numpy's float arange.
                numpy_arange(train as f64, 0.0, -(train as f64) / n as f64)
                    .into_iter()
                    .map(|v| v.round_ties_even() as i64 - 1)
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(ts.len());
        for t in ts {
            if t < 0 || t as usize >= train {
                return Err(Error::Mismatch {
                    what: "ddim set_timesteps".into(),
                    msg: format!(
                        "{n} steps with {:?} spacing and steps_offset {} give timestep {t}, outside 0..{train} ({:?})",
                        self.timestep_spacing, self.config.steps_offset, self.origin
                    ),
                });
            }
            out.push(t as usize);
        }
        self.timesteps = out;
        self.num_inference_steps = Some(n);
        Ok(())
    }

    /// DDIM needs no input scaling (diffusers' `scale_model_input` returns the sample).
    pub fn scale_model_input<'a>(&self, sample: &'a [f32], _timestep: usize) -> &'a [f32] {
        sample
    }

    /// alpha-bar at `t` and at the previous timestep `t - train / n` (or the final alpha-bar below 0).
    fn alpha_pair(&self, timestep: usize) -> Result<(f64, f64)> {
        let n = self.num_inference_steps.ok_or_else(|| Error::Mismatch {
            what: "ddim step".into(),
            msg: "set_timesteps must be called before step".into(),
        })?;
        let train = self.config.num_train_timesteps;
        if timestep >= train {
            return Err(Error::Mismatch {
                what: "ddim step".into(),
                msg: format!("timestep {timestep} outside 0..{train}"),
            });
        }
        let prev = timestep as i64 - (train / n) as i64;
        let a_t = self.alphas_cumprod[timestep] as f64;
        let a_prev =
            if prev >= 0 { self.alphas_cumprod[prev as usize] as f64 } else { self.final_alpha_cumprod as f64 };
        Ok((a_t, a_prev))
    }

    /// One DDIM step from `sample` (x_t) and the (guided) model output at `timestep`; diffusers'
    /// `DDIMScheduler.step` with `use_clipped_model_output=False`. With `eta > 0`, `variance_noise` (standard normal,
    /// same length) is required; with `eta == 0` it is ignored. Each element is computed in f64 and rounded once.
    pub fn step(
        &self,
        model_output: &[f32],
        timestep: usize,
        sample: &[f32],
        eta: f64,
        variance_noise: Option<&[f32]>,
    ) -> Result<StepOutput> {
        let len = sample.len();
        let bad = |msg: String| Error::Mismatch { what: "ddim step".into(), msg };
        if model_output.len() != len {
            return Err(bad(format!("model_output has {} elements, sample {len}", model_output.len())));
        }
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(bad(format!("eta {eta} must be finite and >= 0")));
        }
        let noise = match (eta > 0.0, variance_noise) {
            (false, _) => None,
            (true, Some(z)) if z.len() == len => Some(z),
            (true, Some(z)) => return Err(bad(format!("variance_noise has {} elements, sample {len}", z.len()))),
            (true, None) => return Err(bad(format!("eta {eta} > 0 needs variance_noise"))),
        };
        let (a_t, a_prev) = self.alpha_pair(timestep)?;
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let (sa_t, sb_t, sa_prev) = (a_t.sqrt(), b_t.sqrt(), a_prev.sqrt());
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std_dev_t = eta * variance.sqrt();
        let dir_coef = (1.0 - a_prev - std_dev_t * std_dev_t).sqrt();
        let clip = self.config.clip_sample.then_some(self.config.clip_sample_range);

        let mut prev_sample = Vec::with_capacity(len);
        let mut pred_original_sample = Vec::with_capacity(len);
        for i in 0..len {
            let x = sample[i] as f64;
            let m = model_output[i] as f64;
            let (mut x0, eps) = match self.prediction_type {
                PredictionType::Epsilon => ((x - sb_t * m) / sa_t, m),
                PredictionType::Sample => (m, (x - sa_t * m) / sb_t),
                PredictionType::VPrediction => (sa_t * x - sb_t * m, sa_t * m + sb_t * x),
            };
            if let Some(r) = clip {
                x0 = x0.clamp(-r, r);
            }
            let mut prev = sa_prev * x0 + dir_coef * eps;
            if let Some(z) = noise {
                prev += std_dev_t * z[i] as f64;
            }
            prev_sample.push(prev as f32);
            pred_original_sample.push(x0 as f32);
        }
        Ok(StepOutput { prev_sample, pred_original_sample })
    }

    /// Forward diffusion q(x_t | x_0): `sqrt(a_t) x0 + sqrt(1 - a_t) noise` (diffusers' `add_noise`, one timestep).
    pub fn add_noise(&self, original: &[f32], noise: &[f32], timestep: usize) -> Result<Vec<f32>> {
        let train = self.config.num_train_timesteps;
        if original.len() != noise.len() || timestep >= train {
            return Err(Error::Mismatch {
                what: "ddim add_noise".into(),
                msg: format!(
                    "original {} elements, noise {}, timestep {timestep} (must be < {train})",
                    original.len(),
                    noise.len()
                ),
            });
        }
        let a = self.alphas_cumprod[timestep] as f64;
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        Ok(original.iter().zip(noise).map(|(&x, &z)| (sa * x as f64 + sb * z as f64) as f32).collect())
    }
}

/// Classifier-free guidance: `uncond + scale * (cond - uncond)`, in f32 as the diffusers pipelines do.
pub fn classifier_free_guidance(uncond: &[f32], cond: &[f32], scale: f32) -> Result<Vec<f32>> {
    if uncond.len() != cond.len() {
        return Err(Error::Mismatch {
            what: "classifier_free_guidance".into(),
            msg: format!("uncond has {} elements, cond {}", uncond.len(), cond.len()),
        });
    }
    Ok(uncond.iter().zip(cond).map(|(&u, &c)| u + scale * (c - u)).collect())
}

/// Seeded standard-normal noise for initial latents and eta > 0 steps. Not torch's stream (see the module doc).
///
/// Definition (frozen; a test pins the first values): a SplitMix64 state starts at `seed`; each draw of 64 bits is
/// `state += 0x9E3779B97F4A7C15` then the SplitMix64 finaliser. Pairs of draws `(a, b)` give `u1 = ((a >> 11) + 1) /
/// 2^53` in (0, 1] and `u2 = (b >> 11) / 2^53` in [0, 1); Box-Muller in f64 gives `r cos(2 pi u2)` then
/// `r sin(2 pi u2)` with `r = sqrt(-2 ln u1)`, each rounded to f32, in that order.
#[derive(Clone, Debug)]
pub struct GaussianNoise {
    state: u64,
    spare: Option<f32>,
}

impl GaussianNoise {
    pub fn new(seed: u64) -> Self {
        GaussianNoise { state: seed, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// One standard normal value.
    pub fn next_f32(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let scale = 1.0 / (1u64 << 53) as f64;
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * scale;
        let u2 = (self.next_u64() >> 11) as f64 * scale;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }

    pub fn fill(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.next_f32();
        }
    }

    /// `n` values scaled by `sigma` (the initial latent: `sigma = init_noise_sigma`).
    pub fn sample(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * sigma).collect()
    }
}

/// torch.linspace(start, end, n, dtype=float32) on the CPU: f32 endpoints and step, the first half counted from
/// `start`, the second from `end` (ATen's scalar `linspace_kernel`).
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n).map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 }).collect()
}

/// np.linspace(start, stop, n) (endpoint included): `i * step + start`, the last set to `stop`.
fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// np.arange(start, stop, step) for floats: length `ceil((stop - start) / step)`, values `start + i * delta` with
/// `delta = (start + step) - start` (numpy fills from the first two elements).
fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 1 { start + step } else { start + i as f64 * delta }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_sd_v1() {
        let s = DdimScheduler::sd_v1().unwrap();
        assert_eq!(s.beta_schedule, BetaSchedule::ScaledLinear);
        assert_eq!(s.alphas_cumprod().len(), 1000);
        assert_eq!(s.init_noise_sigma(), 1.0);
    }

    #[test]
    fn numpy_helpers() {
        assert_eq!(numpy_linspace(0.0, 10.0, 3), vec![0.0, 5.0, 10.0]);
        assert_eq!(numpy_arange(10.0, 0.0, -2.5), vec![10.0, 7.5, 5.0, 2.5]);
    }

    #[test]
    fn guidance_formula() {
        let g = classifier_free_guidance(&[1.0, 2.0], &[3.0, 2.0], 5.0).unwrap();
        assert_eq!(g, vec![11.0, 2.0]);
        assert!(classifier_free_guidance(&[1.0], &[1.0, 2.0], 5.0).is_err());
    }
}
