//! Gzipped NIfTI-1 (`.nii.gz`). The first byte chooses: even, the rest is a NIfTI file that is
//! gzipped here (so that mutations reach the header and data behind a valid gzip stream); odd,
//! the rest is written as is (corrupt, truncated or concatenated gzip streams).
#![no_main]

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(rest).expect("gzip in memory");
        gz.finish().expect("gzip in memory")
    } else {
        rest.to_vec()
    };
    let path = ctgrade_fuzz::put("case.nii.gz", &bytes);
    let _ = ctgrade_fuzz::read_and_check(&path);
});
