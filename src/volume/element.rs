//! Voxel element types (MetaImage `ElementType`) and their conversion to and from `f32`.

use std::borrow::Cow;

use rayon::prelude::*;
use serde::{Serialize, Serializer};

use crate::wide::{wide, wide_versions};

/// The on-disk type of one voxel value, named as in MetaImage (`MET_SHORT`, ...).
///
/// `Long`/`ULong` are 32-bit, as in MetaIO (`MET_LONG`); 64-bit integers are `LongLong`/`ULongLong`
/// (`MET_LONG_LONG`), which is what SimpleITK writes for `sitkInt64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// `MET_UCHAR`, u8.
    UChar,
    /// `MET_CHAR`, i8.
    Char,
    /// `MET_USHORT`, u16.
    UShort,
    /// `MET_SHORT`, i16 (the usual CT type).
    Short,
    /// `MET_UINT`, u32.
    UInt,
    /// `MET_INT`, i32.
    Int,
    /// `MET_ULONG`, u32 in MetaIO.
    ULong,
    /// `MET_LONG`, i32 in MetaIO.
    Long,
    /// `MET_ULONG_LONG`, u64.
    ULongLong,
    /// `MET_LONG_LONG`, i64.
    LongLong,
    /// `MET_FLOAT`, f32.
    Float,
    /// `MET_DOUBLE`, f64.
    Double,
}

impl ElementType {
    /// Every element type, in MetaIO order.
    pub const ALL: [ElementType; 12] = [
        ElementType::UChar,
        ElementType::Char,
        ElementType::UShort,
        ElementType::Short,
        ElementType::UInt,
        ElementType::Int,
        ElementType::ULong,
        ElementType::Long,
        ElementType::ULongLong,
        ElementType::LongLong,
        ElementType::Float,
        ElementType::Double,
    ];

    /// The MetaImage name, e.g. `MET_SHORT`.
    pub fn as_met_str(self) -> &'static str {
        match self {
            ElementType::UChar => "MET_UCHAR",
            ElementType::Char => "MET_CHAR",
            ElementType::UShort => "MET_USHORT",
            ElementType::Short => "MET_SHORT",
            ElementType::UInt => "MET_UINT",
            ElementType::Int => "MET_INT",
            ElementType::ULong => "MET_ULONG",
            ElementType::Long => "MET_LONG",
            ElementType::ULongLong => "MET_ULONG_LONG",
            ElementType::LongLong => "MET_LONG_LONG",
            ElementType::Float => "MET_FLOAT",
            ElementType::Double => "MET_DOUBLE",
        }
    }

    /// Parses a MetaImage name such as `MET_SHORT`; `None` for anything else.
    pub fn from_met_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_met_str() == s)
    }

    /// Bytes per value.
    pub fn size_of(self) -> usize {
        match self {
            ElementType::UChar | ElementType::Char => 1,
            ElementType::UShort | ElementType::Short => 2,
            ElementType::UInt
            | ElementType::Int
            | ElementType::ULong
            | ElementType::Long
            | ElementType::Float => 4,
            ElementType::ULongLong | ElementType::LongLong | ElementType::Double => 8,
        }
    }

    /// True for the integer types.
    pub fn is_integer(self) -> bool {
        !matches!(self, ElementType::Float | ElementType::Double)
    }
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_met_str())
    }
}

impl std::str::FromStr for ElementType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_met_str(s).ok_or_else(|| format!("unknown element type `{s}`"))
    }
}

impl Serialize for ElementType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_met_str())
    }
}

/// Values per parallel task: large enough that rayon's overhead is negligible.
const PAR_CHUNK: usize = 1 << 16;

macro_rules! decode_as {
    ($t:ty, $src:expr, $out:expr, $msb:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        if $msb {
            for (o, b) in $out.iter_mut().zip($src.chunks_exact(N)) {
                let mut a = [0u8; N];
                a.copy_from_slice(b);
                *o = <$t>::from_be_bytes(a) as f32;
            }
        } else {
            for (o, b) in $out.iter_mut().zip($src.chunks_exact(N)) {
                let mut a = [0u8; N];
                a.copy_from_slice(b);
                *o = <$t>::from_le_bytes(a) as f32;
            }
        }
    }};
}

