//! MetaImage with inline data (`.mha`): header parsing, raw and zlib data paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = ctgrade_fuzz::put("case.mha", data);
    let _ = ctgrade_fuzz::read_and_check(&path);
});
