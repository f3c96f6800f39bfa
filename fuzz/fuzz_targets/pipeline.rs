//! A `.mha` file through the whole preprocessing on a coarse grid (6 mm, 48 x 48 x 16): the
//! content checks, orientation (any direction matrix), resampling, lung mask and assembly must
//! answer with an input or an error, whatever the geometry and voxels.
#![no_main]

use ctgrade::preprocess::resample::Grid;
use ctgrade::preprocess::{checks, preprocess_owned, target_grid, ChannelLayout, InputSpec};
use ctgrade::volume::{self, ReadLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = ctgrade_fuzz::put("case.mha", data);
    let limits = ReadLimits {
        max_voxels: 1 << 16,
        ..ReadLimits::default()
    };
    let Ok(mut ct) = volume::read_with_limits(&path, &limits) else {
        return;
    };
    let spec = InputSpec {
        spacing_mm: 6.0,
        crop_xy: [48, 48],
        slices: 16,
        hu_window: [-1100.0, 300.0],
        z_margin_mm: 10.0,
        channels: ChannelLayout::CtX3,
    };
    if checks::check_ct(&mut ct).is_err() {
        return;
    }
    // Grids the production limit accepts but that are large for a fuzzer's memory limit are
    // left out (their cost is measured in docs/robustness.md, not searched for here).
    match target_grid(&Grid::of(&ct), spec.spacing_mm) {
        Ok((_, grid, _)) if grid.len() <= 1 << 21 => {}
        _ => return,
    }
    if let Ok(p) = preprocess_owned(ct, None, &spec) {
        assert_eq!(p.input.len(), 3 * 16 * 48 * 48);
        assert!(
            p.input.iter().all(|v| (0.0..=1.0).contains(v)),
            "input outside [0, 1]"
        );
    }
});
