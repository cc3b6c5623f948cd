//! The small Stable Diffusion trained from scratch (issue 15): `init` writes a diffusers folder with fresh
//! weights from one config (`instagen sd init`), `vae` trains the AutoencoderKL (`instagen vae train`), `data`
//! reads whole captioned images (the world corpus; also `instagen finetune --data-mode captions`, which trains
//! the UNet on them with stage 1's step), `text` measures how far apart the text encoder puts the categories'
//! captions (`instagen sd text-sims`).

pub mod data;
pub mod init;
pub mod text;
pub mod vae;

pub use init::{init, InitReport, SdConfig, TextInit};
pub use text::{text_sims, TextSims};
pub use vae::{run as vae_train, RecLoss, VaeTrainOptions, VaeTrainReport, VaeTrainer};
