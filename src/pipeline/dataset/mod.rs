//! Working with finished dataset folders, the layout `instagen generate` writes (`pipeline::generate::folder`:
//! the manifest `generate.json`, `images/`, `latents/`, one record per image in `records/`, and `instances.json`
//! built from the records by `generate::instances_json`; docs/DESIGN.md, "Generation" and "Generated datasets"):
//!
//! - `merge`: `instagen merge`, the shard folders of one sharded run joined into one folder;
//! - `export`: `instagen export --format yolo`, a folder in the layout Ultralytics reads.
//!
//! The COCO side of a finished folder is read by [`crate::pipeline::ground::GroundSet::open_dir`].

pub mod export;
pub mod merge;
