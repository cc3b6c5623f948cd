//! InstaGen stages 3 and 4 around the grounding head (`models::grounding`): `instagen ground
//! init|label|train|selftrain|infer`.
//!
//! - `dataset`: grounding datasets and label files (COCO instances with each image's prompt categories);
//! - `label`: a detector's results -> grounding labels (score >= alpha, the prompt's categories);
//! - `features`: the t=1 UNet features of the original SD per image, and the feature cache;
//! - `head`: head folders (config, feature levels, parameters) and `ground init`;
//! - `train`: `ground train` (supervised) and `ground selftrain` (mean teacher);
//! - `infer`: `ground infer` (COCO results).

pub mod dataset;
pub mod features;
pub mod head;
pub mod infer;
pub mod label;
pub mod train;

pub use dataset::{GroundImage, GroundSet};
pub use features::{FeatureCache, FeatureExtractor, Features, Level};
pub use label::{label, LabelReport};
pub use head::{init, Head};
pub use infer::{run_infer, InferOptions, InferReport};
pub use train::{run_selftrain, run_train, SelftrainOptions, TrainOptions, TrainReport};
