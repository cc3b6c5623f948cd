//! Faster R-CNN (issue 13): torchvision's `fasterrcnn_resnet50_fpn` layout and key names, NHWC graphs.

pub mod anchors;
pub mod backbone;
pub mod faster_rcnn;
pub mod roi_heads;
pub mod rpn;
pub mod transform;
pub mod weights;
