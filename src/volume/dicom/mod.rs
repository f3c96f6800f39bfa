//! DICOM series input: a folder of single-frame CT slices read as one [`Volume`], as SimpleITK's
//! `ImageSeriesReader` (GDCM) would read it.
//!
//! Parsing and pixel data decoding are the dicom-rs crates' (`dicom-object`, `dicom-pixeldata`);
//! this module chooses the files, checks that they form one regular series and lays the slices
//! out with ITK's geometry:
//!
//! - files are recognised by content (`DICM` at byte 128), whatever their names; the folder's
//!   other files (and sub-folders) are ignored;
//! - slices are grouped by `SeriesInstanceUID`; images of another size or orientation than most of
//!   the series (localizers, scouts) and series whose `ImageType` says `LOCALIZER` are dropped with
//!   a warning; two remaining series are an error listing them;
//! - slices are ordered by `ImagePositionPatient` projected on the slice normal (the cross product
//!   of the row and column cosines of `ImageOrientationPatient`), ascending, as GDCM sorts them;
//!   never by file name or `InstanceNumber`;
//! - geometry as ITK: x along the row cosine with spacing `PixelSpacing[1]`, y along the column
//!   cosine with spacing `PixelSpacing[0]`, z along the slice normal; the origin is the first
//!   slice's position and the slice spacing `|last - first| / (n - 1)` (what
//!   `itk::ImageSeriesReader` computes). Slices must be evenly spaced (each gap
//!   within [`SPACING_TOLERANCE`] of that spacing, so position jitter is fine) and stacked along
//!   their normal (no gantry-tilt shear beyond [`SHEAR_TOLERANCE`]): a missing slice or uneven
//!   spacing is refused with the gap, where ITK would silently misplace slices;
//! - values are `stored * RescaleSlope + RescaleIntercept` per slice (f32 Hounsfield units),
//!   stored values taken from their `BitsStored` bits below `HighBit` and sign-extended when
//!   `PixelRepresentation` is 1, as GDCM does. Padding values are not treated specially, as in
//!   SimpleITK.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::header::HasLength;
use dicom_core::{DicomValue, PrimitiveValue, Tag};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;

mod lengths;

use super::element::ElementType;
use super::error::VolumeError;
use super::limits::{alloc_voxels, check_voxels, ReadLimits};
use super::Volume;

/// Largest accepted deviation of one slice gap from the series' spacing, relative to it.
/// Rounded or jittering positions (under 1% of the spacing) pass; a missing slice (a gap twice
/// the spacing) or a change of slice spacing within the series does not.
pub const SPACING_TOLERANCE: f64 = 0.05;

/// Largest accepted angle (radians) between the slice normal and the line from the first to
/// the last slice position. A larger angle is a sheared stack (gantry tilt recorded in the
/// positions only), which a direction matrix cannot describe.
pub const SHEAR_TOLERANCE: f64 = 0.01;

/// The transfer syntaxes read, with their names.
pub const SUPPORTED_TRANSFER_SYNTAXES: [(&str, &str); 6] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.57", "JPEG Lossless (Process 14)"),
    (
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless (Process 14, First-Order Prediction)",
    ),
];

/// Names of transfer syntaxes that are refused, for the error message.
const REFUSED_TRANSFER_SYNTAXES: [(&str, &str); 9] = [
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)"),
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (lossy)"),
    ("1.2.840.10008.1.2.4.51", "JPEG Extended (lossy)"),
    ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
    ("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless"),
    ("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless"),
    ("1.2.840.10008.1.2.4.91", "JPEG 2000"),
    (
        "1.2.840.10008.1.2.1.98",
        "Encapsulated Uncompressed Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.4.100", "MPEG2"),
];

/// True when `path` is a regular file with the DICOM marker `DICM` at byte 128 (a DICOM Part 10
/// file), whatever its name.
pub fn is_dicom_file(path: &Path) -> bool {
    // Opening a FIFO would block: only regular files (after symbolic links) are looked into.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 132];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// True when the folder `dir` directly holds at least one DICOM file (see [`is_dicom_file`]).
pub fn folder_has_dicom(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| is_dicom_file(&e.path()))
    })
}

/// A DICOM series read from a folder.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    /// The volume, in Hounsfield units.
    pub volume: Volume,
    /// The element type SimpleITK reports for the series (GDCM's choice after rescaling).
    pub element_type: ElementType,
    /// The slice files, in slice (z) order.
    pub files: Vec<PathBuf>,
    /// Images or series that were left out (localizers), and other remarks, one line each.
    pub warnings: Vec<String>,
}

