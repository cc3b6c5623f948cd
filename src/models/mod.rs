//! Models: build graphs from parameter stores; never launch kernels. (CLIP text, UNet, VAE, scheduler,
//! grounding head, Faster R-CNN as the issues land.)

pub mod scheduler;
pub mod tokenizer;

pub mod clip_text;
pub mod config;
pub mod layers;
pub mod vae;
pub mod weights;

pub mod unet;
pub mod grounding;
