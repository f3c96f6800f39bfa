//! MetaImage (`.mha` with `ElementDataFile = LOCAL`, `.mhd` with a separate `.raw`/`.zraw` file).
//!
//! Follows MetaIO / ITK's `MetaImageIO` as SimpleITK uses it: `TransformMatrix` lists the direction
//! matrix column by column (axis by axis), `Offset` is the origin, `MET_LONG` is 32-bit.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use flate2::{Decompress, FlushDecompress, Status};
use rayon::prelude::*;
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Strategy};

use super::element::{decode, decode_serial, encode, ElementType, Voxel};
use super::error::VolumeError;
use super::limits::{alloc_voxels, check_regular_file, check_voxels, ReadLimits};
use super::output::{write_atomic, WriteOptions};
use super::Volume;

/// Where the pixel data of a MetaImage lives.
#[derive(Debug, Clone, PartialEq)]
enum DataFile {
    /// In the header file, right after the `ElementDataFile = LOCAL` line.
    Local,
    /// In a separate file (path already resolved against the header's directory).
    External(PathBuf),
}

/// The parsed header of a MetaImage file.
#[derive(Debug, Clone)]
struct Header {
    size: [usize; 3],
    spacing: [f64; 3],
    origin: [f64; 3],
    direction: [f64; 9],
    ty: ElementType,
    msb: bool,
    compressed: bool,
    compressed_size: Option<u64>,
    /// `HeaderSize` of an external data file: bytes to skip, or -1 for "data at the end".
    header_size: Option<i64>,
    data_file: DataFile,
    /// Byte offset of the data in the header file (for `LOCAL`).
    data_offset: u64,
}

/// A zlib stream inflates to at most about 1032 times its size (deflate's maximum ratio); a
/// header claiming more than that cannot be right, so it is rejected before any allocation.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Bytes inflated per chunk before conversion to `f32`: small enough to stay in cache.
const INFLATE_CHUNK: usize = 1 << 20;

/// Bytes read per chunk of uncompressed data (a multiple of every element size).
const RAW_CHUNK: usize = 4 << 20;

/// Chunk buffers in flight between the inflating and the converting thread.
const INFLATE_BUFFERS: usize = 4;

fn parse_bool(path: &Path, key: &str, v: &str) -> Result<bool, VolumeError> {
    // MetaIO looks at the first character only.
    match v.chars().next() {
        Some('T' | 't' | '1') => Ok(true),
        Some('F' | 'f' | '0') => Ok(false),
        _ => Err(VolumeError::header(
            path,
            format!("{key} = `{v}` is not True or False"),
        )),
    }
}

