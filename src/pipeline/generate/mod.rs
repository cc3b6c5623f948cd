//! `instagen generate`: category names in, a detection dataset out (InstaGen stage 2 with the grounding head's
//! boxes), sharded, crash-safe and resumable. See docs/DESIGN.md "Generation".
//!
//! - `plan`: the category lists and the prompt plan (one prompt and seed per global image index);
//! - `shard`: `--shard i/n`, Slurm array and Kubernetes indexed-job shards;
//! - `folder`: the dataset folder (manifest, records, `instances.json`);
//! - `session`: the models, loaded once, and one batch of generation;
//! - `run`: the run loop (resume, atomic writes, progress);
//! - `bench`: `instagen bench generate`.

pub mod bench;
pub mod folder;
pub mod plan;
pub mod run;
pub mod session;
pub mod shard;

pub use folder::{instances_json, read_records, Manifest, Record, RecordBox};
pub use plan::{read_categories, Plan, PlannedImage};
pub use run::{run, run_with, GenerateOptions, GenerateReport, ImageFormat};
pub use session::{Session, SessionOptions};
pub use shard::Shard;
