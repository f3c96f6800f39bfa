//! NIfTI-1 (`.nii`, `.nii.gz`) through the `nifti` crate, with geometry converted to ITK/LPS
//! exactly as ITK's `NiftiImageIO` (SimpleITK 2.5, ITK 5.4) reports it.
//!
//! Reading: the `nifti` crate parses the header; the data are read here, bounded by the header's
//! size, so that a hostile header cannot trigger a huge allocation. Orientation rules
//! (`SetImageIOOrientationFromNIfTI`): with both `qform_code` and `sform_code` 0 the origin is 0
//! and the direction the identity; otherwise the sform wins when it is orthonormal (after
//! removing the column scales) and either the qform is unknown, or `sform_code` is
//! `SCANNER_ANAT`, or the two transforms agree; else the qform is used. The chosen 4x4 matrix
//! (RAS) gives origin `(-m03, -m13, m23)` and direction columns `normalize(-m0j, -m1j, m2j)`.
//! Spacing is `pixdim[1..=3]`; spacing and origin are scaled by the spatial unit (m, mm, um). `scl_slope`/`scl_inter` are applied
//! as ITK does (`slope * value + inter` in double); integer data with scaling reads as `Float`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use ndarray::{Array3, ShapeBuilder};
use nifti::writer::WriterOptions;
use nifti::{Endianness, NiftiHeader};
use rayon::prelude::*;

use super::element::{decode, ElementType, Voxel};
use super::error::VolumeError;
use super::limits::{alloc_voxels, check_voxels, ReadLimits};
use super::Volume;

/// gzip, like zlib, inflates to at most about 1032 times its size.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Bytes read per chunk of pixel data (a multiple of every element size).
const RAW_CHUNK: usize = 4 << 20;

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

const XFORM_UNKNOWN: i16 = 0;
const XFORM_SCANNER_ANAT: i16 = 1;

/// A 4x4 matrix of `f32`, as niftilib's `mat44`.
type Mat44 = [[f32; 4]; 4];

fn element_type(path: &Path, datatype: i16) -> Result<ElementType, VolumeError> {
    Ok(match datatype {
        2 => ElementType::UChar,
        256 => ElementType::Char,
        4 => ElementType::Short,
        512 => ElementType::UShort,
        8 => ElementType::Int,
        768 => ElementType::UInt,
        1024 => ElementType::LongLong,
        1280 => ElementType::ULongLong,
        16 => ElementType::Float,
        64 => ElementType::Double,
        other => {
            return Err(VolumeError::ElementType {
                path: path.into(),
                name: format!("NIfTI datatype {other}"),
            })
        }
    })
}

fn datatype_of(ty: ElementType) -> i16 {
    match ty {
        ElementType::UChar => 2,
        ElementType::Char => 256,
        ElementType::Short => 4,
        ElementType::UShort => 512,
        ElementType::Int | ElementType::Long => 8,
        ElementType::UInt | ElementType::ULong => 768,
        ElementType::LongLong => 1024,
        ElementType::ULongLong => 1280,
        ElementType::Float => 16,
        ElementType::Double => 64,
    }
}