fn parse_floats<const N: usize>(path: &Path, key: &str, v: &str) -> Result<[f64; N], VolumeError> {
    let bad = || VolumeError::header(path, format!("{key} = `{v}` is not {N} finite numbers"));
    let mut out = [0.0; N];
    let mut it = v.split_whitespace();
    for o in out.iter_mut() {
        let x: f64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if !x.is_finite() {
            return Err(bad());
        }
        *o = x;
    }
    if it.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

fn parse_uint(path: &Path, key: &str, v: &str) -> Result<u64, VolumeError> {
    v.trim()
        .parse()
        .map_err(|_| VolumeError::header(path, format!("{key} = `{v}` is not a whole number")))
}

/// Parses the header text at the start of `bytes` (the first bytes of the file).
/// `complete` says whether `bytes` holds the whole file, to tell "truncated" from "too long".
fn parse_header(path: &Path, bytes: &[u8], complete: bool) -> Result<Header, VolumeError> {
    let mut ndims = None;
    let mut dim_size: Option<Vec<u64>> = None;
    let mut spacing = None;
    let mut element_size = None;
    let mut origin = None;
    let mut direction = None;
    let mut ty = None;
    let mut msb = false;
    let mut compressed = false;
    let mut compressed_size = None;
    let mut header_size = None;
    let mut channels = 1u64;
    let mut data_file = None;

    let mut pos = 0usize;
    while data_file.is_none() {
        let rest = bytes.get(pos..).unwrap_or_default();
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // The `ElementDataFile` line may end the file without a newline (then there is no
            // data, which the length check reports); any other unterminated line is a cut header.
            let line = String::from_utf8_lossy(rest);
            if complete && line.trim_start().starts_with("ElementDataFile") {
                pos = bytes.len();
                data_file = Some(line.split_once('=').map(|x| x.1.trim().to_string()));
                break;
            }
            return Err(if complete {
                VolumeError::header(path, "the header ends before `ElementDataFile`")
            } else {
                VolumeError::HeaderTooLong {
                    path: path.into(),
                    reason: format!(
                        "no `ElementDataFile` line in the first {} bytes",
                        bytes.len()
                    ),
                }
            });
        };
        let line = String::from_utf8_lossy(&rest[..nl]);
        pos += nl + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(VolumeError::header(
                path,
                format!("line `{}` is not `key = value`", truncate(line)),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "ObjectType" if !value.eq_ignore_ascii_case("Image") => {
                return Err(VolumeError::header(
                    path,
                    format!("ObjectType = {value}, expected Image"),
                ));
            }
            "NDims" => ndims = Some(parse_uint(path, key, value)?),
            "DimSize" => {
                let v: Result<Vec<u64>, _> = value.split_whitespace().map(str::parse).collect();
                dim_size = Some(v.map_err(|_| {
                    VolumeError::header(path, format!("DimSize = `{value}` is not whole numbers"))
                })?);
            }
            "ElementSpacing" => spacing = Some(value.to_string()),
            "ElementSize" => element_size = Some(value.to_string()),
            "Offset" | "Position" | "Origin" => origin = Some(parse_floats::<3>(path, key, value)?),
            "TransformMatrix" | "Rotation" | "Orientation" => {
                direction = Some(parse_floats::<9>(path, key, value)?)
            }
            "ElementType" => {
                ty = Some(ElementType::from_met_str(value).ok_or_else(|| {
                    VolumeError::ElementType {
                        path: path.into(),
                        name: value.to_string(),
                    }
                })?)
            }
            "BinaryDataByteOrderMSB" | "ElementByteOrderMSB" => msb = parse_bool(path, key, value)?,
            "BinaryData" if !parse_bool(path, key, value)? => {
                return Err(VolumeError::header(
                    path,
                    "BinaryData = False (ASCII pixel data) is not supported",
                ));
            }
            "CompressedData" => compressed = parse_bool(path, key, value)?,
            "CompressedDataSize" => compressed_size = Some(parse_uint(path, key, value)?),
            "HeaderSize" => {
                header_size = Some(value.parse::<i64>().map_err(|_| {
                    VolumeError::header(path, format!("HeaderSize = `{value}` is not a number"))
                })?)
            }
            "ElementNumberOfChannels" => channels = parse_uint(path, key, value)?,
            "ElementDataFile" => data_file = Some(Some(value.to_string())),
            // CenterOfRotation, AnatomicalOrientation, ITK_*, NRRD_*, ...: not needed.
            _ => {}
        }
    }

    let ndims = ndims.ok_or_else(|| VolumeError::header(path, "missing NDims"))?;
    if ndims != 3 {
        return Err(VolumeError::Dimensions {
            path: path.into(),
            ndims: ndims as usize,
        });
    }
    if channels != 1 {
        return Err(VolumeError::Channels {
            path: path.into(),
            channels: channels as usize,
        });
    }
    let dim_size = dim_size.ok_or_else(|| VolumeError::header(path, "missing DimSize"))?;
    if dim_size.len() != 3 {
        return Err(VolumeError::header(
            path,
            format!("DimSize has {} values for NDims = 3", dim_size.len()),
        ));
    }
    if dim_size.contains(&0) {
        return Err(VolumeError::header(path, "DimSize contains 0"));
    }
    let ty = ty.ok_or_else(|| VolumeError::header(path, "missing ElementType"))?;
    // MetaIO falls back to ElementSize when ElementSpacing is absent.
    let spacing = match (spacing, element_size) {
        (Some(s), _) => parse_floats::<3>(path, "ElementSpacing", &s)?,
        (None, Some(s)) => parse_floats::<3>(path, "ElementSize", &s)?,
        (None, None) => [1.0; 3],
    };
    if spacing.iter().any(|&s| s <= 0.0) {
        return Err(VolumeError::header(
            path,
            format!("spacing {spacing:?} is not positive"),
        ));
    }
    let direction = direction.map_or(super::IDENTITY, |tm| {
        // TransformMatrix row i is the direction of axis i, i.e. column i of our matrix.
        let mut d = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                d[r * 3 + c] = tm[c * 3 + r];
            }
        }
        d
    });
    let data_file = match data_file.flatten().as_deref() {
        Some("LOCAL" | "Local" | "local") => DataFile::Local,
        Some(name) if name.starts_with("LIST") || name.contains('%') => {
            return Err(VolumeError::header(
                path,
                format!("ElementDataFile = {name}: multi-file data is not supported"),
            ));
        }
        Some(name) if !name.is_empty() => {
            let dir = path.parent().unwrap_or_else(|| Path::new(""));
            DataFile::External(dir.join(name))
        }
        _ => return Err(VolumeError::header(path, "ElementDataFile has no value")),
    };
    let size = [
        usize::try_from(dim_size[0]).unwrap_or(usize::MAX),
        usize::try_from(dim_size[1]).unwrap_or(usize::MAX),
        usize::try_from(dim_size[2]).unwrap_or(usize::MAX),
    ];
    Ok(Header {
        size,
        spacing,
        origin: origin.unwrap_or([0.0; 3]),
        direction,
        ty,
        msb,
        compressed,
        compressed_size,
        header_size,
        data_file,
        data_offset: pos as u64,
    })
}

