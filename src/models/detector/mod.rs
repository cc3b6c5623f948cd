//! Faster R-CNN with a ResNet + FPN backbone, as torchvision's `fasterrcnn_resnet50_fpn` (issue 13).

pub mod anchors;
pub mod roi_heads;
pub mod rpn;