/// niftilib's `nifti_quatern_to_mat44` (double arithmetic, `f32` result).
#[allow(clippy::too_many_arguments)]
fn quatern_to_mat44(
    qb: f32,
    qc: f32,
    qd: f32,
    qx: f32,
    qy: f32,
    qz: f32,
    dx: f32,
    dy: f32,
    dz: f32,
    qfac: f32,
) -> Mat44 {
    let (mut b, mut c, mut d) = (qb as f64, qc as f64, qd as f64);
    let mut a = 1.0 - (b * b + c * c + d * d);
    if a < 1e-7 {
        a = 1.0 / (b * b + c * c + d * d).sqrt();
        b *= a;
        c *= a;
        d *= a;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let xd = if dx > 0.0 { dx as f64 } else { 1.0 };
    let yd = if dy > 0.0 { dy as f64 } else { 1.0 };
    let mut zd = if dz > 0.0 { dz as f64 } else { 1.0 };
    if qfac < 0.0 {
        zd = -zd;
    }
    [
        [
            ((a * a + b * b - c * c - d * d) * xd) as f32,
            (2.0 * (b * c - a * d) * yd) as f32,
            (2.0 * (b * d + a * c) * zd) as f32,
            qx,
        ],
        [
            (2.0 * (b * c + a * d) * xd) as f32,
            ((a * a + c * c - b * b - d * d) * yd) as f32,
            (2.0 * (c * d - a * b) * zd) as f32,
            qy,
        ],
        [
            (2.0 * (b * d - a * c) * xd) as f32,
            (2.0 * (c * d + a * b) * yd) as f32,
            ((a * a + d * d - c * c - b * b) * zd) as f32,
            qz,
        ],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn good(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Column `j` of the 3x3 part, normalised in `f32` as vnl does.
fn unit_column(m: &Mat44, j: usize) -> [f32; 3] {
    let c = [m[0][j], m[1][j], m[2][j]];
    let n = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
    if n == 0.0 {
        c
    } else {
        [c[0] / n, c[1] / n, c[2] / n]
    }
}

/// ITK's `sform_decomposable_without_skew`: an affine sform whose normalised 3x3 is orthonormal.
fn sform_orthonormal(s: &Mat44) -> bool {
    if s[3] != [0.0, 0.0, 0.0, 1.0] {
        return false;
    }
    let cols = [unit_column(s, 0), unit_column(s, 1), unit_column(s, 2)];
    // R * R^T: entry (i, k) = sum_j R[i][j] R[k][j], with R[i][j] = cols[j][i].
    (0..3).all(|i| {
        (0..3).all(|k| {
            let v: f32 = (0..3).map(|j| cols[j][i] * cols[j][k]).sum();
            let target = if i == k { 1.0 } else { 0.0 };
            (v - target).abs() <= 1e-4
        })
    })
}

/// ITK's first test: the two matrices agree element by element.
fn similar(s: &Mat44, q: &Mat44) -> bool {
    let rot = (0..3).all(|i| (0..3).all(|j| (s[i][j] - q[i][j]).abs() <= 1e-5));
    let trans: f32 = (0..4).map(|i| (s[i][3] - q[i][3]).abs()).sum();
    let bottom: f32 = (0..4).map(|j| (s[3][j] - q[3][j]).abs()).sum();
    rot && trans <= 1e-7 && bottom <= 1e-7
}

/// ITK's SVD comparison of two orthonormal-times-scale matrices, done directly: equal unit
/// columns, equal column lengths and equal offsets to 1e-4 (what the SVD test amounts to for
/// the orthonormal sforms that reach it).
fn very_similar(s: &Mat44, q: &Mat44) -> bool {
    let len = |m: &Mat44, j: usize| (0..3).map(|i| m[i][j] * m[i][j]).sum::<f32>().sqrt();
    let mut ls = [len(s, 0), len(s, 1), len(s, 2)];
    let mut lq = [len(q, 0), len(q, 1), len(q, 2)];
    ls.sort_by(f32::total_cmp);
    lq.sort_by(f32::total_cmp);
    let spacing = ls.iter().zip(&lq).all(|(a, b)| (a - b).abs() <= 1e-4);
    let rotation = (0..3).all(|j| {
        let (a, b) = (unit_column(s, j), unit_column(q, j));
        (0..3).all(|i| (a[i] - b[i]).abs() <= 1e-4)
    });
    let offsets = (0..3).all(|i| (s[i][3] - q[i][3]).abs() <= 1e-4);
    spacing && rotation && offsets
}

/// Origin and direction (LPS) from the header, as ITK computes them.
fn geometry(
    path: &Path,
    h: &NiftiHeader,
    d: [f32; 3],
) -> Result<([f64; 3], [f64; 9]), VolumeError> {
    let qcode = h.qform_code.max(0);
    let scode = h.sform_code.max(0);
    if qcode == XFORM_UNKNOWN && scode == XFORM_UNKNOWN {
        return Ok(([0.0; 3], super::IDENTITY));
    }
    let qto = if qcode > 0 {
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        quatern_to_mat44(
            good(h.quatern_b),
            good(h.quatern_c),
            good(h.quatern_d),
            good(h.quatern_x),
            good(h.quatern_y),
            good(h.quatern_z),
            d[0],
            d[1],
            d[2],
            qfac,
        )
    } else {
        let mut m = [[0.0; 4]; 4];
        m[0][0] = d[0];
        m[1][1] = d[1];
        m[2][2] = d[2];
        m[3][3] = 1.0;
        m
    };
    // niftilib leaves sto_xyz all zero when sform_code is 0.
    let sto = if scode > 0 {
        [h.srow_x, h.srow_y, h.srow_z, [0.0, 0.0, 0.0, 1.0]]
    } else {
        [[0.0; 4]; 4]
    };
    let mut prefer_sform = similar(&sto, &qto);
    if (!prefer_sform || scode != XFORM_UNKNOWN) && sform_orthonormal(&sto) {
        // The sform wins when the qform is unknown or the sform is SCANNER_ANAT.
        if (qcode == XFORM_UNKNOWN && scode != XFORM_UNKNOWN) || scode == XFORM_SCANNER_ANAT {
            prefer_sform = true;
        } else if qcode != XFORM_UNKNOWN && scode != XFORM_UNKNOWN {
            prefer_sform = very_similar(&sto, &qto);
        }
    }
    let m = if prefer_sform {
        sto
    } else if qcode != XFORM_UNKNOWN {
        qto
    } else {
        return Err(VolumeError::header(
            path,
            "the sform is not orthonormal and there is no qform (ITK rejects such files)",
        ));
    };
    let origin = [-(m[0][3] as f64), -(m[1][3] as f64), m[2][3] as f64];
    let mut dir = [0.0f64; 9];
    for j in 0..3 {
        // RAS -> LPS: negate the first two rows.
        let c = [-(m[0][j] as f64), -(m[1][j] as f64), m[2][j] as f64];
        let n = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        for i in 0..3 {
            dir[i * 3 + j] = if n == 0.0 { c[i] } else { c[i] / n };
        }
    }
    Ok((origin, dir))
}

/// Reads a `.nii` or `.nii.gz` file.
pub(crate) fn read(path: &Path, limits: &ReadLimits) -> Result<(Volume, ElementType), VolumeError> {
    let gz = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".gz"));
    let file = File::open(path).map_err(|e| VolumeError::io(path, "cannot open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| VolumeError::io(path, "cannot stat", e))?
        .len();
    let mut reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file)))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let h = NiftiHeader::from_reader(&mut reader)
        .map_err(|e| VolumeError::header(path, format!("not a NIfTI-1 header: {e}")))?;
    if h.sizeof_hdr != 348 {
        return Err(VolumeError::header(
            path,
            format!("sizeof_hdr = {}, expected 348", h.sizeof_hdr),
        ));
    }
    if &h.magic != b"n+1\0" {
        return Err(VolumeError::header(
            path,
            "not a single-file NIfTI (magic is not `n+1`)",
        ));
    }

    // ITK drops trailing dimensions of size 1 above 3 (4-D files with one time point).
    let ndim = (h.dim[0] as usize).min(7);
    if h.dim[0] > 7 || ndim < 1 {
        return Err(VolumeError::header(path, format!("dim[0] = {}", h.dim[0])));
    }
    let mut real = ndim;
    while real > 3 && h.dim.get(real) == Some(&1) {
        real -= 1;
    }
    if h.intent_code == 1007 || h.intent_code == 1005 {
        // NIFTI_INTENT_VECTOR / SYMMATRIX: several values per voxel.
        return Err(VolumeError::Channels {
            path: path.into(),
            channels: h.dim[5].max(1) as usize,
        });
    }
    if real != 3 {
        return Err(VolumeError::Dimensions {
            path: path.into(),
            ndims: real,
        });
    }
    let size = [h.dim[1] as usize, h.dim[2] as usize, h.dim[3] as usize];
    if size.contains(&0) {
        return Err(VolumeError::header(
            path,
            format!("dim {:?} contains 0", size),
        ));
    }
    let ty = element_type(path, h.datatype)?;
    let voxels = check_voxels(path, &size, limits)?;
    let expected = (voxels as u64).saturating_mul(ty.size_of() as u64);
    let vox_offset = h.vox_offset;
    if !(vox_offset.is_finite() && vox_offset >= 348.0) {
        return Err(VolumeError::header(
            path,
            format!("vox_offset = {vox_offset} is before the end of the header"),
        ));
    }
    let skip = vox_offset as u64 - 348;
    if gz {
        if expected.saturating_add(vox_offset as u64)
            > file_len
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(1024)
        {
            return Err(VolumeError::Compression {
                path: path.into(),
                reason: format!(
                    "{file_len} compressed bytes cannot hold the {expected} bytes the header implies"
                ),
            });
        }
    } else if file_len.saturating_sub(vox_offset as u64) != expected || file_len < vox_offset as u64
    {
        return Err(VolumeError::DataLength {
            path: path.into(),
            what: "pixel data",
            expected,
            actual: file_len.saturating_sub(vox_offset as u64),
        });
    }
    let read_err = |e: std::io::Error| {
        if gz && e.kind() != std::io::ErrorKind::UnexpectedEof {
            VolumeError::Compression {
                path: path.into(),
                reason: format!("corrupt gzip stream: {e}"),
            }
        } else {
            VolumeError::io(path, "cannot read pixel data", e)
        }
    };
    // Skip extensions up to vox_offset.
    let skipped =
        std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink()).map_err(read_err)?;
    if skipped != skip {
        return Err(VolumeError::DataLength {
            path: path.into(),
            what: if gz {
                "decompressed header extensions"
            } else {
                "header extensions"
            },
            expected: skip,
            actual: skipped,
        });
    }

    let msb = h.endianness == Endianness::Big;
    // ITK: a slope below DBL_EPSILON means "no scaling".
    let slope = if h.scl_slope.is_finite() && (h.scl_slope as f64).abs() >= f64::EPSILON {
        h.scl_slope as f64
    } else {
        1.0
    };
    let inter = if h.scl_inter.is_finite() {
        h.scl_inter as f64
    } else {
        0.0
    };
    let rescale = slope != 1.0 || inter != 0.0;
    // Read in chunks into one reused buffer, converting each: the raw data are never in memory
    // as a whole next to the output (which would double, for `double` files triple, the peak).
    let mut out = alloc_voxels(voxels);
    let esize = ty.size_of();
    let mut buf = vec![0u8; RAW_CHUNK.min(expected as usize)];
    let mut done = 0u64;
    for dst in out.chunks_mut(RAW_CHUNK / esize) {
        let src = buf.get_mut(..dst.len() * esize).unwrap_or_default();
        let got = read_full(&mut reader, src).map_err(read_err)?;
        done += got as u64;
        if got < src.len() {
            return Err(VolumeError::DataLength {
                path: path.into(),
                what: if gz {
                    "decompressed pixel data"
                } else {
                    "pixel data"
                },
                expected,
                actual: done,
            });
        }
        if rescale && ty == ElementType::Double {
            // Scale in double before rounding to f32, as ITK does for double data.
            dst.par_iter_mut()
                .zip(src.par_chunks_exact(8))
                .for_each(|(o, b)| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let v = if msb {
                        f64::from_be_bytes(a)
                    } else {
                        f64::from_le_bytes(a)
                    };
                    *o = (v * slope + inter) as f32;
                });
        } else {
            decode(ty, src, msb, dst);
            if rescale {
                // Integers are first cast to float (ITK switches the component type to FLOAT).
                dst.par_iter_mut()
                    .for_each(|v| *v = (*v as f64 * slope + inter) as f32);
            }
        }
    }
    // Data past the end (only possible for gzip: plain files were checked by length).
    let mut extra = [0u8; 1];
    if read_full(&mut reader, &mut extra).map_err(read_err)? > 0 {
        return Err(VolumeError::DataLength {
            path: path.into(),
            what: "decompressed pixel data",
            expected,
            actual: expected + 1,
        });
    }
    let out_ty = if rescale && ty.is_integer() {
        ElementType::Float
    } else {
        ty
    };

    // niftilib replaces zero or non-finite pixdims by 1.
    let fix = |p: f32| if p == 0.0 || !p.is_finite() { 1.0 } else { p };
    let d = [fix(h.pixdim[1]), fix(h.pixdim[2]), fix(h.pixdim[3])];
    if d.iter().any(|&x| x < 0.0) {
        return Err(VolumeError::header(
            path,
            format!("negative voxel spacing pixdim = {:?}", &h.pixdim[1..4]),
        ));
    }
    let unit = match h.xyzt_units & 7 {
        1 => 1e3,
        3 => 1e-3,
        _ => 1.0,
    };
    let spacing = [d[0] as f64 * unit, d[1] as f64 * unit, d[2] as f64 * unit];
    let (origin, direction) = geometry(path, &h, d)?;
    // SimpleITK 2.5 scales the origin by the spatial unit too (checked on a file in metres).
    let origin = origin.map(|o| o * unit);
    // Found by fuzzing: a NaN in an otherwise orthonormal sform passed through to the origin.
    if origin.iter().chain(&direction).any(|x| !x.is_finite()) {
        return Err(VolumeError::header(
            path,
            format!(
                "the orientation (qform/sform) holds NaN or infinite values: origin {origin:?}, \
                 direction {direction:?}"
            ),
        ));
    }
    Ok((
        Volume {
            data: out,
            size,
            spacing,
            origin,
            direction,
        },
        out_ty,
    ))
}

