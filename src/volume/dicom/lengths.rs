//! Declared element lengths checked against the file before dicom-object reads it.
//!
//! dicom-rs reserves and zero-fills an element's declared length before reading its value, so a
//! 3 KB file claiming a 4 GB element would take 4 GB and many seconds. Every defined length in a
//! DICOM file (an element's value, a sequence, an item, an encapsulated fragment) covers bytes
//! that follow it, so none may exceed what is left of the file. The check runs dicom-parser's own
//! [`DataSetReader`], the reader dicom-object builds its objects with, over a decoder that refuses
//! such a length as soon as it decodes the header: the structure (sequences, items, delimiters,
//! encapsulated pixel data) is interpreted by the same code that reads the file afterwards, not by
//! a copy of it.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use dicom_core::header::{DataElementHeader, HasLength, Length, SequenceItemHeader};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions};
use dicom_parser::stateful::decode::Error as DecodeError;
use dicom_parser::{StatefulDecode, StatefulDecoder};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::volume::error::VolumeError;

/// Deflate's best ratio: an inflated data set is at most this many times its compressed size.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Refuses a file any of whose elements (file meta group, data set, pixel data fragments) claims
/// more bytes than the file can hold. Other malformations are left to dicom-object, which reports
/// them when it opens the file.
pub(super) fn check_element_lengths(path: &Path) -> Result<(), VolumeError> {
    let io = |e| VolumeError::io(path, "cannot read", e);
    let file_len = std::fs::metadata(path).map_err(io)?.len();
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut preamble = [0u8; 132];
    if reader.read_exact(&mut preamble).is_err() || &preamble[128..] != b"DICM" {
        return Ok(());
    }
    let Some((data_start, uid)) = check_meta_group(path, &mut reader, file_len)? else {
        return Ok(());
    };
    let Some(ts) = TransferSyntaxRegistry.get(&uid) else {
        return Ok(());
    };
    let options = DataSetReaderOptions::default();
    if uid == "1.2.840.10008.1.2.1.99" {
        // A deflated data set: its elements are bounded by what the rest can inflate to.
        let limit = file_len
            .saturating_sub(data_start)
            .saturating_mul(DEFLATE_MAX_RATIO);
        let inflated = flate2::read::DeflateDecoder::new(reader);
        let Ok(decoder) = StatefulDecoder::new_with_ts(inflated, ts, 0) else {
            return Ok(());
        };
        walk(
            path,
            Bounded::new(decoder, limit, |d, _, n| d.skip_bytes(n)),
            options,
        )
    } else {
        // Positions count from the start of the file, where the decoder's seeks count from.
        let Ok(decoder) = StatefulDecoder::new_with_ts(reader, ts, data_start) else {
            return Ok(());
        };
        walk(
            path,
            Bounded::new(decoder, file_len, |d, at, n| d.seek(at + u64::from(n))),
            options,
        )
    }
}

/// Checks the file meta group (explicit VR little endian, its length given by its first
/// element) as dicom-object's `FileMetaTable` reads it; returns where the data set starts and the
/// transfer syntax UID, or `None` where dicom-object will report the group as malformed.
fn check_meta_group(
    path: &Path,
    reader: &mut BufReader<File>,
    file_len: u64,
) -> Result<Option<(u64, String)>, VolumeError> {
    let Some(explicit) = TransferSyntaxRegistry.get("1.2.840.10008.1.2.1") else {
        return Ok(None);
    };
    let Ok(mut dec) = StatefulDecoder::new_with_ts(reader, explicit, 132) else {
        return Ok(None);
    };
    let Ok(first) = dec.decode_header() else {
        return Ok(None);
    };
    if first.tag != Tag(0x0002, 0x0000) || first.len.get() != Some(4) {
        return Ok(None);
    }
    // As dicom-object reads it: 4 little-endian bytes, whatever VR the header says.
    let mut bytes = Vec::new();
    let (Ok(()), &[a, b, c, d]) = (dec.read_to_vec(4, &mut bytes), bytes.as_slice()) else {
        return Ok(None);
    };
    let group_length = u32::from_le_bytes([a, b, c, d]);
    check_length(
        path,
        first.tag,
        u64::from(group_length),
        file_len,
        dec.position(),
    )?;
    let meta_end = dec.position().saturating_add(u64::from(group_length));
    let mut uid = String::new();
    while dec.position() < meta_end {
        let Ok(header) = dec.decode_header() else {
            return Ok(None);
        };
        let Some(n) = header.len.get() else {
            return Ok(None);
        };
        check_length(path, header.tag, u64::from(n), meta_end, dec.position())?;
        if header.tag == tags::TRANSFER_SYNTAX_UID {
            // As dicom-object reads it: the bytes as text, whatever VR the header says.
            let mut bytes = Vec::new();
            if dec.read_to_vec(n, &mut bytes).is_err() {
                return Ok(None);
            }
            uid = String::from_utf8_lossy(&bytes)
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string();
        } else if dec.skip_bytes(n).is_err() {
            return Ok(None);
        }
    }
    // The data set starts where the meta group's last element ends, which may be past the
    // group length (as for dicom-object, which reads elements while short of it).
    Ok(Some((dec.position(), uid)))
}