fn truncate(s: &str) -> String {
    if s.len() > 60 {
        let end = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}...", &s[..end])
    } else {
        s.to_string()
    }
}

/// Reads a `.mha` or `.mhd` file.
pub(crate) fn read(path: &Path, limits: &ReadLimits) -> Result<(Volume, ElementType), VolumeError> {
    let mut file = File::open(path).map_err(|e| VolumeError::io(path, "cannot open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| VolumeError::io(path, "cannot stat", e))?
        .len();
    let head_len = file_len.min(limits.max_header_bytes as u64) as usize;
    let mut head = vec![0u8; head_len];
    file.read_exact(&mut head)
        .map_err(|e| VolumeError::io(path, "cannot read header", e))?;
    let h = parse_header(path, &head, head_len as u64 == file_len)?;
    drop(head);

    let voxels = check_voxels(path, &h.size, limits)?;
    let expected = (voxels as u64).saturating_mul(h.ty.size_of() as u64);

    // Position `data` at the first data byte and find how many bytes follow.
    let (data_path, mut data, avail) = match &h.data_file {
        DataFile::Local => (path.to_path_buf(), file, file_len - h.data_offset),
        DataFile::External(p) => {
            check_regular_file(path, p).map_err(|e| match e {
                // Missing or unreadable: say so as for a failed open.
                VolumeError::Io { error, .. } => VolumeError::DataFile {
                    path: path.into(),
                    data: p.clone(),
                    error,
                },
                other => other,
            })?;
            let f = File::open(p).map_err(|error| VolumeError::DataFile {
                path: path.into(),
                data: p.clone(),
                error,
            })?;
            let len = f
                .metadata()
                .map_err(|e| VolumeError::io(p, "cannot stat", e))?
                .len();
            (p.clone(), f, len)
        }
    };
    let mut start = match &h.data_file {
        DataFile::Local => h.data_offset,
        DataFile::External(_) => 0,
    };
    let mut avail = avail;
    match h.header_size {
        Some(n) if n > 0 && h.data_file != DataFile::Local => {
            let n = n as u64;
            if n > avail {
                return Err(VolumeError::DataLength {
                    path: data_path,
                    what: "data file (HeaderSize)",
                    expected: n,
                    actual: avail,
                });
            }
            start += n;
            avail -= n;
        }
        // HeaderSize = -1: the data are the last bytes of the file (uncompressed only).
        Some(-1) if !h.compressed && h.data_file != DataFile::Local && avail >= expected => {
            start += avail - expected;
            avail = expected;
        }
        _ => {}
    }
    data.seek(SeekFrom::Start(start))
        .map_err(|e| VolumeError::io(&data_path, "cannot seek", e))?;

    let out: Vec<f32> = if h.compressed {
        let csize = h.compressed_size.unwrap_or(avail);
        if csize != avail {
            return Err(VolumeError::DataLength {
                path: data_path,
                what: "compressed data",
                expected: csize,
                actual: avail,
            });
        }
        if expected > csize.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(64) {
            return Err(VolumeError::Compression {
                path: data_path,
                reason: format!(
                    "{csize} compressed bytes cannot inflate to the {expected} bytes the header implies"
                ),
            });
        }
        let mut out = alloc_voxels(voxels);
        inflate_into(&data_path, (&mut data).take(csize), h.ty, h.msb, &mut out)?;
        out
    } else {
        if avail != expected {
            return Err(VolumeError::DataLength {
                path: data_path,
                what: "pixel data",
                expected,
                actual: avail,
            });
        }
        // Read in chunks into one reused buffer and convert each (in parallel): no second
        // full-size buffer to allocate and fault in.
        let mut out = alloc_voxels(voxels);
        let esize = h.ty.size_of();
        let mut buf = vec![0u8; RAW_CHUNK.min(expected as usize)];
        let mut done = 0usize;
        for dst in out.chunks_mut(RAW_CHUNK / esize) {
            let src = buf.get_mut(..dst.len() * esize).unwrap_or_default();
            data.read_exact(src).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    // The file shrank after the length check.
                    VolumeError::DataLength {
                        path: data_path.clone(),
                        what: "pixel data",
                        expected,
                        actual: (done * esize) as u64,
                    }
                } else {
                    VolumeError::io(&data_path, "cannot read pixel data", e)
                }
            })?;
            decode(h.ty, src, h.msb, dst);
            done += dst.len();
        }
        out
    };
    Ok((
        Volume {
            data: out,
            size: h.size,
            spacing: h.spacing,
            origin: h.origin,
            direction: h.direction,
        },
        h.ty,
    ))
}