/// The header fields of one slice that the reader uses.
#[derive(Debug, Clone)]
struct Slice {
    path: PathBuf,
    series_uid: String,
    series_description: String,
    localizer: bool,
    transfer_syntax: String,
    rows: usize,
    cols: usize,
    /// `PixelSpacing`: between rows (along y), then between columns (along x).
    pixel_spacing: [f64; 2],
    /// Row cosine (direction of x), then column cosine (direction of y), normalised.
    orientation: [[f64; 3]; 2],
    position: [f64; 3],
    slope: f64,
    intercept: f64,
    /// `SpacingBetweenSlices`, used (as by GDCM) only for a series of one slice.
    spacing_between_slices: Option<f64>,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
}

/// Reads the DICOM series in `dir` (see the module documentation), enforcing `limits` before any
/// pixel data is decoded.
pub fn read_series(dir: &Path, limits: &ReadLimits) -> Result<DicomSeries, VolumeError> {
    let mut warnings = Vec::new();
    let slices = scan_folder(dir, &mut warnings)?;
    let slices = choose_series(dir, slices, &mut warnings)?;
    let slices = drop_odd_images(dir, slices, &mut warnings)?;
    let (slices, geometry) = order_and_measure(dir, slices)?;

    let [rows, cols] = [slices[0].rows, slices[0].cols];
    let voxels = check_voxels(dir, &[cols, rows, slices.len()], limits)?;
    let mut data = alloc_voxels(voxels);
    data.par_chunks_mut(rows * cols)
        .zip(slices.par_iter())
        .try_for_each(|(out, slice)| decode_slice(slice, out))?;

    let element_type = element_type(&slices);
    Ok(DicomSeries {
        volume: Volume {
            data,
            size: [cols, rows, slices.len()],
            spacing: geometry.spacing,
            origin: geometry.origin,
            direction: geometry.direction,
        },
        element_type,
        files: slices.into_iter().map(|s| s.path).collect(),
        warnings,
    })
}

/// Reads the series in `dir` as [`super::read`] does for a folder: warnings go to stderr.
pub(crate) fn read(dir: &Path, limits: &ReadLimits) -> Result<(Volume, ElementType), VolumeError> {
    let series = read_series(dir, limits)?;
    for w in &series.warnings {
        eprintln!("{}: warning: {w}", dir.display());
    }
    Ok((series.volume, series.element_type))
}

/// The headers of every DICOM image file directly in `dir`, in file name order (only so that
/// messages are reproducible; the slice order comes from the positions).
fn scan_folder(dir: &Path, warnings: &mut Vec<String>) -> Result<Vec<Slice>, VolumeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| VolumeError::io(dir, "cannot read", e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| VolumeError::io(dir, "cannot read", e))?;
        let path = entry.path();
        if is_dicom_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(VolumeError::dicom(
            dir,
            "a folder with no DICOM file (none has the DICM marker at byte 128)",
        ));
    }
    let headers: Vec<Option<Slice>> = paths
        .par_iter()
        .map(|p| read_header(p))
        .collect::<Result<_, _>>()?;
    let skipped = headers.iter().filter(|h| h.is_none()).count();
    if skipped > 0 {
        warnings.push(format!(
            "{skipped} DICOM file(s) without an image (no Rows/Columns, e.g. DICOMDIR or reports) ignored"
        ));
    }
    let slices: Vec<Slice> = headers.into_iter().flatten().collect();
    if slices.is_empty() {
        return Err(VolumeError::dicom(
            dir,
            "the folder's DICOM files hold no image",
        ));
    }
    Ok(slices)
}

/// Opens `path` up to (not including) its pixel data, once its element lengths are checked.
fn open_header(path: &Path) -> Result<DefaultDicomObject, VolumeError> {
    lengths::check_element_lengths(path)?;
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| open_error(path, &e))
}

/// A file that dicom-object cannot open: an unknown transfer syntax as such, else the reason.
fn open_error(path: &Path, e: &dicom_object::ReadError) -> VolumeError {
    match e {
        dicom_object::ReadError::ReadUnrecognizedTransferSyntax { uid, .. } => {
            let uid = uid.trim_end_matches('\0');
            transfer_syntax_error(path, uid)
        }
        _ => VolumeError::dicom(path, format!("not a readable DICOM file: {}", chain(e))),
    }
}

/// An error and its sources on one line (dicom-rs errors keep the detail in their sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s.replace('\n', " ")
}