/// Converts raw values to `f32` on one thread. `src` must hold `out.len()` values.
pub(crate) fn decode_serial(ty: ElementType, src: &[u8], msb: bool, out: &mut [f32]) {
    debug_assert_eq!(src.len(), out.len() * ty.size_of());
    match ty {
        ElementType::UChar => {
            for (o, &b) in out.iter_mut().zip(src) {
                *o = b as f32;
            }
        }
        ElementType::Char => {
            for (o, &b) in out.iter_mut().zip(src) {
                *o = b as i8 as f32;
            }
        }
        ElementType::UShort => decode_as!(u16, src, out, msb),
        // The common CT case: a plain loop over 2-byte pairs that the compiler vectorises.
        ElementType::Short => decode_as!(i16, src, out, msb),
        ElementType::UInt | ElementType::ULong => decode_as!(u32, src, out, msb),
        ElementType::Int | ElementType::Long => decode_as!(i32, src, out, msb),
        ElementType::ULongLong => decode_as!(u64, src, out, msb),
        ElementType::LongLong => decode_as!(i64, src, out, msb),
        ElementType::Float => decode_as!(f32, src, out, msb),
        ElementType::Double => decode_as!(f64, src, out, msb),
    }
}

/// Converts raw values (`out.len()` of them, byte order `msb`) to `f32`, in parallel when large.
pub(crate) fn decode(ty: ElementType, src: &[u8], msb: bool, out: &mut [f32]) {
    let n = ty.size_of();
    if out.len() <= PAR_CHUNK {
        decode_serial(ty, src, msb, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(src.par_chunks(PAR_CHUNK * n))
            .for_each(|(o, s)| decode_serial(ty, s, msb, o));
    }
}

macro_rules! encode_as {
    ($t:ty, $src:expr, $out:expr, $msb:expr, $conv:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        let conv = $conv;
        for (o, &v) in $out.chunks_exact_mut(N).zip($src) {
            let x: $t = conv(v);
            o.copy_from_slice(&if $msb {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            });
        }
    }};
}

wide_versions! {
    encode_serial(ty: ElementType, src: &[f32], msb: bool, out: &mut [u8]);
}

/// Converts `f32` values to the raw bytes of `ty`, one thread. Integer targets round half away
/// from zero and saturate at the type's range (Rust's `as` saturates float-to-int; NaN becomes 0).
/// Inlined into its wider versions, where rounding is inline vector code rather than a libm call
/// per value.
#[inline(always)]
fn encode_serial(ty: ElementType, src: &[f32], msb: bool, out: &mut [u8]) {
    match ty {
        ElementType::UChar => encode_as!(u8, src, out, msb, |v: f32| v.round() as u8),
        ElementType::Char => encode_as!(i8, src, out, msb, |v: f32| v.round() as i8),
        ElementType::UShort => encode_as!(u16, src, out, msb, |v: f32| v.round() as u16),
        ElementType::Short => encode_as!(i16, src, out, msb, |v: f32| v.round() as i16),
        ElementType::UInt | ElementType::ULong => {
            encode_as!(u32, src, out, msb, |v: f32| v.round() as u32)
        }
        ElementType::Int | ElementType::Long => {
            encode_as!(i32, src, out, msb, |v: f32| v.round() as i32)
        }
        ElementType::ULongLong => encode_as!(u64, src, out, msb, |v: f32| v.round() as u64),
        ElementType::LongLong => encode_as!(i64, src, out, msb, |v: f32| v.round() as i64),
        ElementType::Float => encode_as!(f32, src, out, msb, |v: f32| v),
        ElementType::Double => encode_as!(f64, src, out, msb, |v: f32| v as f64),
    }
}