/// Drains the data set reader; a refused length is the file's error, any other error is left to
/// dicom-object.
fn walk<D: StatefulDecode>(
    path: &Path,
    mut decoder: Bounded<D>,
    options: DataSetReaderOptions,
) -> Result<(), VolumeError> {
    for token in DataSetReader::new(&mut decoder, options) {
        if token.is_err() {
            break;
        }
    }
    match decoder.refused {
        Some(r) => Err(too_long(path, r.tag, r.len, r.remaining)),
        None => Ok(()),
    }
}

/// An element of `n` bytes at `position` must end by `bound`.
fn check_length(
    path: &Path,
    tag: Tag,
    n: u64,
    bound: u64,
    position: u64,
) -> Result<(), VolumeError> {
    let remaining = bound.saturating_sub(position);
    if n > remaining {
        return Err(too_long(path, tag, n, remaining));
    }
    Ok(())
}

/// The error for an element of `n` bytes where only `remaining` are left.
fn too_long(path: &Path, tag: Tag, n: u64, remaining: u64) -> VolumeError {
    VolumeError::dicom(
        path,
        format!(
            "element {tag} claims {n} bytes but only {remaining} remain: the file is cut short \
             or corrupt"
        ),
    )
}

/// A length refused by [`Bounded`].
#[derive(Debug, Clone, Copy)]
struct Refused {
    tag: Tag,
    len: u64,
    remaining: u64,
}

/// Passes over `n` bytes of a value starting at `at`: a seek where the source allows it, so that
/// pixel data is not read, else reading and discarding.
type Skip<D> = fn(&mut D, u64, u32) -> Result<(), DecodeError>;

/// A stateful decoder that refuses every defined length beyond `limit` (where the data ends, in
/// the decoder's positions) as soon as the header is decoded, and passes over the pixel data's
/// bytes instead of reading them. Everything else is the inner decoder's, so the data set reader
/// on top of it walks the data set exactly as it walks it for dicom-object.
struct Bounded<D> {
    inner: D,
    limit: u64,
    skip: Skip<D>,
    /// Bytes passed over that the inner decoder has not counted (a seek does not count).
    uncounted: u64,
    refused: Option<Refused>,
}

impl<D: StatefulDecode> Bounded<D> {
    fn new(inner: D, limit: u64, skip: Skip<D>) -> Self {
        Bounded {
            inner,
            limit,
            skip,
            uncounted: 0,
            refused: None,
        }
    }

    /// Refuses `len` for `tag` when it exceeds what is left; the error only stops the data set
    /// reader, the reason is kept in `self.refused`.
    fn check(&mut self, tag: Tag, len: Length) -> Result<(), DecodeError> {
        let Some(n) = len.get() else {
            return Ok(());
        };
        let position = self.position();
        let remaining = self.limit.saturating_sub(position);
        if u64::from(n) <= remaining {
            return Ok(());
        }
        self.refused = Some(Refused {
            tag,
            len: u64::from(n),
            remaining,
        });
        Err(DecodeError::ReadValueData {
            position,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "declared length beyond the end of the data",
            ),
            backtrace: snafu::GenerateImplicitData::generate(),
        })
    }

    /// Passes over `n` bytes, counting them as read.
    fn pass_over(&mut self, n: u32) -> Result<(), DecodeError> {
        let (before, at) = (self.inner.position(), self.position());
        (self.skip)(&mut self.inner, at, n)?;
        self.uncounted += u64::from(n) - (self.inner.position() - before);
        Ok(())
    }
}