/// Inflates one zlib stream (all of `input`) into `out`, requiring exactly `out.len()` values
/// and then the end of the stream.
///
/// Inflating is the bottleneck and inherently serial, so it runs on its own thread, streaming
/// the file, while this thread converts the inflated chunks to `f32` (and takes the page faults
/// of the fresh output buffer): the critical path is the inflate alone.
fn inflate_into(
    path: &Path,
    input: impl Read + Send,
    ty: ElementType,
    msb: bool,
    out: &mut [f32],
) -> Result<(), VolumeError> {
    let esize = ty.size_of();
    let expected = out.len() * esize;
    // Buffers hold whole elements: INFLATE_CHUNK is a multiple of every element size.
    let chunk = INFLATE_CHUNK.min(expected.max(esize));
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(INFLATE_BUFFERS);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(INFLATE_BUFFERS);
    for _ in 0..INFLATE_BUFFERS {
        // Cannot fail: the receiver is alive and the channel has room.
        let _ = empty_tx.send(vec![0u8; chunk]);
    }
    std::thread::scope(|s| {
        let worker = s.spawn(move || inflate_worker(path, input, expected, empty_rx, full_tx));
        let mut done = 0usize; // values written to `out`
        for (buf, len) in full_rx {
            let n = len / esize;
            if let (Some(src), Some(dst)) = (buf.get(..n * esize), out.get_mut(done..done + n)) {
                decode_serial(ty, src, msb, dst);
            }
            done += n;
            // The worker may have finished and dropped its receiver: nothing to return then.
            let _ = empty_tx.send(buf);
        }
        drop(empty_tx);
        match worker.join() {
            Ok(result) => result,
            Err(_) => Err(VolumeError::Compression {
                path: path.into(),
                reason: "the inflate thread panicked".into(),
            }),
        }
    })
}

