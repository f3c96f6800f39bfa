//! ctgrade: COVID-19 grading on chest CT with an ensemble of 3-D CNNs, as in
//! de Vente et al., "Automated COVID-19 Grading With Convolutional Neural Networks in Computed
//! Tomography Scans: A Systematic Comparison", IEEE TAI 2021.
//!
//! The modules follow the pipeline:
//! [`volume`] (CT I/O) -> `preprocess` (the paper's input) -> `segment` (nnU-Net v2 models: the
//! lesion map, lobes) -> `model` (3-D layers and networks) -> `ensemble` (weights, members, the
//! segmenters it names) -> `grading` (probability and CO-RADS) and `burden` (share of lung
//! affected, CT severity score) -> `gc` (grand-challenge I/O).

pub mod burden;
pub mod device;
pub mod ensemble;
pub mod gc;
pub mod grading;
pub mod heatmap;
pub mod model;
pub mod preprocess;
pub mod report;
pub mod rng;
pub mod segment;
pub mod synth;
pub mod train;
pub mod volume;
mod wide;
