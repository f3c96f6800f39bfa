//! DICOM series folder: up to three files (header parsing, series checks, pixel decoding).
//!
//! The input is split into files by 2-byte little-endian length prefixes (the last file takes
//! the rest), written as `case/0.dcm`, `case/1.dcm`, ... and the folder read as a series.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = ctgrade_fuzz::work_dir().join("case");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the case folder");
    let mut rest = data;
    for i in 0..3 {
        let file = if i < 2 && rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            let (file, tail) = rest[2..].split_at(len);
            rest = tail;
            file
        } else {
            std::mem::take(&mut rest)
        };
        std::fs::write(dir.join(format!("{i}.dcm")), file).expect("write the fuzz input");
        if rest.is_empty() {
            break;
        }
    }
    let _ = ctgrade_fuzz::read_and_check(&dir);
});