/// The slice header of one file; `None` for a DICOM object that is not an image.
fn read_header(path: &Path) -> Result<Option<Slice>, VolumeError> {
    let obj = open_header(path)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let h = Header { obj: &obj, path };
    if h.opt(tags::ROWS).is_none() || h.opt(tags::COLUMNS).is_none() {
        return Ok(None);
    }
    let modality = h.string(tags::MODALITY, "Modality")?;
    if modality != "CT" {
        return Err(VolumeError::dicom(
            path,
            format!("modality is {modality}, not CT: ctgrade grades CT only"),
        ));
    }
    check_transfer_syntax(path, &ts)?;

    let rows = h.uint(tags::ROWS, "Rows")?;
    let cols = h.uint(tags::COLUMNS, "Columns")?;
    if rows == 0 || cols == 0 {
        return Err(h.bad(format!("Rows x Columns is {rows} x {cols}")));
    }
    if let Some(frames) = h.opt(tags::NUMBER_OF_FRAMES) {
        let frames: u32 = frames
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| h.bad("NumberOfFrames is not a number"))?;
        if frames != 1 {
            return Err(h.bad(format!(
                "{frames} frames in one file (enhanced multi-frame CT) are not supported; \
                 export the series as single-frame slices"
            )));
        }
    }
    let samples = h.opt_uint(tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
    let photometric = h
        .opt_string(tags::PHOTOMETRIC_INTERPRETATION)?
        .unwrap_or_default();
    if samples != 1 || !photometric.starts_with("MONOCHROME") {
        return Err(h.bad(format!(
            "{samples} samples per pixel, photometric interpretation {photometric:?}: \
             only greyscale (MONOCHROME) CT is supported"
        )));
    }
    let bits_allocated = h.uint(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let bits_stored = h.opt_uint(tags::BITS_STORED)?.unwrap_or(bits_allocated);
    let high_bit = h
        .opt_uint(tags::HIGH_BIT)?
        .unwrap_or(bits_stored.saturating_sub(1));
    if !matches!(bits_allocated, 8 | 16 | 32)
        || bits_stored == 0
        || bits_stored > bits_allocated
        || high_bit >= bits_allocated
        || high_bit + 1 < bits_stored
    {
        return Err(h.bad(format!(
            "BitsAllocated {bits_allocated}, BitsStored {bits_stored}, HighBit {high_bit} \
             (8, 16 or 32 bits allocated, stored bits within them, expected)"
        )));
    }
    let signed = match h.opt_uint(tags::PIXEL_REPRESENTATION)?.unwrap_or(0) {
        0 => false,
        1 => true,
        other => return Err(h.bad(format!("PixelRepresentation is {other} (0 or 1 expected)"))),
    };

    let pixel_spacing = h.floats::<2>(tags::PIXEL_SPACING, "PixelSpacing")?;
    if pixel_spacing.iter().any(|&s| s <= 0.0) {
        return Err(h.bad(format!("PixelSpacing {pixel_spacing:?} is not positive")));
    }
    let iop = h.floats::<6>(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient")?;
    let orientation = orientation(&iop).ok_or_else(|| {
        h.bad(format!(
            "ImageOrientationPatient {iop:?} is not two perpendicular unit vectors"
        ))
    })?;
    let position = h.floats::<3>(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?;
    let slope = h.opt_float(tags::RESCALE_SLOPE)?.unwrap_or(1.0);
    let intercept = h.opt_float(tags::RESCALE_INTERCEPT)?.unwrap_or(0.0);
    if slope == 0.0 {
        return Err(h.bad("RescaleSlope is 0"));
    }
    check_file_size(
        path,
        &ts,
        usize::from(rows) * usize::from(cols),
        bits_allocated,
    )?;
    let localizer = h
        .opt_string(tags::IMAGE_TYPE)?
        .is_some_and(|t| t.to_ascii_uppercase().contains("LOCALIZER"));

    Ok(Some(Slice {
        path: path.into(),
        series_uid: h.string(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        series_description: h.opt_string(tags::SERIES_DESCRIPTION)?.unwrap_or_default(),
        localizer,
        transfer_syntax: ts,
        rows: rows.into(),
        cols: cols.into(),
        pixel_spacing,
        orientation,
        position,
        slope,
        intercept,
        spacing_between_slices: h
            .opt_float(tags::SPACING_BETWEEN_SLICES)?
            .filter(|&s| s > 0.0),
        bits_allocated,
        bits_stored,
        high_bit,
        signed,
    }))
}

/// Refuses a file too small to hold its pixels, before any voxel memory is reserved: a few
/// bytes of header could otherwise claim 65535 x 65535 pixels. Uncompressed pixel data is in
/// the file as it is; the encodings bound how much smaller it can get (a 2-byte RLE run gives
/// at most 128 bytes, JPEG lossless at least 1 bit per sample, deflate at most 1032:1).
fn check_file_size(path: &Path, ts: &str, pixels: usize, bits: u16) -> Result<(), VolumeError> {
    let needed = (pixels as u64).saturating_mul(u64::from(bits / 8));
    let ratio = match ts {
        "1.2.840.10008.1.2.1.99" => 1032,
        "1.2.840.10008.1.2.5" => 64,
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => 32,
        _ => 1,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| VolumeError::io(path, "cannot read", e))?
        .len();
    if len.saturating_mul(ratio) < needed {
        return Err(VolumeError::dicom(
            path,
            format!(
                "the file has {len} bytes, too few for the {pixels} pixels of {bits} bits its \
                 header declares (at least {} bytes)",
                needed.div_ceil(ratio)
            ),
        ));
    }
    Ok(())
}

/// Refuses a transfer syntax that is not in [`SUPPORTED_TRANSFER_SYNTAXES`].
fn check_transfer_syntax(path: &Path, uid: &str) -> Result<(), VolumeError> {
    if SUPPORTED_TRANSFER_SYNTAXES.iter().any(|(u, _)| *u == uid) {
        return Ok(());
    }
    Err(transfer_syntax_error(path, uid))
}

/// The error for a transfer syntax that is not read.
fn transfer_syntax_error(path: &Path, uid: &str) -> VolumeError {
    let name = REFUSED_TRANSFER_SYNTAXES
        .iter()
        .find(|(u, _)| *u == uid)
        .map_or("unknown", |(_, n)| n);
    VolumeError::TransferSyntax {
        path: path.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

/// The row and column cosines of `ImageOrientationPatient`, normalised; `None` unless they are
/// non-zero and perpendicular (within 1e-3, the precision of real headers).
fn orientation(iop: &[f64; 6]) -> Option<[[f64; 3]; 2]> {
    let unit = |v: [f64; 3]| {
        let n = norm(v);
        (n > 0.5 && n < 1.5).then(|| v.map(|x| x / n))
    };
    let row = unit([iop[0], iop[1], iop[2]])?;
    let col = unit([iop[3], iop[4], iop[5]])?;
    (dot(row, col).abs() < 1e-3).then_some([row, col])
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Typed access to one file's header elements, with errors naming the file and the element.
struct Header<'a> {
    obj: &'a DefaultDicomObject,
    path: &'a Path,
}

impl Header<'_> {
    fn bad(&self, reason: impl Into<String>) -> VolumeError {
        VolumeError::dicom(self.path, reason)
    }

    fn opt(&self, tag: Tag) -> Option<&dicom_object::mem::InMemElement> {
        self.obj.element_opt(tag).ok().flatten()
    }

    fn missing(&self, name: &str) -> VolumeError {
        self.bad(format!("no {name} in the header"))
    }

    fn opt_string(&self, tag: Tag) -> Result<Option<String>, VolumeError> {
        Ok(self.opt(tag).map(|e| {
            e.to_str()
                .map(|s| {
                    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                        .to_string()
                })
                .unwrap_or_default()
        }))
    }

    fn string(&self, tag: Tag, name: &str) -> Result<String, VolumeError> {
        match self.opt_string(tag)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.missing(name)),
        }
    }

    fn opt_uint(&self, tag: Tag) -> Result<Option<u16>, VolumeError> {
        match self.opt(tag) {
            None => Ok(None),
            Some(e) => e.to_int::<u16>().map(Some).map_err(|err| {
                self.bad(format!(
                    "element {tag} is not a 16-bit unsigned number: {err}"
                ))
            }),
        }
    }

    fn uint(&self, tag: Tag, name: &str) -> Result<u16, VolumeError> {
        self.opt_uint(tag)?.ok_or_else(|| self.missing(name))
    }

    fn opt_float(&self, tag: Tag) -> Result<Option<f64>, VolumeError> {
        match self.opt(tag) {
            None => Ok(None),
            Some(e) if e.is_empty() => Ok(None),
            Some(e) => match e.to_float64() {
                Ok(v) if v.is_finite() => Ok(Some(v)),
                _ => Err(self.bad(format!("element {tag} is not a finite number"))),
            },
        }
    }

    fn floats<const N: usize>(&self, tag: Tag, name: &str) -> Result<[f64; N], VolumeError> {
        let e = self.opt(tag).ok_or_else(|| self.missing(name))?;
        let values = e.to_multi_float64().unwrap_or_default();
        match <[f64; N]>::try_from(values.as_slice()) {
            Ok(v) if v.iter().all(|x| x.is_finite()) => Ok(v),
            _ => Err(self.bad(format!(
                "{name} is not {N} finite numbers: {:?}",
                e.to_str().unwrap_or_default()
            ))),
        }
    }
}

/// Keeps the one CT series of the folder; localizer series are dropped with a warning.
fn choose_series(
    dir: &Path,
    slices: Vec<Slice>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Slice>, VolumeError> {
    // Series in order of first appearance (file name order).
    let mut series: Vec<(String, Vec<Slice>)> = Vec::new();
    for s in slices {
        match series.iter_mut().find(|(uid, _)| *uid == s.series_uid) {
            Some((_, v)) => v.push(s),
            None => series.push((s.series_uid.clone(), vec![s])),
        }
    }
    if series.len() > 1 {
        let (localizers, rest): (Vec<_>, Vec<_>) = series
            .into_iter()
            .partition(|(_, v)| v.iter().all(|s| s.localizer));
        for (uid, v) in &localizers {
            warnings.push(format!(
                "localizer series {uid} ({} image(s)) left out",
                v.len()
            ));
        }
        series = if rest.is_empty() { localizers } else { rest };
    }
    if series.len() > 1 {
        let list: Vec<String> = series
            .iter()
            .map(|(uid, v)| {
                let desc = &v[0].series_description;
                if desc.is_empty() {
                    format!("{uid} ({} files)", v.len())
                } else {
                    format!("{uid} \"{desc}\" ({} files)", v.len())
                }
            })
            .collect();
        return Err(VolumeError::dicom(
            dir,
            format!(
                "the folder holds {} CT series; put one series per folder: {}",
                series.len(),
                list.join(", ")
            ),
        ));
    }
    Ok(series.pop().map(|(_, v)| v).unwrap_or_default())
}

/// Keeps the images that share the most common size and orientation; the others (localizers,
/// scouts, reformats within the series) are dropped with a warning.
fn drop_odd_images(
    dir: &Path,
    slices: Vec<Slice>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Slice>, VolumeError> {
    // Orientations within 1e-3 (header rounding) count as the same.
    let same = |a: &Slice, b: &Slice| {
        a.rows == b.rows
            && a.cols == b.cols
            && a.orientation
                .iter()
                .flatten()
                .zip(b.orientation.iter().flatten())
                .all(|(x, y)| (x - y).abs() < 1e-3)
    };
    let mut groups: Vec<Vec<Slice>> = Vec::new();
    for s in slices {
        match groups.iter_mut().find(|g| same(&g[0], &s)) {
            Some(g) => g.push(s),
            None => groups.push(vec![s]),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut groups = groups.into_iter();
    let main = groups.next().unwrap_or_default();
    let rest: Vec<Slice> = groups.flatten().collect();
    if !rest.is_empty() {
        if rest.len() >= main.len() {
            return Err(VolumeError::dicom(
                dir,
                format!(
                    "the series mixes image sizes or orientations ({} x {} in {} files, \
                     others such as {} in {} files) with no clear majority",
                    main[0].cols,
                    main[0].rows,
                    main.len(),
                    rest[0].path.display(),
                    rest.len()
                ),
            ));
        }
        let names: Vec<String> = rest
            .iter()
            .take(3)
            .map(|s| {
                let name = s.path.file_name().unwrap_or_default().to_string_lossy();
                format!("{name} ({} x {})", s.cols, s.rows)
            })
            .collect();
        warnings.push(format!(
            "{} image(s) of another size or orientation than the series' {} x {} left out \
             (localizer/scout?): {}{}",
            rest.len(),
            main[0].cols,
            main[0].rows,
            names.join(", "),
            if rest.len() > 3 { ", ..." } else { "" }
        ));
    }
    Ok(main)
}

/// Volume geometry of an ordered series.
struct Geometry {
    spacing: [f64; 3],
    origin: [f64; 3],
    direction: [f64; 9],
}

/// Sorts the slices along their normal and derives the geometry the way ITK does, refusing
/// duplicate positions, uneven spacing and sheared stacks.
fn order_and_measure(
    dir: &Path,
    slices: Vec<Slice>,
) -> Result<(Vec<Slice>, Geometry), VolumeError> {
    let [row, col] = slices[0].orientation;
    let normal = cross(row, col);
    let mut keyed: Vec<(f64, Slice)> = slices
        .into_iter()
        .map(|s| (dot(normal, s.position), s))
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (along, slices): (Vec<f64>, Vec<Slice>) = keyed.into_iter().unzip();

    let first = &slices[0];
    let last = &slices[slices.len() - 1];
    let step = sub(last.position, first.position);
    let n = slices.len();
    // The third axis is the slice normal and the spacing the distance from the first slice to
    // the last over n - 1, as ITK 5.4 computes them.
    let (slice_spacing, third) = if n > 1 {
        let length = norm(step);
        let spacing = length / (n - 1) as f64;
        // Gaps are compared with the median gap, so that the message names the odd pair.
        let mut gaps: Vec<f64> = along.windows(2).map(|p| p[1] - p[0]).collect();
        gaps.sort_by(f64::total_cmp);
        let typical = gaps[gaps.len() / 2];
        for (i, pair) in along.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            if gap < 1e-3 * spacing.max(1e-3) {
                return Err(VolumeError::dicom(
                    dir,
                    format!(
                        "{} and {} are at the same slice position: a duplicated slice or two \
                         series with one SeriesInstanceUID",
                        slices[i].path.display(),
                        slices[i + 1].path.display()
                    ),
                ));
            }
            if (gap - typical).abs() > SPACING_TOLERANCE * typical {
                return Err(VolumeError::dicom(
                    dir,
                    format!(
                        "slices are not evenly spaced: {} and {} are {gap:.4} mm apart, most \
                         slices {typical:.4} mm (a missing slice?); uneven series are refused \
                         rather than read with misplaced slices",
                        slices[i].path.display(),
                        slices[i + 1].path.display()
                    ),
                ));
            }
        }
        // Gaps all close to the median but drifting (e.g. 2.0 mm growing to 2.2 mm).
        if (spacing - typical).abs() > SPACING_TOLERANCE * typical {
            return Err(VolumeError::dicom(
                dir,
                format!(
                    "slices are not evenly spaced: {spacing:.4} mm apart on average from the \
                     first to the last, most slices {typical:.4} mm"
                ),
            ));
        }
        let angle = (dot(step, normal) / length).clamp(-1.0, 1.0).acos();
        if angle > SHEAR_TOLERANCE {
            return Err(VolumeError::dicom(
                dir,
                format!(
                    "the slices are stacked {:.2} degrees off their normal (gantry tilt recorded \
                     only in the positions): a sheared volume is not supported",
                    angle.to_degrees()
                ),
            ));
        }
        (spacing, normal)
    } else {
        // One slice: GDCM takes SpacingBetweenSlices, or 1 (never SliceThickness).
        (first.spacing_between_slices.unwrap_or(1.0), normal)
    };
    let [row_spacing, col_spacing] = first.pixel_spacing;
    let geometry = Geometry {
        spacing: [col_spacing, row_spacing, slice_spacing],
        origin: first.position,
        direction: [
            row[0], col[0], third[0], //
            row[1], col[1], third[1], //
            row[2], col[2], third[2],
        ],
    };
    Ok((slices, geometry))
}

/// Decodes one slice's pixel data into `out` (rows x columns, x fastest) as rescaled values.
fn decode_slice(slice: &Slice, out: &mut [f32]) -> Result<(), VolumeError> {
    let path = slice.path.as_path();
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| open_error(path, &e))?;
    // The file was read twice: make sure it is still the one whose header was checked.
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0');
    check_transfer_syntax(path, ts)?;
    if ts != slice.transfer_syntax {
        return Err(VolumeError::dicom(
            path,
            "the file changed while it was read",
        ));
    }
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(VolumeError::dicom(path, "no pixel data (7FE0,0010)"));
    }
    let bytes = usize::from(slice.bits_allocated / 8);
    let expected = out.len() * bytes;
    // Uncompressed pixel data is converted from the parsed element as it is (no copy); the
    // encapsulated syntaxes (RLE, JPEG) are decoded by dicom-pixeldata first.
    let encapsulated = matches!(
        ts,
        "1.2.840.10008.1.2.5" | "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70"
    );
    let decoded;
    let bytes_view;
    let samples = if encapsulated {
        if ts == "1.2.840.10008.1.2.5" {
            check_rle(path, &obj, slice)?;
        } else {
            check_jpeg(path, &obj, slice)?;
        }
        // A decoder's panic on corrupt data (a bug upstream, found by fuzzing) is this
        // file's error, not the end of the process.
        decoded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| obj.decode_pixel_data()))
                .map_err(|_| {
                    VolumeError::dicom(path, "cannot decode the pixel data: the decoder failed")
                })?
                .map_err(|e| {
                    VolumeError::dicom(path, format!("cannot decode the pixel data: {}", chain(&e)))
                })?;
        if decoded.rows() as usize != slice.rows
            || decoded.columns() as usize != slice.cols
            || decoded.bits_allocated() != slice.bits_allocated
        {
            return Err(VolumeError::dicom(
                path,
                "the file changed while it was read",
            ));
        }
        Samples::Bytes(decoded.data())
    } else {
        match obj.element(tags::PIXEL_DATA).map(|e| e.value()) {
            Ok(DicomValue::Primitive(PrimitiveValue::U16(v))) if bytes == 2 => Samples::U16(v),
            Ok(DicomValue::Primitive(p)) => {
                bytes_view = p.to_bytes();
                Samples::Bytes(&bytes_view)
            }
            _ => {
                return Err(VolumeError::dicom(
                    path,
                    "the pixel data is encapsulated (fragments), not as its transfer syntax says",
                ))
            }
        }
    };
    let actual = match samples {
        Samples::Bytes(b) => b.len(),
        Samples::U16(v) => v.len() * 2,
    };
    // Native pixel data may carry one padding byte (even length); anything else is corrupt.
    if actual != expected && !(actual == expected + 1 && expected % 2 == 1) {
        return Err(VolumeError::DataLength {
            path: path.into(),
            what: "pixel data",
            expected: expected as u64,
            actual: actual as u64,
        });
    }
    let value = stored_to_value(slice);
    match (samples, bytes) {
        (Samples::U16(v), _) => {
            let lut = lookup_table(&value);
            for (o, &r) in out.iter_mut().zip(v) {
                *o = lut[usize::from(r)];
            }
        }
        (Samples::Bytes(data), 1) => {
            for (o, &b) in out.iter_mut().zip(data) {
                *o = value(u32::from(b)) as f32;
            }
        }
        (Samples::Bytes(data), 2) => {
            let lut = lookup_table(&value);
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = lut[usize::from(u16::from_le_bytes([b[0], b[1]]))];
            }
        }
        (Samples::Bytes(data), _) => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = value(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) as f32;
            }
        }
    }
    Ok(())
}

