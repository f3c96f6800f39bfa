//! NIfTI-1 single file (`.nii`): header checks, geometry, scaling, data length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = ctgrade_fuzz::put("case.nii", data);
    let _ = ctgrade_fuzz::read_and_check(&path);
});
