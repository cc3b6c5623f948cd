//! InstaGen stage 1: fine-tuning SD's UNet on detection crops (../shared/docs/INSTAGEN.md). `step`: one training
//! step (frozen VAE encoder and CLIP, noise-prediction MSE, AdamW on the UNet); `bench`: `instagen bench
//! train-unet`; `run`: `instagen finetune` (the crop dataset, the training loop with checkpoints, the EMA model).

pub mod bench;
pub mod run;
pub mod step;

pub use run::{export_component, export_model, run, run_with, DataMode, FinetuneOptions, FinetuneReport};
pub use step::{
    build_train_graph, NoiseSchedule, Stage1Options, Stage1Trainer, StepDraws, StepStats, TrainGraph, TrainShape, UnetTrainer,
};
