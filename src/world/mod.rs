//! The miniature world (`instagen world make`): a deterministic procedural generator of small RGB scenes of
//! twelve shape categories with exact boxes and captions, split like OV-COCO into base and novel categories and
//! written as three COCO datasets (a captioned corpus, a base-only detection training set, a fully annotated
//! validation set). See docs/DESIGN.md, "Miniature world".
//!
//! - `shapes`: the categories (names, membership tests, aspect and rotation ranges);
//! - `scene`: drawing a scene (placement with an occlusion limit) and rendering it (supersampled, painter's
//!   order; boxes from the samples each object owns);
//! - `make`: the datasets, `world.json`, the contact sheet.

pub mod make;
pub mod scene;
pub mod shapes;

pub use make::{caption, contact_sheet, make, Counts, Split, WorldInfo, WorldOptions, WorldReport, WORLD_JSON};
pub use scene::{Rendered, Scene};
pub use shapes::{Shape, DEFAULT_NOVEL, SHAPES};