/// niftilib's `nifti_mat44_to_quatern` for an orthonormal rotation `r` (rows), returning
/// (b, c, d, qfac).
fn rotation_to_quatern(r: [[f64; 3]; 3]) -> (f64, f64, f64, f64) {
    let mut r = r;
    let det =
        r[0][0] * r[1][1] * r[2][2] - r[0][0] * r[2][1] * r[1][2] - r[1][0] * r[0][1] * r[2][2]
            + r[1][0] * r[2][1] * r[0][2]
            + r[2][0] * r[0][1] * r[1][2]
            - r[2][0] * r[1][1] * r[0][2];
    let qfac = if det > 0.0 {
        1.0
    } else {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    };
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let mut a = r11 + r22 + r33 + 1.0;
    let (b, c, d);
    if a > 0.5 {
        a = 0.5 * a.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        let (mut bb, mut cc, mut dd);
        if xd > 1.0 {
            bb = 0.5 * xd.sqrt();
            cc = 0.25 * (r12 + r21) / bb;
            dd = 0.25 * (r13 + r31) / bb;
            a = 0.25 * (r32 - r23) / bb;
        } else if yd > 1.0 {
            cc = 0.5 * yd.sqrt();
            bb = 0.25 * (r12 + r21) / cc;
            dd = 0.25 * (r23 + r32) / cc;
            a = 0.25 * (r13 - r31) / cc;
        } else {
            dd = 0.5 * zd.sqrt();
            bb = 0.25 * (r13 + r31) / dd;
            cc = 0.25 * (r23 + r32) / dd;
            a = 0.25 * (r21 - r12) / dd;
        }
        if a < 0.0 {
            bb = -bb;
            cc = -cc;
            dd = -dd;
        }
        (b, c, d) = (bb, cc, dd);
    }
    (b, c, d, qfac)
}