/// Converts `f32` values to the raw bytes of `ty` (rounding and saturating), in parallel.
pub(crate) fn encode(ty: ElementType, src: &[f32], msb: bool) -> Vec<u8> {
    let n = ty.size_of();
    let mut out = vec![0u8; src.len() * n];
    out.par_chunks_mut(PAR_CHUNK * n)
        .zip(src.par_chunks(PAR_CHUNK))
        .for_each(|(o, s)| wide!(encode_serial(ty, s, msb, o)));
    out
}

/// A voxel type volumes hold in memory: `f32` (images) or `u8` (label maps such as the lung
/// mask, a quarter of the memory).
pub trait Voxel: Copy + Send + Sync + 'static {
    /// The value as `f32`.
    fn to_f32(self) -> f32;
    /// `data` as the raw bytes of `ty` (big-endian if `msb`), borrowed where it already is.
    fn raw_bytes(data: &[Self], ty: ElementType, msb: bool) -> Cow<'_, [u8]>;
}

impl Voxel for f32 {
    fn to_f32(self) -> f32 {
        self
    }

    fn raw_bytes(data: &[f32], ty: ElementType, msb: bool) -> Cow<'_, [u8]> {
        if ty == ElementType::Float && msb == cfg!(target_endian = "big") {
            Cow::Borrowed(bytemuck::cast_slice(data))
        } else {
            Cow::Owned(encode(ty, data, msb))
        }
    }
}

impl Voxel for u8 {
    fn to_f32(self) -> f32 {
        f32::from(self)
    }

    fn raw_bytes(data: &[u8], ty: ElementType, msb: bool) -> Cow<'_, [u8]> {
        if ty == ElementType::UChar {
            Cow::Borrowed(data)
        } else {
            let values: Vec<f32> = data.par_iter().map(|&v| f32::from(v)).collect();
            Cow::Owned(encode(ty, &values, msb))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ElementType::ALL {
            assert_eq!(ElementType::from_met_str(t.as_met_str()), Some(t));
        }
        assert_eq!(ElementType::from_met_str("MET_HALF"), None);
    }

    #[test]
    fn encode_rounds_and_saturates() {
        let v = [-1.5f32, -0.4, 0.5, 2.5, 300.0, f32::NAN];
        assert_eq!(
            encode(ElementType::UChar, &v, false),
            vec![0, 0, 1, 3, 255, 0]
        );
        let b = encode(ElementType::Short, &[40000.0, -40000.0, -2.5], true);
        assert_eq!(b, [0x7f, 0xff, 0x80, 0x00, 0xff, 0xfd]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wide_encoding_is_the_baseline_bit_for_bit() {
        // Halves (rounded away from zero), saturation, NaN, infinities, and many ordinary values.
        let mut v = vec![
            -2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 255.5, 256.0, -129.5, 32767.5,
        ];
        v.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e20,
            -1e20,
            0.49999997,
        ]);
        v.extend((0..1000).map(|i| (i as f32 - 500.0) * 0.37));
        for ty in ElementType::ALL {
            for msb in [false, true] {
                let mut base = vec![0u8; v.len() * ty.size_of()];
                encode_serial(ty, &v, msb, &mut base);
                let mut wide = vec![0u8; base.len()];
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    unsafe { wide_fns::encode_serial::avx2(ty, &v, msb, &mut wide) };
                    assert_eq!(wide, base, "{ty:?} AVX2");
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { wide_fns::encode_serial::avx512(ty, &v, msb, &mut wide) };
                    assert_eq!(wide, base, "{ty:?} AVX-512");
                }
            }
        }
    }

    #[test]
    fn decode_both_byte_orders() {
        let mut out = [0f32; 2];
        decode(
            ElementType::Short,
            &[0xff, 0xfe, 0x01, 0x00],
            true,
            &mut out,
        );
        assert_eq!(out, [-2.0, 256.0]);
        decode(
            ElementType::Short,
            &[0xff, 0xfe, 0x01, 0x00],
            false,
            &mut out,
        );
        assert_eq!(out, [-257.0, 1.0]);
    }
}
