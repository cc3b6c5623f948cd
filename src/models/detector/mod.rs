//! Faster R-CNN with a ResNet + FPN backbone in torchvision's layout (issue 13).

pub mod transform;