/// The inflate side of [`inflate_into`]: fills buffers from `empty` with exactly `expected`
/// inflated bytes in total and passes them on through `full`, then checks the stream's end.
fn inflate_worker(
    path: &Path,
    mut input: impl Read,
    expected: usize,
    empty: mpsc::Receiver<Vec<u8>>,
    full: mpsc::SyncSender<(Vec<u8>, usize)>,
) -> Result<(), VolumeError> {
    let err = |reason: String| VolumeError::Compression {
        path: path.into(),
        reason,
    };
    let mut z = Decompress::new(true);
    let mut inbuf = vec![0u8; INFLATE_CHUNK];
    let (mut in_pos, mut in_len) = (0usize, 0usize);
    let mut input_done = false;
    let mut ended = false;
    let mut produced = 0usize;

    // One step of inflating into `dst`; returns the bytes written.
    let mut step = |dst: &mut [u8],
                    z: &mut Decompress,
                    ended: &mut bool|
     -> Result<usize, VolumeError> {
        if in_pos == in_len && !input_done {
            in_len = read_some(&mut input, &mut inbuf)
                .map_err(|e| VolumeError::io(path, "cannot read compressed data", e))?;
            in_pos = 0;
            input_done = in_len == 0;
        }
        let (before_in, before_out) = (z.total_in(), z.total_out());
        let flush = if input_done {
            FlushDecompress::Finish
        } else {
            FlushDecompress::None
        };
        let status = z
            .decompress(inbuf.get(in_pos..in_len).unwrap_or_default(), dst, flush)
            .map_err(|e| err(format!("corrupt zlib stream: {e}")))?;
        in_pos += (z.total_in() - before_in) as usize;
        let got = (z.total_out() - before_out) as usize;
        *ended = status == Status::StreamEnd;
        if got == 0 && z.total_in() == before_in && !*ended && input_done {
            return Err(err(format!(
                "the stream is truncated (ends without its end marker) after {} of {expected} bytes",
                z.total_out()
            )));
        }
        Ok(got)
    };

    while produced < expected {
        let Ok(mut buf) = empty.recv() else {
            return Err(err("the converting thread stopped".into()));
        };
        let want = (expected - produced).min(buf.len());
        let mut filled = 0usize;
        while filled < want && !ended {
            filled += step(&mut buf[filled..want], &mut z, &mut ended)?;
        }
        produced += filled;
        if full.send((buf, filled)).is_err() {
            return Err(err("the converting thread stopped".into()));
        }
        if ended && produced < expected {
            return Err(err(format!(
                "the stream ends after {produced} bytes, the header implies {expected}"
            )));
        }
    }
    drop(full);
    // All expected bytes are out; now the stream must end, with nothing more to inflate.
    let mut extra = [0u8; 1];
    while !ended {
        if step(&mut extra, &mut z, &mut ended)? > 0 {
            return Err(err(format!(
                "the stream inflates past the {expected} bytes the header implies"
            )));
        }
    }
    let trailing = (in_len - in_pos) as u64
        + std::io::copy(&mut input, &mut std::io::sink())
            .map_err(|e| VolumeError::io(path, "cannot read compressed data", e))?;
    if trailing > 0 {
        return Err(err(format!(
            "{trailing} bytes follow the end of the zlib stream"
        )));
    }
    Ok(())
}