/// Checks RLE fragments for what dicom-rs 0.10's RLE decoder assumes and panics on otherwise (a
/// fragment under 64 bytes, a segment count or offsets outside the fragment, a segment that
/// unpacks to fewer bytes than the image has pixels): the 64-byte RLE header (segment count and
/// offsets, DICOM PS3.5 G.5) and the PackBits run lengths are read, nothing is decoded.
fn check_rle(path: &Path, obj: &DefaultDicomObject, slice: &Slice) -> Result<(), VolumeError> {
    let bad =
        |reason: String| VolumeError::dicom(path, format!("corrupt RLE pixel data: {reason}"));
    let fragments = match obj.element(tags::PIXEL_DATA).map(|e| e.value()) {
        Ok(DicomValue::PixelSequence(seq)) => seq.fragments(),
        _ => return Err(bad("the pixel data is not encapsulated".into())),
    };
    let pixels = slice.rows * slice.cols;
    let segments = usize::from(slice.bits_allocated / 8);
    if fragments.is_empty() {
        return Err(bad("no fragment".into()));
    }
    let u32_at = |f: &[u8], i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    for fragment in fragments {
        if fragment.len() < 64 {
            return Err(bad(format!(
                "a fragment of {} bytes (64 at least)",
                fragment.len()
            )));
        }
        let count = u32_at(fragment, 0) as usize;
        if !(segments..=15).contains(&count) {
            return Err(bad(format!(
                "{count} segments for {segments} byte(s) per pixel"
            )));
        }
        let mut offsets: Vec<usize> = (0..count)
            .map(|i| u32_at(fragment, 4 + 4 * i) as usize)
            .collect();
        offsets.push(fragment.len());
        for i in 0..segments {
            let Some(segment) = fragment.get(offsets[i]..offsets[i + 1]) else {
                return Err(bad(format!("segment {i} outside the fragment")));
            };
            // PackBits: n in 0..=127 copies n + 1 bytes, -127..=-1 repeats the next byte 1 - n
            // times, -128 does nothing.
            let (mut at, mut unpacked) = (0usize, 0usize);
            while at < segment.len() {
                let n = segment[at] as i8;
                at += 1;
                if n >= 0 {
                    let k = n as usize + 1;
                    unpacked += k.min(segment.len() - at);
                    at += k;
                } else if n != -128 {
                    unpacked += (1 - isize::from(n)) as usize;
                    at += 1;
                }
            }
            if unpacked < pixels {
                return Err(bad(format!(
                    "segment {i} unpacks to {unpacked} bytes, the image has {pixels} pixels"
                )));
            }
        }
    }
    Ok(())
}