macro_rules! typed {
    ($data:expr, $t:ty) => {
        $data
            .par_iter()
            .map(|&v| v.to_f32().round() as $t)
            .collect::<Vec<$t>>()
    };
}

/// Writes `vol` as NIfTI-1 (single file), qform and sform both `SCANNER_ANAT` as ITK writes.
pub(crate) fn write<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    ty: ElementType,
    gz: bool,
    level: u32,
) -> Result<(), VolumeError> {
    let unwritable = |reason: String| VolumeError::Unwritable {
        path: path.into(),
        reason,
    };
    if vol.size.iter().any(|&s| s > i16::MAX as usize) {
        return Err(unwritable(format!(
            "size {:?} exceeds NIfTI-1's {} per axis",
            vol.size,
            i16::MAX
        )));
    }
    // LPS -> RAS: negate the first two rows of direction and origin.
    let dl = &vol.direction;
    let mut ras = [[0.0f64; 3]; 3];
    for i in 0..3 {
        let s = if i < 2 { -1.0 } else { 1.0 };
        for j in 0..3 {
            ras[i][j] = s * dl[i * 3 + j];
        }
    }
    // Normalised columns (the rotation of the qform).
    let mut rot = ras;
    for j in 0..3 {
        let n = (0..3).map(|i| ras[i][j] * ras[i][j]).sum::<f64>().sqrt();
        if n == 0.0 {
            return Err(unwritable("direction matrix has a zero column".into()));
        }
        for row in rot.iter_mut() {
            row[j] /= n;
        }
    }
    let (b, c, d, qfac) = rotation_to_quatern(rot);
    let o = [-vol.origin[0], -vol.origin[1], vol.origin[2]];
    let sp = vol.spacing;
    let srow = |i: usize| {
        [
            (ras[i][0] * sp[0]) as f32,
            (ras[i][1] * sp[1]) as f32,
            (ras[i][2] * sp[2]) as f32,
            o[i] as f32,
        ]
    };
    let header = NiftiHeader {
        pixdim: [
            qfac as f32,
            sp[0] as f32,
            sp[1] as f32,
            sp[2] as f32,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        xyzt_units: 2 | 8, // mm, s (as ITK writes)
        qform_code: XFORM_SCANNER_ANAT,
        sform_code: XFORM_SCANNER_ANAT,
        quatern_b: b as f32,
        quatern_c: c as f32,
        quatern_d: d as f32,
        quatern_x: o[0] as f32,
        quatern_y: o[1] as f32,
        quatern_z: o[2] as f32,
        srow_x: srow(0),
        srow_y: srow(1),
        srow_z: srow(2),
        endianness: Endianness::Little,
        datatype: datatype_of(ty),
        ..NiftiHeader::default()
    };
    let [nx, ny, nz] = vol.size;
    let data = &vol.data;
    // The writer takes the array indexed [x][y][z]; ours is x-fastest, i.e. Fortran order.
    let shape = (nx, ny, nz).f();
    macro_rules! emit {
        ($v:expr, $p:expr) => {{
            let arr = Array3::from_shape_vec(shape, $v)
                .map_err(|e| unwritable(format!("bad shape: {e}")))?;
            let opts = WriterOptions::new($p)
                .reference_header(&header)
                .compress(gz);
            let opts = if gz {
                opts.compression_level(flate2::Compression::new(level.min(9)))
            } else {
                opts
            };
            opts.write_nifti(&arr)
        }};
    }
    let suffix = if gz { ".nii.gz" } else { ".nii" };
    super::output::write_atomic_with(path, suffix, |tmp| {
        let r = match ty {
            ElementType::UChar => emit!(typed!(data, u8), tmp),
            ElementType::Char => emit!(typed!(data, i8), tmp),
            ElementType::UShort => emit!(typed!(data, u16), tmp),
            ElementType::Short => emit!(typed!(data, i16), tmp),
            ElementType::UInt | ElementType::ULong => emit!(typed!(data, u32), tmp),
            ElementType::Int | ElementType::Long => emit!(typed!(data, i32), tmp),
            ElementType::ULongLong => emit!(typed!(data, u64), tmp),
            ElementType::LongLong => emit!(typed!(data, i64), tmp),
            ElementType::Float => emit!(
                data.par_iter().map(|&v| v.to_f32()).collect::<Vec<f32>>(),
                tmp
            ),
            ElementType::Double => emit!(
                data.par_iter()
                    .map(|&v| v.to_f32() as f64)
                    .collect::<Vec<f64>>(),
                tmp
            ),
        };
        r.map_err(|e| VolumeError::io(path, "cannot write", std::io::Error::other(e)))
    })
}
