//! Bad input: every broken file gives an error that names the file and the problem, without
//! panicking, allocating what the header claims, or writing anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ctgrade::volume::{self, ElementType, ReadLimits, Volume, VolumeError};
use flate2::{write::ZlibEncoder, Compression};

fn header(dims: &str, ty: &str, extra: &str, data_file: &str) -> String {
    format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
         {extra}ElementSpacing = 1 1 1\nDimSize = {dims}\nElementType = {ty}\n\
         ElementDataFile = {data_file}\n"
    )
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn shorts(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as i16).to_le_bytes()).collect()
}

/// Writes `bytes` to `name` in `dir`; returns the path.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Reads `path`, expecting an error whose message names `names` and contains every keyword.
fn expect_err(path: &Path, names: &Path, keywords: &[&str]) -> VolumeError {
    let dir = path.parent().unwrap();
    let before = std::fs::read_dir(dir).unwrap().count();
    let t = Instant::now();
    let err = match volume::read(path) {
        Ok(v) => panic!("{} read as {:?}", path.display(), v.size),
        Err(e) => e,
    };
    // Header checks reject before allocating: fast even when the header claims gigabytes.
    assert!(
        t.elapsed().as_secs_f64() < 1.0,
        "{err}: took {:?}",
        t.elapsed()
    );
    let msg = err.to_string();
    let name = names.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "`{msg}` does not name {name}");
    for k in keywords {
        assert!(msg.contains(k), "`{msg}` does not mention `{k}`");
    }
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        before,
        "a read wrote files"
    );
    err
}

