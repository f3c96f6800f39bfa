#!/usr/bin/env python3
"""Golden fixtures for ctgrade's volume I/O (tests/volume_io.rs).

Writes small MetaImage and NIfTI files to tests/fixtures/volume/ -- with SimpleITK where it can
write the variant, by hand where it cannot (big-endian data, MET_LONG, header aliases, missing
CompressedDataSize, qform-only / sform-only / scaled NIfTI) -- then reads every file back with
SimpleITK and stores what it reports in tests/fixtures/volume/expected.json: size, spacing,
origin, direction (row-major), element type (MetaImage name) and the voxel values (x fastest).
It also records SimpleITK's view of the real CT tests/data/real_ct/lung1.mha.

Run from the repository root:  /work/pyenv/bin/python tools/make_volume_fixtures.py
requirements: SimpleITK==2.5.7 numpy==2.4.6
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

assert sitk.Version.VersionString() == "2.5.7", sitk.Version.VersionString()
assert np.__version__ == "2.4.6", np.__version__

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "volume"
REAL_CT = ROOT / "tests" / "data" / "real_ct" / "lung1.mha"
SIZE = (7, 5, 3)  # x, y, z
N = SIZE[0] * SIZE[1] * SIZE[2]

# A rotation about an oblique axis followed by a flip of z: a proper test of the
# row/column conventions. Columns are the axis directions (LPS).
_a, _b = 0.5, 0.3
_rz = np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]])
_rx = np.array([[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]])
DIRECTION = (_rz @ _rx @ np.diag([1.0, 1.0, -1.0]))
ORIGIN = (-120.5, 33.25, -410.75)
SPACING = (0.7, 0.9, 2.5)

# numpy dtype, SimpleITK pixel id, MetaImage name, for each type SimpleITK writes.
TYPES = [
    ("u1", sitk.sitkUInt8, "MET_UCHAR"),
    ("i1", sitk.sitkInt8, "MET_CHAR"),
    ("u2", sitk.sitkUInt16, "MET_USHORT"),
    ("i2", sitk.sitkInt16, "MET_SHORT"),
    ("u4", sitk.sitkUInt32, "MET_UINT"),
    ("i4", sitk.sitkInt32, "MET_INT"),
    ("u8", sitk.sitkUInt64, "MET_ULONG_LONG"),
    ("i8", sitk.sitkInt64, "MET_LONG_LONG"),
    ("f4", sitk.sitkFloat32, "MET_FLOAT"),
    ("f8", sitk.sitkFloat64, "MET_DOUBLE"),
]
MET_OF_PIXEL_ID = {pid: met for _, pid, met in TYPES}


def values(dtype: str, seed: int) -> np.ndarray:
    """N values of `dtype` (x fastest), including the type's extremes for integers."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -(2**40)), min(int(info.max), 2**40)
        v = rng.integers(lo, hi, size=N, endpoint=True, dtype=np.int64 if dt.kind == "i" else np.uint64)
        v = v.astype(dt)
        v[0], v[1] = info.min, info.max
    else:
        v = (rng.normal(size=N) * 1000).astype(dt)
        v[0], v[1] = -3.5e4, 0.125
    return v


def image(v: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(v.reshape(SIZE[::-1]))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(DIRECTION.ravel()))
    return img


def met_header(met: str, msb: bool, extra: str = "", data_file: str = "LOCAL",
               compressed_size=None, geometry: str | None = None) -> bytes:
    """A hand-written MetaImage header (SimpleITK's layout unless `geometry` replaces it)."""
    tm = " ".join(repr(float(x)) for x in DIRECTION.T.ravel())  # axis by axis
    if geometry is None:
        geometry = (f"TransformMatrix = {tm}\n"
                    f"Offset = {' '.join(repr(x) for x in ORIGIN)}\n"
                    f"ElementSpacing = {' '.join(repr(x) for x in SPACING)}\n")
    comp = "CompressedData = False\n"
    if compressed_size is not None:
        comp = "CompressedData = True\n" + (
            f"CompressedDataSize = {compressed_size}\n" if compressed_size >= 0 else "")
    return (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\n"
        f"BinaryDataByteOrderMSB = {msb}\n{comp}{geometry}{extra}"
        f"DimSize = {SIZE[0]} {SIZE[1]} {SIZE[2]}\nElementType = {met}\n"
        f"ElementDataFile = {data_file}\n"
    ).encode()


