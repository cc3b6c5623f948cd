//! InstaGen stage 1: fine-tuning SD's UNet on detection crops (../shared/docs/INSTAGEN.md). `step`: one training
//! step (frozen VAE encoder and CLIP, noise-prediction MSE, AdamW on the UNet); `bench`: `instagen bench
//! train-unet`. The run loop and the `instagen finetune` command build on these.

pub mod bench;
pub mod step;

pub use step::{
    build_train_graph, NoiseSchedule, Stage1Options, Stage1Trainer, StepDraws, StepStats, TrainGraph, TrainShape, UnetTrainer,
};