/// `read`, retrying on interruption.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Formats a number as MetaIO would read it back exactly (shortest round-trip form).
fn num(x: f64) -> String {
    format!("{x}")
}

fn header_text<T>(
    vol: &Volume<T>,
    ty: ElementType,
    compressed_size: Option<usize>,
    data_file: &str,
) -> String {
    let d = &vol.direction;
    // Column by column: row i of TransformMatrix is the direction of axis i.
    let tm: Vec<String> = (0..3)
        .flat_map(|c| (0..3).map(move |r| num(d[r * 3 + c])))
        .collect();
    let join = |v: &[f64]| v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(" ");
    let mut s = String::new();
    s.push_str(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n",
    );
    match compressed_size {
        Some(n) => s.push_str(&format!(
            "CompressedData = True\nCompressedDataSize = {n}\n"
        )),
        None => s.push_str("CompressedData = False\n"),
    }
    s.push_str(&format!("TransformMatrix = {}\n", tm.join(" ")));
    s.push_str(&format!("Offset = {}\n", join(&vol.origin)));
    s.push_str("CenterOfRotation = 0 0 0\n");
    s.push_str(&format!("ElementSpacing = {}\n", join(&vol.spacing)));
    s.push_str(&format!(
        "DimSize = {} {} {}\n",
        vol.size[0], vol.size[1], vol.size[2]
    ));
    s.push_str(&format!("ElementType = {}\n", ty.as_met_str()));
    s.push_str(&format!("ElementDataFile = {data_file}\n"));
    s
}

/// Bytes of input per independently compressed part of a zlib stream (see [`deflate`]).
const DEFLATE_PART: usize = 4 << 20;