impl<D: StatefulDecode> StatefulDecode for Bounded<D> {
    type Reader = D::Reader;

    fn decode_header(&mut self) -> Result<DataElementHeader, DecodeError> {
        let header = self.inner.decode_header()?;
        // Items and delimiters decoded here are plain elements to the reader (it decodes
        // structure with `decode_item_header`); a sequence's defined length also covers bytes
        // that follow, so every defined length is checked.
        self.check(header.tag, header.len)?;
        Ok(header)
    }

    fn decode_item_header(&mut self) -> Result<SequenceItemHeader, DecodeError> {
        let header = self.inner.decode_item_header()?;
        if let SequenceItemHeader::Item { len } = header {
            self.check(Tag(0xFFFE, 0xE000), len)?;
        }
        Ok(header)
    }

    fn read_value(&mut self, header: &DataElementHeader) -> Result<PrimitiveValue, DecodeError> {
        if let Some(n) = self.native_pixel_data(header) {
            return self.skip_value(header, n);
        }
        self.inner.read_value(header)
    }

    fn read_value_preserved(
        &mut self,
        header: &DataElementHeader,
    ) -> Result<PrimitiveValue, DecodeError> {
        if let Some(n) = self.native_pixel_data(header) {
            return self.skip_value(header, n);
        }
        self.inner.read_value_preserved(header)
    }

    fn read_value_bytes(
        &mut self,
        header: &DataElementHeader,
    ) -> Result<PrimitiveValue, DecodeError> {
        if let Some(n) = self.native_pixel_data(header) {
            return self.skip_value(header, n);
        }
        self.inner.read_value_bytes(header)
    }

    fn read_to_vec(&mut self, length: u32, vec: &mut Vec<u8>) -> Result<(), DecodeError> {
        // Encapsulated fragments: their bytes are not needed here (`read_to` reads up to
        // `length` and counts `length`, as skipping does).
        let _ = vec;
        self.pass_over(length)
    }

    fn read_u32_to_vec(&mut self, length: u32, vec: &mut Vec<u32>) -> Result<(), DecodeError> {
        self.inner.read_u32_to_vec(length, vec)
    }

    fn read_to<W>(&mut self, length: u32, out: W) -> Result<(), DecodeError>
    where
        Self: Sized,
        W: std::io::Write,
    {
        self.inner.read_to(length, out)
    }

    fn skip_bytes(&mut self, length: u32) -> Result<(), DecodeError> {
        self.inner.skip_bytes(length)
    }

    fn seek(&mut self, position: u64) -> Result<(), DecodeError>
    where
        Self::Reader: Seek,
    {
        self.inner.seek(position)
    }

    fn position(&self) -> u64 {
        self.inner.position() + self.uncounted
    }
}

impl<D: StatefulDecode> Bounded<D> {
    /// The length of a native (defined length, OB or OW) pixel data value, whose bytes the check
    /// does not need.
    fn native_pixel_data(&self, header: &DataElementHeader) -> Option<u32> {
        let n = header.length().get()?;
        (header.tag == tags::PIXEL_DATA && matches!(header.vr, VR::OB | VR::OW) && n > 0)
            .then_some(n)
    }

    /// Passes over a native pixel data value as dicom-parser reads it: an OW value of odd length
    /// leaves its last byte unread but counted.
    fn skip_value(
        &mut self,
        header: &DataElementHeader,
        n: u32,
    ) -> Result<PrimitiveValue, DecodeError> {
        let read = if header.vr == VR::OW { n & !1 } else { n };
        self.pass_over(read)?;
        self.uncounted += u64::from(n - read);
        Ok(PrimitiveValue::Empty)
    }
}