#[test]
fn truncated_files() {
    let d = tempfile::tempdir().unwrap();
    let h = header("4 3 2", "MET_SHORT", "", "LOCAL");
    let mut b = h.clone().into_bytes();
    b.extend(shorts(24 - 5));
    let p = file(d.path(), "short.mha", &b);
    let e = expect_err(&p, &p, &["pixel data", "38", "48"]);
    assert!(matches!(e, VolumeError::DataLength { .. }));

    // Cut inside the header.
    let p = file(d.path(), "cut.mha", &h.as_bytes()[..40]);
    expect_err(&p, &p, &["ElementDataFile"]);

    // Empty file.
    let p = file(d.path(), "empty.mha", b"");
    expect_err(&p, &p, &["header"]);

    // Compressed data cut short, with and without CompressedDataSize.
    let z = zlib(&shorts(24));
    let mut b = header(
        "4 3 2",
        "MET_SHORT",
        &format!("CompressedData = True\nCompressedDataSize = {}\n", z.len()),
        "LOCAL",
    )
    .into_bytes();
    b.extend(&z[..z.len() / 2]);
    let p = file(d.path(), "cutz.mha", &b);
    expect_err(&p, &p, &["compressed data", &z.len().to_string()]);
    let mut b = header("4 3 2", "MET_SHORT", "CompressedData = True\n", "LOCAL").into_bytes();
    b.extend(&z[..z.len() / 2]);
    let p = file(d.path(), "cutz2.mha", &b);
    expect_err(&p, &p, &["compressed data", "truncated"]);

    // NIfTI: a valid file cut short, plain and gzipped.
    let v = Volume::filled([4, 3, 2], [1.0; 3], [0.0; 3], 7.0);
    let full = d.path().join("full.nii");
    volume::write(&full, &v, ElementType::Short).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let p = file(d.path(), "cut.nii", &bytes[..bytes.len() - 10]);
    expect_err(&p, &p, &["pixel data"]);
    let p = file(d.path(), "cuthdr.nii", &bytes[..100]);
    expect_err(&p, &p, &["NIfTI"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&bytes[..bytes.len() - 10]).unwrap();
    let p = file(d.path(), "cut.nii.gz", &gz.finish().unwrap());
    expect_err(&p, &p, &["pixel data"]);
}

#[test]
fn missing_or_malformed_header_fields() {
    let d = tempfile::tempdir().unwrap();
    let h = "ObjectType = Image\nNDims = 3\nElementType = MET_SHORT\nElementDataFile = LOCAL\n";
    let p = file(d.path(), "nodims.mha", h.as_bytes());
    expect_err(&p, &p, &["DimSize"]);

    let h = header("4 3 two", "MET_SHORT", "", "LOCAL");
    let p = file(d.path(), "baddims.mha", h.as_bytes());
    expect_err(&p, &p, &["DimSize"]);

    let h = header("4 3 2", "MET_SHORT", "", "LOCAL")
        .replace("ElementSpacing = 1 1 1", "ElementSpacing = 1 0 1");
    let p = file(d.path(), "zerospacing.mha", h.as_bytes());
    expect_err(&p, &p, &["spacing"]);

    let h = header(
        "4 3 2",
        "MET_SHORT",
        "TransformMatrix = 1 0 0 0 1 0\n",
        "LOCAL",
    );
    let p = file(d.path(), "badmatrix.mha", h.as_bytes());
    expect_err(&p, &p, &["TransformMatrix"]);

    let h = header("4 3 2", "MET_SHORT", "BinaryData = False\n", "LOCAL");
    let p = file(d.path(), "ascii.mha", h.as_bytes());
    expect_err(&p, &p, &["ASCII"]);

    // No ElementDataFile within the header limit.
    let junk = "Comment = padding\n".repeat(5000);
    let p = file(
        d.path(),
        "long.mha",
        format!("NDims = 3\n{junk}").as_bytes(),
    );
    let e = expect_err(&p, &p, &["ElementDataFile"]);
    assert!(matches!(e, VolumeError::HeaderTooLong { .. }));
}

#[test]
fn sizes_disagreeing_with_data_length() {
    let d = tempfile::tempdir().unwrap();
    // More data than DimSize implies.
    let mut b = header("4 3 2", "MET_SHORT", "", "LOCAL").into_bytes();
    b.extend(shorts(30));
    let p = file(d.path(), "long.mha", &b);
    expect_err(&p, &p, &["60", "48"]);

    // Detached raw file of the wrong length.
    let raw = file(d.path(), "img.raw", &shorts(20));
    let p = file(
        d.path(),
        "img.mhd",
        header("4 3 2", "MET_SHORT", "", "img.raw").as_bytes(),
    );
    expect_err(&p, &raw, &["40", "48"]);

    // CompressedDataSize disagreeing with the bytes present.
    let z = zlib(&shorts(24));
    let mut b = header(
        "4 3 2",
        "MET_SHORT",
        &format!(
            "CompressedData = True\nCompressedDataSize = {}\n",
            z.len() - 3
        ),
        "LOCAL",
    )
    .into_bytes();
    b.extend(&z);
    let p = file(d.path(), "zsize.mha", &b);
    expect_err(&p, &p, &["compressed data"]);

    // A complete stream holding fewer bytes than the header implies.
    let z = zlib(&shorts(20));
    let mut b = header("4 3 2", "MET_SHORT", "CompressedData = True\n", "LOCAL").into_bytes();
    b.extend(&z);
    let p = file(d.path(), "zshort.mha", &b);
    expect_err(&p, &p, &["ends after 40", "48"]);
}

#[test]
fn unsupported_types_dimensions_and_channels() {
    let d = tempfile::tempdir().unwrap();
    let p = file(
        d.path(),
        "half.mha",
        header("4 3 2", "MET_HALF", "", "LOCAL").as_bytes(),
    );
    let e = expect_err(&p, &p, &["MET_HALF"]);
    assert!(matches!(e, VolumeError::ElementType { .. }));

    for (nd, dims) in [(4, "4 3 2 2"), (2, "4 3")] {
        let h =
            header(dims, "MET_SHORT", "", "LOCAL").replace("NDims = 3", &format!("NDims = {nd}"));
        let p = file(d.path(), &format!("nd{nd}.mha"), h.as_bytes());
        let e = expect_err(&p, &p, &[&format!("{nd} dimensions"), "3-D"]);
        assert!(matches!(e, VolumeError::Dimensions { .. }));
    }

    let h = header(
        "4 3 2",
        "MET_SHORT",
        "ElementNumberOfChannels = 3\n",
        "LOCAL",
    );
    let p = file(d.path(), "rgb.mha", h.as_bytes());
    let e = expect_err(&p, &p, &["3 channels"]);
    assert!(matches!(e, VolumeError::Channels { .. }));

    // NIfTI with 2 dimensions and with an unsupported datatype (complex).
    let v = Volume::filled([4, 3, 2], [1.0; 3], [0.0; 3], 1.0);
    let full = d.path().join("ok.nii");
    volume::write(&full, &v, ElementType::Float).unwrap();
    let good = std::fs::read(&full).unwrap();
    let mut b = good.clone();
    b[40..42].copy_from_slice(&2u16.to_le_bytes()); // dim[0]
    let p = file(d.path(), "twod.nii", &b);
    expect_err(&p, &p, &["2 dimensions"]);
    let mut b = good.clone();
    b[70..72].copy_from_slice(&32i16.to_le_bytes()); // datatype COMPLEX64
    let p = file(d.path(), "complex.nii", &b);
    expect_err(&p, &p, &["datatype 32"]);
}

#[test]
fn zlib_bombs_and_corruption() {
    let d = tempfile::tempdir().unwrap();
    // The stream holds twice what the header implies: reading stops at the expected size.
    let z = zlib(&shorts(48));
    let mut b = header(
        "4 3 2",
        "MET_SHORT",
        &format!("CompressedData = True\nCompressedDataSize = {}\n", z.len()),
        "LOCAL",
    )
    .into_bytes();
    b.extend(&z);
    let p = file(d.path(), "bomb.mha", &b);
    expect_err(&p, &p, &["inflates past", "48"]);

    // Flipped bytes inside the stream.
    let mut z = zlib(&(0..4000).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
    let mid = z.len() / 2;
    for x in &mut z[mid..mid + 8] {
        *x ^= 0x5a;
    }
    let mut b = header("40 10 10", "MET_UCHAR", "CompressedData = True\n", "LOCAL").into_bytes();
    b.extend(&z);
    let p = file(d.path(), "corrupt.mha", &b);
    expect_err(&p, &p, &["compressed data"]);

    // Not zlib at all.
    let mut b = header("4 3 2", "MET_SHORT", "CompressedData = True\n", "LOCAL").into_bytes();
    b.extend(b"this is not a zlib stream");
    let p = file(d.path(), "notz.mha", &b);
    expect_err(&p, &p, &["corrupt zlib"]);

    // Corrupt gzip NIfTI.
    let p = file(
        d.path(),
        "bad.nii.gz",
        b"\x1f\x8b\x08\x00garbage garbage garbage",
    );
    expect_err(&p, &p, &[]);
}

#[test]
fn missing_data_file() {
    let d = tempfile::tempdir().unwrap();
    let p = file(
        d.path(),
        "a.mhd",
        header("4 3 2", "MET_SHORT", "", "gone.raw").as_bytes(),
    );
    let e = expect_err(&p, &p, &["cannot open its data file", "gone.raw"]);
    assert!(matches!(e, VolumeError::DataFile { .. }));
    let p = d.path().join("absent.mha");
    expect_err(&p, &p, &["cannot open"]);
}

#[test]
fn absurd_sizes_with_tiny_files() {
    let d = tempfile::tempdir().unwrap();
    // Over the voxel limit.
    let p = file(
        d.path(),
        "huge.mha",
        header("100000 100000 100000", "MET_SHORT", "", "LOCAL").as_bytes(),
    );
    let e = expect_err(&p, &p, &["exceeds the limit"]);
    assert!(matches!(e, VolumeError::TooLarge { .. }));
    // Overflowing u64.
    let h = header("18446744073709551615 4 4", "MET_SHORT", "", "LOCAL");
    let p = file(d.path(), "overflow.mha", h.as_bytes());
    expect_err(&p, &p, &["exceeds the limit"]);
    // Under the limit (1e9 voxels, 2 GB) but with 20 bytes of data: rejected by the length check.
    let mut b = header("1000 1000 1000", "MET_SHORT", "", "LOCAL").into_bytes();
    b.extend([0u8; 20]);
    let p = file(d.path(), "big.mha", &b);
    expect_err(&p, &p, &["pixel data", "2000000000"]);
    // Compressed: 20 bytes cannot inflate to 2 GB.
    let mut b = header(
        "1000 1000 1000",
        "MET_SHORT",
        "CompressedData = True\n",
        "LOCAL",
    )
    .into_bytes();
    b.extend(&zlib(&[0u8; 100])[..]);
    let p = file(d.path(), "bigz.mha", &b);
    expect_err(&p, &p, &["cannot inflate"]);
    // NIfTI claiming 30000^3 voxels, plain and gzipped.
    let v = Volume::filled([4, 3, 2], [1.0; 3], [0.0; 3], 1.0);
    let full = d.path().join("ok.nii");
    volume::write(&full, &v, ElementType::Short).unwrap();
    let mut b = std::fs::read(&full).unwrap();
    for k in 1..=3 {
        b[40 + 2 * k..42 + 2 * k].copy_from_slice(&30000u16.to_le_bytes());
    }
    let p = file(d.path(), "huge.nii", &b);
    expect_err(&p, &p, &["exceeds the limit"]);
    let limits = ReadLimits {
        max_voxels: usize::MAX,
        ..ReadLimits::default()
    };
    let e = volume::read_with_limits(&p, &limits)
        .unwrap_err()
        .to_string();
    assert!(e.contains("huge.nii") && e.contains("pixel data"), "{e}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&b).unwrap();
    let p = file(d.path(), "huge.nii.gz", &gz.finish().unwrap());
    let e = volume::read_with_limits(&p, &limits)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge.nii.gz") && e.contains("cannot hold"),
        "{e}"
    );
    // A tighter limit applies too.
    let small = ReadLimits {
        max_voxels: 10,
        ..ReadLimits::default()
    };
    let e = volume::read_with_limits(&full, &small)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ok.nii") && e.contains("exceeds the limit of 10"),
        "{e}"
    );
}

#[test]
fn failed_writes_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut v = Volume::filled([4, 3, 2], [1.0; 3], [0.0; 3], 1.0);
    // An existing file survives a failed overwrite.
    let p = d.path().join("keep.mha");
    volume::write(&p, &v, ElementType::Short).unwrap();
    let before = std::fs::read(&p).unwrap();
    v.data.pop();
    for name in ["keep.mha", "new.mhd", "new.nii.gz"] {
        let e = volume::write(&d.path().join(name), &v, ElementType::Short).unwrap_err();
        assert!(
            e.to_string().contains(name) && e.to_string().contains("23 voxel values"),
            "{e}"
        );
    }
    v.data.push(1.0);
    v.spacing[1] = 0.0;
    assert!(volume::write(&d.path().join("zero.mha"), &v, ElementType::Short).is_err());
    // A missing directory.
    v.spacing[1] = 1.0;
    let e = volume::write(&d.path().join("no/such/dir.mha"), &v, ElementType::Short).unwrap_err();
    assert!(e.to_string().contains("dir.mha"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep.mha"]);
}