def nifti_header(*, datatype: int, bitpix: int, dims=(3, *SIZE, 1, 1, 1, 1),
                 pixdim=(1.0, *SPACING, 1, 1, 1, 1), qform_code=0, sform_code=0,
                 quatern=(0.0, 0.0, 0.0), qoffset=(0.0, 0.0, 0.0),
                 srow=((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0)),
                 scl=(0.0, 0.0), xyzt_units=2, endian="<") -> bytes:
    """A NIfTI-1 single-file header (348 bytes) plus an empty extension block."""
    h = struct.pack(
        endian + "i10s18sihcB8h3f4h8f3fhBB4f2i80s24s2h6f4f4f4f16s4s",
        348, b"", b"", 0, 0, b"r", 0, *dims, 0.0, 0.0, 0.0, 0, datatype, bitpix, 0,
        *pixdim, 352.0, *scl, 0, 0, xyzt_units, 0.0, 0.0, 0.0, 0.0, 0, 0,
        b"ctgrade fixture", b"", qform_code, sform_code, *quatern, *qoffset,
        *srow[0], *srow[1], *srow[2], b"", b"n+1\0",
    )
    assert len(h) == 348
    return h + b"\0\0\0\0"


def quatern_of(r: np.ndarray):
    """(b, c, d, qfac) of a rotation-or-reflection matrix, as niftilib computes them."""
    r = r.copy()
    qfac = 1.0
    if np.linalg.det(r) < 0:
        qfac = -1.0
        r[:, 2] = -r[:, 2]
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = r
    a = r11 + r22 + r33 + 1.0
    if a > 0.5:
        a = 0.5 * np.sqrt(a)
        b, c, d = 0.25 * (r32 - r23) / a, 0.25 * (r13 - r31) / a, 0.25 * (r21 - r12) / a
    else:
        xd, yd, zd = 1 + r11 - (r22 + r33), 1 + r22 - (r11 + r33), 1 + r33 - (r11 + r22)
        if xd > 1.0:
            b = 0.5 * np.sqrt(xd)
            c, d, a = 0.25 * (r12 + r21) / b, 0.25 * (r13 + r31) / b, 0.25 * (r32 - r23) / b
        elif yd > 1.0:
            c = 0.5 * np.sqrt(yd)
            b, d, a = 0.25 * (r12 + r21) / c, 0.25 * (r23 + r32) / c, 0.25 * (r13 - r31) / c
        else:
            d = 0.5 * np.sqrt(zd)
            b, c, a = 0.25 * (r13 + r31) / d, 0.25 * (r23 + r32) / d, 0.25 * (r21 - r12) / d
        if a < 0:
            b, c, d = -b, -c, -d
    return (b, c, d), qfac


