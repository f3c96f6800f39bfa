//! MetaImage with a separate data file (`.mhd` + `case.raw`): the first two bytes (little
//! endian) give the header's length, the header goes to `case.mhd`, the rest to `case.raw`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (header, raw) = rest.split_at(n);
    ctgrade_fuzz::put("case.raw", raw);
    let path = ctgrade_fuzz::put("case.mhd", header);
    let _ = ctgrade_fuzz::read_and_check(&path);
});