/// Checks that the JPEG frame has the image's size and one 8- or 16-bit component, as dicom-rs
/// 0.10's JPEG adapter assumes when it copies the decoded frame (it panics on a larger one); the
/// frame header is read with jpeg-decoder, nothing is decoded.
fn check_jpeg(path: &Path, obj: &DefaultDicomObject, slice: &Slice) -> Result<(), VolumeError> {
    let bad =
        |reason: String| VolumeError::dicom(path, format!("corrupt JPEG pixel data: {reason}"));
    let stream: Vec<u8> = match obj.element(tags::PIXEL_DATA).map(|e| e.value()) {
        Ok(DicomValue::PixelSequence(seq)) => seq.fragments().iter().flatten().copied().collect(),
        _ => return Err(bad("the pixel data is not encapsulated".into())),
    };
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(stream));
    decoder
        .read_info()
        .map_err(|e| bad(format!("its header: {e}")))?;
    let Some(info) = decoder.info() else {
        return Err(bad("no frame header".into()));
    };
    let format_ok = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => slice.bits_allocated == 8,
        jpeg_decoder::PixelFormat::L16 => slice.bits_allocated == 16,
        _ => false,
    };
    if usize::from(info.width) != slice.cols || usize::from(info.height) != slice.rows || !format_ok
    {
        return Err(bad(format!(
            "a {} x {} {:?} frame in a {} x {} image of {} bits",
            info.width,
            info.height,
            info.pixel_format,
            slice.cols,
            slice.rows,
            slice.bits_allocated
        )));
    }
    Ok(())
}

