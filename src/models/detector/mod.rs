//! Faster R-CNN (issue 13): torchvision's `fasterrcnn_resnet50_fpn` layout and key names, NHWC graphs.

pub mod backbone;
pub mod transform;
pub mod weights;