/// Compresses `raw` into one zlib stream, its parts in parallel as pigz does: each part of
/// [`DEFLATE_PART`] bytes is raw deflate on its own, ended (all but the last) by a full flush,
/// so that the parts join byte-aligned into one valid deflate stream; the zlib header and the
/// Adler-32 of all of `raw` go around them. Any zlib reader inflates it as one stream; the parts
/// lose their back-references across part boundaries only (files grow by well under 1 %). Up to
/// one part the bytes are those of a single-threaded zlib with the same level and strategy.
fn deflate(path: &Path, raw: &[u8], level: u32, ty: ElementType) -> Result<Vec<u8>, VolumeError> {
    let level = level.min(9);
    // In float32 data LZ77 finds little besides runs of one value (the low bytes of the values
    // hardly repeat): run-length matching alone gives files within about 1 % of the default's,
    // in under half the time (the network input of `lung1.mha`: 15.55 instead of 15.39 MB).
    let strategy = match ty {
        ElementType::Float => Strategy::Rle,
        _ => Strategy::Default,
    };
    let parts = raw.len().div_ceil(DEFLATE_PART).max(1);
    let compressed = (0..parts)
        .into_par_iter()
        .map(|i| {
            let part = raw
                .get(i * DEFLATE_PART..((i + 1) * DEFLATE_PART).min(raw.len()))
                .unwrap_or_default();
            let sum = zlib_rs::adler32::adler32(1, part);
            deflate_part(part, level, strategy, i + 1 == parts).map(|c| (c, sum, part.len()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VolumeError::Unwritable {
            path: path.into(),
            reason: format!("zlib compression failed: {}", e.as_str()),
        })?;
    // The header's FLEVEL field as zlib writes it for this level (informative only).
    let flevel = match level {
        0 | 1 => 0,
        2..=5 => 1,
        6 => 2,
        _ => 3,
    };
    let cmf_flg = 0x7800u16 | (flevel << 6);
    let cmf_flg = cmf_flg + (31 - cmf_flg % 31) % 31;
    let mut out = Vec::with_capacity(6 + compressed.iter().map(|c| c.0.len()).sum::<usize>());
    out.extend_from_slice(&cmf_flg.to_be_bytes());
    let mut adler = 1;
    for (i, (c, sum, len)) in compressed.iter().enumerate() {
        out.extend_from_slice(c);
        // The checksum of all of `raw`, from the parts' own (computed in parallel).
        adler = if i == 0 {
            *sum
        } else {
            zlib_rs::adler32::adler32_combine(adler, *sum, *len as u64)
        };
    }
    out.extend_from_slice(&adler.to_be_bytes());
    Ok(out)
}

/// One part of [`deflate`]: raw deflate of `part`, finished if `last`, else ended by a full
/// flush.
fn deflate_part(
    part: &[u8],
    level: u32,
    strategy: Strategy,
    last: bool,
) -> Result<Vec<u8>, zlib_rs::DeflateError> {
    let mut config = DeflateConfig::new(level as i32);
    config.strategy = strategy;
    // Negative: raw deflate, no zlib header of its own.
    config.window_bits = -15;
    let mut z = Deflate::new_with_config(config);
    let flush = if last {
        DeflateFlush::Finish
    } else {
        DeflateFlush::FullFlush
    };
    // Room for all of it in one call (the bound of a whole stream, plus the flush's marker).
    let mut out = vec![0u8; zlib_rs::compress_bound(part.len()) + 64];
    loop {
        let (i, o) = (z.total_in() as usize, z.total_out() as usize);
        let status = z.compress(&part[i..], &mut out[o..], flush)?;
        let done = z.total_in() as usize == part.len() && (z.total_out() as usize) < out.len();
        if status == zlib_rs::Status::StreamEnd || (!last && done) {
            out.truncate(z.total_out() as usize);
            return Ok(out);
        }
        if z.total_out() as usize == out.len() {
            out.resize(out.len() * 2, 0);
        }
    }
}

/// Writes `vol` as `.mha` (data inline) or `.mhd` (data in `<stem>.zraw` / `<stem>.raw`).
pub(crate) fn write<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    ty: ElementType,
    opts: &WriteOptions,
    detached: bool,
) -> Result<(), VolumeError> {
    // float32 images and uint8 label maps are already the file's bytes: no copy.
    let raw = T::raw_bytes(&vol.data, ty, false);
    let data = if opts.compress {
        Cow::Owned(deflate(path, &raw, opts.compression_level, ty)?)
    } else {
        raw
    };
    let csize = opts.compress.then_some(data.len());
    if detached {
        let ext = if opts.compress { "zraw" } else { "raw" };
        let data_path = path.with_extension(ext);
        let data_name = data_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| VolumeError::Unwritable {
                path: path.into(),
                reason: "no file name".into(),
            })?;
        write_atomic(&data_path, |w| w.write_all(&data))?;
        let header = header_text(vol, ty, csize, &data_name);
        write_atomic(path, |w| w.write_all(header.as_bytes())).inspect_err(|_| {
            // No header, no image: do not leave its data file behind.
            let _ = std::fs::remove_file(&data_path);
        })
    } else {
        let header = header_text(vol, ty, csize, "LOCAL");
        write_atomic(path, |w| {
            w.write_all(header.as_bytes())?;
            w.write_all(&data)
        })
    }
}

/// Writes `channels` (each one value per voxel of `geometry`'s grid) as one zlib-compressed `.mha`
/// with `ElementNumberOfChannels`, the channels interleaved per voxel as MetaIO stores them.
pub(crate) fn write_channels(
    path: &Path,
    geometry: &Volume,
    channels: &[&[f32]],
    ty: ElementType,
    opts: &WriteOptions,
) -> Result<(), VolumeError> {
    let n = geometry.len();
    if channels.is_empty() || channels.iter().any(|c| c.len() != n) {
        return Err(VolumeError::Unwritable {
            path: path.into(),
            reason: format!(
                "{} channels that are not all {n} voxels long",
                channels.len()
            ),
        });
    }
    let mut interleaved = Vec::with_capacity(n * channels.len());
    for v in 0..n {
        interleaved.extend(channels.iter().map(|c| c[v]));
    }
    let raw = encode(ty, &interleaved, false);
    let data = if opts.compress {
        deflate(path, &raw, opts.compression_level, ty)?
    } else {
        raw
    };
    let csize = opts.compress.then_some(data.len());
    let header = header_text(geometry, ty, csize, "LOCAL").replace(
        "ElementType = ",
        &format!(
            "ElementNumberOfChannels = {}\nElementType = ",
            channels.len()
        ),
    );
    write_atomic(path, |w| {
        w.write_all(header.as_bytes())?;
        w.write_all(&data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_aliases_and_skips_extra_keys() {
        let text = b"ObjectType = Image\nNDims = 3\nDimSize = 2 3 4\nITK_foo = bar\n\
            Position = 1 2 3\nElementSize = 0.5 0.5 2\nElementByteOrderMSB = True\n\
            Orientation = 0 1 0 -1 0 0 0 0 1\nElementType = MET_USHORT\nElementDataFile = LOCAL\nxx";
        let h = parse_header(Path::new("a.mha"), text, true).unwrap();
        assert_eq!(h.size, [2, 3, 4]);
        assert_eq!(h.origin, [1.0, 2.0, 3.0]);
        assert_eq!(h.spacing, [0.5, 0.5, 2.0]);
        assert!(h.msb);
        // Axis x points along +y, axis y along -x.
        assert_eq!(h.direction, [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(h.ty, ElementType::UShort);
        assert_eq!(h.data_offset as usize, text.len() - 2);
    }

    #[test]
    fn element_spacing_wins_over_element_size_and_origin_alias() {
        let text = b"NDims = 3\r\nDimSize = 2 3 4\r\nElementSize = 9 9 9\r\n\
            ElementSpacing = 1 2 3\r\nOrigin = -1 -2 -3\r\nElementType = MET_FLOAT\r\n\
            ElementDataFile = LOCAL\r\n";
        let h = parse_header(Path::new("a.mha"), text, true).unwrap();
        assert_eq!(h.spacing, [1.0, 2.0, 3.0]);
        assert_eq!(h.origin, [-1.0, -2.0, -3.0]);
        assert_eq!(h.direction, crate::volume::IDENTITY);
        assert!(!h.compressed && !h.msb);
        assert_eq!(h.data_offset as usize, text.len());
    }

    #[test]
    fn parallel_deflate_is_one_zlib_stream() {
        use std::io::Read;
        // Three parts and a short last one; compressible and incompressible stretches.
        let mut rng = crate::rng::Rng::new(5);
        let raw: Vec<u8> = (0..2 * DEFLATE_PART + 12345)
            .map(|i| {
                if (i / 100_000) % 2 == 0 {
                    (i % 7) as u8
                } else {
                    (rng.uniform() * 256.0) as u8
                }
            })
            .collect();
        let runs = [0, 1, 2, 6, 9].map(|l| (l, ElementType::UChar));
        for (level, ty) in runs.into_iter().chain([(2, ElementType::Float)]) {
            let z = deflate(Path::new("x.mha"), &raw, level, ty).unwrap();
            assert_eq!(
                u16::from_be_bytes([z[0], z[1]]) % 31,
                0,
                "header check bits"
            );
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&z[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(
                back == raw,
                "level {level}, {ty:?}: the stream does not inflate to the input"
            );
        }
        // Up to one part, the bytes of single-threaded zlib.
        let small = &raw[..100_000];
        let mut one = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(2));
        one.write_all(small).unwrap();
        assert_eq!(
            deflate(Path::new("x.mha"), small, 2, ElementType::Short).unwrap(),
            one.finish().unwrap()
        );
    }
}