/// Pixel samples of one slice: bytes (little endian), or 16-bit values as parsed.
#[derive(Clone, Copy)]
enum Samples<'a> {
    Bytes(&'a [u8]),
    U16(&'a [u16]),
}

/// The value of a raw sample: its `BitsStored` bits below `HighBit`, sign-extended for signed
/// pixels (GDCM discards the bits above, which may hold overlays), rescaled.
fn stored_to_value(slice: &Slice) -> impl Fn(u32) -> f64 {
    let shift = u32::from(slice.high_bit + 1 - slice.bits_stored);
    let bits = u32::from(slice.bits_stored);
    let mask: u32 = if bits == 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    let (slope, intercept, signed) = (slice.slope, slice.intercept, slice.signed);
    move |raw: u32| -> f64 {
        let v = (raw >> shift) & mask;
        let v = if signed && bits < 32 && v >> (bits - 1) == 1 {
            i64::from(v) - (1i64 << bits)
        } else if signed {
            i64::from(v as i32)
        } else {
            i64::from(v)
        };
        v as f64 * slope + intercept
    }
}

/// The value of every 16-bit raw sample: one table per slice (65536 entries) costs a quarter of
/// a 512 x 512 slice's conversions and makes the per-pixel work a load.
fn lookup_table(value: &impl Fn(u32) -> f64) -> Box<[f32; 65536]> {
    let mut lut = Box::new([0f32; 65536]);
    for (raw, v) in (0u32..).zip(lut.iter_mut()) {
        *v = value(raw) as f32;
    }
    lut
}

/// The element type SimpleITK reports: the stored type without rescaling; with an integer
/// rescale the smallest integer type holding the rescaled range of the stored bits (GDCM's
/// `Rescaler`); otherwise `Double`.
fn element_type(slices: &[Slice]) -> ElementType {
    let s = &slices[0];
    let integral = |x: f64| x.fract() == 0.0;
    let bits = u32::from(s.bits_stored);
    let (lo, hi) = if s.signed {
        (
            -(2f64.powi(bits as i32 - 1)),
            2f64.powi(bits as i32 - 1) - 1.0,
        )
    } else {
        (0.0, 2f64.powi(bits as i32) - 1.0)
    };
    if s.slope == 1.0 && s.intercept == 0.0 {
        return match (s.bits_allocated, s.signed) {
            (8, false) => ElementType::UChar,
            (8, true) => ElementType::Char,
            (16, false) => ElementType::UShort,
            (16, true) => ElementType::Short,
            (_, false) => ElementType::UInt,
            (_, true) => ElementType::Int,
        };
    }
    if !(integral(s.slope) && integral(s.intercept)) {
        return ElementType::Double;
    }
    let a = lo * s.slope + s.intercept;
    let b = hi * s.slope + s.intercept;
    let (min, max) = (a.min(b), a.max(b));
    if min >= 0.0 {
        if max <= 255.0 {
            ElementType::UChar
        } else if max <= 65535.0 {
            ElementType::UShort
        } else {
            ElementType::UInt
        }
    } else if min >= -128.0 && max <= 127.0 {
        ElementType::Char
    } else if min >= -32768.0 && max <= 32767.0 {
        ElementType::Short
    } else {
        ElementType::Int
    }
}