def record(files: dict, name: str, path: Path, element_type: str, intended=None):
    """Reads `path` with SimpleITK and stores what it reports under `name`."""
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    assert arr.shape == SIZE[::-1], (name, arr.shape)
    flat = arr.ravel()
    if intended is not None:
        assert np.array_equal(flat, intended), name
    files[name] = {
        "file": path.name,
        "size": list(img.GetSize()),
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": list(img.GetDirection()),
        "element_type": element_type,
        "sitk_pixel_type": img.GetPixelIDTypeAsString(),
        "values": [float(x) for x in flat],
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        p.unlink()
    files = {}

    # --- MetaImage written by SimpleITK: every type, uncompressed and compressed.
    for i, (dt, pid, met) in enumerate(TYPES):
        v = values(dt, i)
        img = image(v)
        assert img.GetPixelID() == pid
        for suffix, comp in (("", False), ("_z", True)):
            p = OUT / f"sitk_{met[4:].lower()}{suffix}.mha"
            sitk.WriteImage(img, str(p), useCompression=comp)
            record(files, p.stem, p, met, v)
    v = values("i2", 100)
    for suffix, comp in (("", False), ("_z", True)):
        p = OUT / f"sitk_short{suffix}.mhd"
        sitk.WriteImage(image(v), str(p), useCompression=comp)
        record(files, p.name.replace(".", "_"), p, "MET_SHORT", v)

    # --- Big-endian data, by hand (SimpleITK always writes little endian).
    for i, (dt, met, key) in enumerate([
        ("i2", "MET_SHORT", "BinaryDataByteOrderMSB"),
        ("u2", "MET_USHORT", "BinaryDataByteOrderMSB"),
        ("i4", "MET_INT", "BinaryDataByteOrderMSB"),
        ("u4", "MET_UINT", "ElementByteOrderMSB"),
        ("i8", "MET_LONG_LONG", "BinaryDataByteOrderMSB"),
        ("f4", "MET_FLOAT", "ElementByteOrderMSB"),
        ("f8", "MET_DOUBLE", "BinaryDataByteOrderMSB"),
        ("i1", "MET_CHAR", "BinaryDataByteOrderMSB"),
    ]):
        v = values(dt, 200 + i)
        hdr = met_header(met, True).replace(b"BinaryDataByteOrderMSB", key.encode())
        p = OUT / f"msb_{met[4:].lower()}.mha"
        p.write_bytes(hdr + v.astype(">" + dt).tobytes())
        record(files, p.stem, p, met, v)
    # Compressed big-endian shorts.
    v = values("i2", 300)
    raw = zlib.compress(v.astype(">i2").tobytes(), 6)
    p = OUT / "msb_short_z.mha"
    p.write_bytes(met_header("MET_SHORT", True, compressed_size=len(raw)) + raw)
    record(files, p.stem, p, "MET_SHORT", v)

    # --- Compressed without CompressedDataSize (inline and detached .zraw).
    v = values("i2", 301)
    raw = zlib.compress(v.astype("<i2").tobytes(), 9)
    (OUT / "nosize.zraw").write_bytes(raw)
    p = OUT / "nosize.mhd"
    p.write_bytes(met_header("MET_SHORT", False, data_file="nosize.zraw", compressed_size=-1))
    record(files, "nosize_mhd", p, "MET_SHORT", v)
    # SimpleITK 2.5.7 misreads LOCAL compressed data without CompressedDataSize ("Uncompress
    # failed", garbage values), so here the oracle is the same header read as .mhd above and
    # the values written.
    p = OUT / "nosize_z.mha"
    p.write_bytes(met_header("MET_SHORT", False, compressed_size=-1) + raw)
    misread = sitk.GetArrayFromImage(sitk.ReadImage(str(p))).ravel()
    assert not np.array_equal(misread, v), "SimpleITK now reads nosize_z.mha: use record()"
    files[p.stem] = dict(files["nosize_mhd"], file=p.name, oracle="written values; SimpleITK misreads")

    # --- MET_LONG / MET_ULONG: 32-bit in MetaIO; SimpleITK never writes them.
    for i, (dt, met) in enumerate([("i4", "MET_LONG"), ("u4", "MET_ULONG")]):
        v = values(dt, 400 + i)
        p = OUT / f"{met[4:].lower()}.mha"
        p.write_bytes(met_header(met, False) + v.astype("<" + dt).tobytes())
        record(files, p.stem, p, met, v)

    # --- Header aliases (Position, Orientation, ElementSize) and extra keys.
    v = values("f4", 500)
    tm = " ".join(repr(float(x)) for x in DIRECTION.T.ravel())
    geometry = (f"Position = {' '.join(repr(x) for x in ORIGIN)}\n"
                f"Orientation = {tm}\n"
                f"ElementSize = {' '.join(repr(x) for x in SPACING)}\n")
    extra = ("CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\n"
             "ITK_InputFilterName = NrrdImageIO\nNRRD_kinds[0] = domain\n"
             "NRRD_space = left-posterior-superior\nElementNumberOfChannels = 1\n"
             "Comment = a = b = c\n")
    p = OUT / "aliases.mha"
    p.write_bytes(met_header("MET_FLOAT", False, extra=extra, geometry=geometry)
                  + v.astype("<f4").tobytes())
    record(files, p.stem, p, "MET_FLOAT", v)

    # --- NIfTI written by SimpleITK (qform and sform both SCANNER_ANAT).
    for i, (dt, met, ext) in enumerate([("i2", "MET_SHORT", ".nii"), ("f4", "MET_FLOAT", ".nii.gz"),
                                        ("u1", "MET_UCHAR", ".nii.gz")]):
        v = values(dt, 600 + i)
        p = OUT / f"sitk_{met[4:].lower()}{ext}"
        sitk.WriteImage(image(v), str(p))
        record(files, p.name.replace(".", "_"), p, met, v)

    # --- NIfTI by hand. RAS matrices from the LPS direction.
    ras = np.diag([-1.0, -1.0, 1.0]) @ DIRECTION
    ras_origin = np.array(ORIGIN) * [-1, -1, 1]
    (qb, qc, qd), qfac = quatern_of(ras)
    srow_good = tuple(tuple(list(ras[r] * SPACING) + [ras_origin[r]]) for r in range(3))
    # A different, axis-aligned transform, to see which one a reader picks.
    srow_other = ((-0.5, 0, 0, 10.0), (0, 0.75, 0, -20.0), (0, 0, 3.0, 30.0))
    srow_skewed = ((SPACING[0], 0.4, 0, 1.0), (0, SPACING[1], 0, 2.0), (0, 0, SPACING[2], 3.0))
    q = dict(quatern=(qb, qc, qd), qoffset=tuple(ras_origin),
             pixdim=(qfac, *SPACING, 1, 1, 1, 1))
    i16 = dict(datatype=4, bitpix=16)
    cases = [
        ("qform_only", dict(qform_code=1, sform_code=0, srow=srow_other, **q, **i16), "<i2", "MET_SHORT"),
        ("sform_only", dict(qform_code=0, sform_code=2, srow=srow_good, **i16), "<i2", "MET_SHORT"),
        # sform_code 2 (aligned) and a qform that disagrees: ITK keeps the qform.
        ("qform_vs_sform2", dict(qform_code=1, sform_code=2, srow=srow_other, **q, **i16), "<i2", "MET_SHORT"),
        # sform_code 1 (scanner) wins over the qform.
        ("sform1_vs_qform", dict(qform_code=1, sform_code=1, srow=srow_other, **q, **i16), "<i2", "MET_SHORT"),
        # A skewed sform is not orthonormal: the qform is used.
        ("skewed_sform", dict(qform_code=1, sform_code=1, srow=srow_skewed, **q, **i16), "<i2", "MET_SHORT"),
        ("no_xform", dict(qform_code=0, sform_code=0, srow=srow_good, **i16), "<i2", "MET_SHORT"),
        ("scaled_short", dict(qform_code=1, sform_code=0, scl=(0.5, -1024.0), **q, **i16), "<i2", "MET_FLOAT"),
        ("scaled_uchar", dict(qform_code=1, sform_code=0, scl=(2.0, 0.0), datatype=2, bitpix=8, **q), "<u1", "MET_FLOAT"),
        ("scaled_double", dict(qform_code=1, sform_code=0, scl=(1.5, 0.25), datatype=64, bitpix=64, **q), "<f8", "MET_DOUBLE"),
        ("big_endian", dict(qform_code=1, sform_code=1, srow=srow_good, endian=">", **q, **i16), ">i2", "MET_SHORT"),
        ("dim4_t1", dict(qform_code=1, sform_code=0, dims=(4, *SIZE, 1, 1, 1, 1), **q, **i16), "<i2", "MET_SHORT"),
        ("meters", dict(qform_code=1, sform_code=0, xyzt_units=1, **q, **i16), "<i2", "MET_SHORT"),
        ("int64", dict(qform_code=1, sform_code=0, datatype=1024, bitpix=64, **q), "<i8", "MET_LONG_LONG"),
    ]
    for i, (name, kw, dt, met) in enumerate(cases):
        v = values(dt[1:], 700 + i)
        if name.startswith("scaled") and dt[1] in "iu":
            intended = None  # SimpleITK returns the scaled floats
        else:
            intended = None if name.startswith("scaled") else v
        p = OUT / f"{name}.nii"
        p.write_bytes(nifti_header(**kw) + v.astype(dt).tobytes())
        record(files, name + "_nii", p, met, intended)
    # A gzip-compressed hand-written one too.
    v = values("i2", 800)
    p = OUT / "qform_only_gz.nii.gz"
    import gzip
    p.write_bytes(gzip.compress(nifti_header(qform_code=1, **q, **i16) + v.astype("<i2").tobytes()))
    record(files, "qform_only_gz_nii_gz", p, "MET_SHORT", v)

    # --- The real CT: geometry and statistics only.
    img = sitk.ReadImage(str(REAL_CT))
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    real = {
        "size": list(img.GetSize()),
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": list(img.GetDirection()),
        "sitk_pixel_type": img.GetPixelIDTypeAsString(),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
        "sum": float(arr.sum()),
        # A few voxels by (x, y, z) index.
        "samples": [[x, y, z, float(arr[z, y, x])] for x, y, z in
                    [(0, 0, 0), (256, 256, 24), (100, 300, 10), (511, 511, 47), (300, 200, 40)]],
    }

    out = {"simpleitk": sitk.Version.VersionString(), "files": files, "real_ct": real}
    (OUT / "expected.json").write_text(json.dumps(out, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(files)} fixtures, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
