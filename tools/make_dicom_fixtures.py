#!/usr/bin/env python3
"""Golden fixtures for ctgrade's DICOM series reader (tests/dicom.rs).

Writes small DICOM series made from the real CT tests/data/real_ct/lung1.mha (downsampled to
32 x 32 x 8 voxels of 9.125 x 9.125 x 20 mm so that the files stay small) into
tests/fixtures/dicom/<name>/, one file per slice, with pydicom; compressed transfer syntaxes are
encoded by pydicom (RLE) or GDCM (JPEG lossless, JPEG-LS, JPEG 2000). Every series that SimpleITK
reads is read with SimpleITK's ImageSeriesReader (file order from GetGDCMSeriesFileNames) and its
result written, cast to float32, to tests/fixtures/dicom/<name>.mha; tests/fixtures/dicom/
expected.json records SimpleITK's pixel type and geometry, and what it does with the series that
ctgrade refuses (a missing slice).

Variants: each transfer syntax; file names that are random (SOP instance UIDs) and shuffled
InstanceNumbers; a feet-first series (row cosine -x, slices listed from the head down); an oblique
series; a localizer mixed into the series and a localizer series beside it; jittered positions;
a missing slice; a sheared stack; signed and unsigned pixels, BitsStored 12 with other bits set above it, integer
and fractional rescale; a few of pydicom's bundled CT test files (real scanner headers). Bad
inputs (in bad/): single files derived from a good slice (no pixel data, pixel data too short,
a header claiming 4096 x 4096 pixels, an element claiming 4 GB, unknown transfer syntax, JPEG-LS, JPEG 2000, MR modality) and folders (two series, mixed sizes).

Run from the repository root:  /tmp/dcmenv/bin/python tools/make_dicom_fixtures.py
requirements: pydicom==3.0.2 SimpleITK==2.5.7 numpy==2.4.6 python-gdcm==3.2.6
"""

import copy
import json
import random
import shutil
import struct
import tempfile
from pathlib import Path

import gdcm
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    PYDICOM_IMPLEMENTATION_UID,
)

assert sitk.Version.VersionString() == "2.5.7", sitk.Version.VersionString()
assert np.__version__ == "2.4.6", np.__version__
assert pydicom.__version__ == "3.0.2", pydicom.__version__
assert gdcm.Version.GetVersion() == "3.2.6", gdcm.Version.GetVersion()

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "dicom"
REAL_CT = ROOT / "tests" / "data" / "real_ct" / "lung1.mha"
RNG = random.Random(17)
UID_ROOT = "1.2.826.0.1.3680043.10.1717."  # a fixed prefix; the rest is drawn from RNG


def uid() -> str:
    return UID_ROOT + ".".join(str(RNG.randrange(1, 10**9)) for _ in range(3))


def ds_str(x: float) -> str:
    """A DS value (at most 16 characters)."""
    s = f"{x:.10g}"
    assert len(s) <= 16, s
    return s


def source():
    """lung1 downsampled: int16 HU array (z, y, x), spacing, origin (identity direction)."""
    img = sitk.ReadImage(str(REAL_CT))
    assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    arr = sitk.GetArrayFromImage(img)[8:40:4, ::16, ::16]
    sp = img.GetSpacing()
    spacing = (sp[0] * 16, sp[1] * 16, sp[2] * 4)
    origin = img.TransformIndexToPhysicalPoint((0, 0, 8))
    return np.ascontiguousarray(arr.astype(np.int16)), spacing, origin


def make_slice(stored, *, position, row, col, spacing_xy, series, study, instance,
               slope=1.0, intercept=0.0, bits_stored=16, signed=True, modality="CT",
               image_type=("ORIGINAL", "PRIMARY", "AXIAL"), ts=ExplicitVRLittleEndian):
    """A single-frame CT (or other modality) image; `stored` holds the stored values (rows, cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    sop = uid()
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.StudyDate, ds.StudyTime = "20200317", "120000"  # fixed: GDCM would add the time now
    ds.PatientID = "ctgrade-fixture"
    ds.ImageType = list(image_type)
    ds.SeriesDescription = "lung1 downsampled"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [ds_str(v) for v in position]
    ds.ImageOrientationPatient = [ds_str(v) for v in (*row, *col)]
    # PixelSpacing: between rows (y), then between columns (x).
    ds.PixelSpacing = [ds_str(spacing_xy[1]), ds_str(spacing_xy[0])]
    ds.SliceThickness = "1.0"  # deliberately not the slice spacing: it must not be used
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = ds_str(slope)
    ds.RescaleIntercept = ds_str(intercept)
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2" if signed else "<u2")).tobytes()
    if ts == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return ds


def write_series(name, slices, *, names=None):
    """Writes datasets into OUT/name/ with random file names (or `names`), in shuffled order."""
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    paths = []
    for i, ds in enumerate(slices):
        fname = names[i] if names else f"{ds.SOPInstanceUID}.dcm"
        path = folder / fname
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def gdcm_transcode(path: Path, ts) -> None:
    """Re-encodes one file in place with GDCM (JPEG lossless, JPEG-LS, JPEG 2000)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(ts))
    change.SetInput(reader.GetImage())
    assert change.Change(), (path, ts)
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), path


def sitk_read(folder: Path):
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    return reader.Execute()


def geometry(img) -> dict:
    return {
        "size": list(img.GetSize()),
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": list(img.GetDirection()),
        "pixel_type": img.GetPixelIDTypeAsString(),
    }


def reference(name: str, expected: dict, folder: Path | None = None) -> None:
    """SimpleITK's reading of OUT/name (or `folder`), as OUT/name.mha (float32) and JSON."""
    img = sitk_read(folder or OUT / name)
    sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32), str(OUT / f"{name}.mha"), useCompression=True)
    expected[name] = geometry(img)


def stack(arr, spacing, origin, *, row=(1, 0, 0), col=(0, 1, 0), order=None, jitter=0.0, **kw):
    """Slices of `arr` (z, y, x) placed along the normal of (row, col) from `origin`."""
    row, col = np.array(row, float), np.array(col, float)
    normal = np.cross(row, col)
    series, study = uid(), uid()
    out = []
    for k in range(arr.shape[0]):
        pos = np.array(origin, float) + normal * spacing[2] * (k + jitter * RNG.uniform(-1, 1))
        out.append((k, pos))
    instances = list(range(1, len(out) + 1))
    RNG.shuffle(instances)
    if order is not None:
        instances = order
    return [
        make_slice(arr[k], position=pos, row=row, col=col, spacing_xy=spacing[:2],
                   series=series, study=study, instance=instances[k], **kw)
        for k, pos in out
    ]


def main() -> None:
    # Everything but the fuzzing regressions (kept by hand) is rewritten.
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.iterdir():
        if p.name != "fuzz_regressions":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    arr, spacing, origin = source()
    expected = {"source": {"spacing": list(spacing), "origin": list(origin), "size": list(arr.shape[::-1])}}

    # The source as MetaImage: the same CT as the explicit series (tests/dicom.rs compares them).
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing(spacing)
    src.SetOrigin(origin)
    sitk.WriteImage(src, str(OUT / "source.mha"), useCompression=True)

    # Typical CT storage: unsigned 12 bits, intercept -1024; names are SOP instance UIDs.
    unsigned = (arr.astype(np.int32) + 1024).clip(0, 4095)
    write_series("explicit", stack(unsigned, spacing, origin, signed=False, bits_stored=12,
                                   intercept=-1024))
    reference("explicit", expected)

    write_series("implicit", stack(arr, spacing, origin, ts=ImplicitVRLittleEndian))
    reference("implicit", expected)

    # Fractional rescale: SimpleITK gives floats.
    frac = np.round((arr.astype(np.float64) + 1000.5) / 0.5).astype(np.int32)
    write_series("deflated", stack(frac, spacing, origin, slope=0.5, intercept=-1000.5,
                                   ts=DeflatedExplicitVRLittleEndian))
    reference("deflated", expected)

    write_series("rle", stack(arr, spacing, origin, ts=RLELossless, slope=1, intercept=0))
    reference("rle", expected)

    # Bits above BitsStored set (as overlays once were): they are not part of the value.
    dirty = unsigned | (np.arange(unsigned.size).reshape(unsigned.shape) % 7 == 0) * 0xA000
    write_series("bits12_high_bits_set", stack(dirty, spacing, origin, signed=False,
                                               bits_stored=12, intercept=-1024))
    reference("bits12_high_bits_set", expected)

    # Signed 12-bit values with a rescale slope of 2 (stored = HU / 2, sign-extended to 16 bits).
    half = np.round(arr.astype(np.float64) / 2).astype(np.int16)
    write_series("signed12_slope2", stack(half, spacing, origin, signed=True, bits_stored=12,
                                          slope=2, intercept=0))
    reference("signed12_slope2", expected)

    for name, ts in (("jpeg_lossless", gdcm.TransferSyntax.JPEGLosslessProcess14),
                     ("jpeg_lossless_sv1", gdcm.TransferSyntax.JPEGLosslessProcess14_1)):
        paths = write_series(name, stack(unsigned, spacing, origin, signed=False, bits_stored=12,
                                         intercept=-1024))
        for p in paths:
            gdcm_transcode(p, ts)
        reference(name, expected)

    # Feet first: row cosine -x (image columns run right to left), slices listed from the
    # head down, so the normal (and the stack) points to the feet; names IM1.. in that order.
    ff = stack(arr[::-1, :, ::-1], spacing,
               (origin[0] + spacing[0] * (arr.shape[2] - 1), origin[1],
                origin[2] + spacing[2] * (arr.shape[0] - 1)),
               row=(-1, 0, 0), col=(0, 1, 0), order=list(range(1, arr.shape[0] + 1)))
    write_series("feet_first", ff, names=[f"IM{i + 1}" for i in range(len(ff))])
    reference("feet_first", expected)

    # Oblique: the image plane rotated 20 degrees about x and 10 about z.
    a, b = np.radians(20), np.radians(10)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    r = rz @ rx
    write_series("oblique", stack(arr, spacing, origin, row=r[:, 0], col=r[:, 1]))
    reference("oblique", expected)

    # Jitter: each position moved by up to 0.5% of the spacing along the normal.
    write_series("jitter", stack(arr, spacing, origin, jitter=0.005))
    reference("jitter", expected)

    # A localizer in the series (coronal, another size) and a localizer series beside it.
    series = stack(arr, spacing, origin)
    write_series("scout", series)
    reference("scout", expected)  # SimpleITK's reading of the series without the localizers
    scout = make_slice(arr[:, 16, :], position=origin, row=(1, 0, 0), col=(0, 0, -1),
                       spacing_xy=(spacing[0], spacing[2]), series=series[0].SeriesInstanceUID,
                       study=series[0].StudyInstanceUID, instance=100,
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    scout.save_as(OUT / "scout" / "scout_in_series.dcm", enforce_file_format=True)
    loc = make_slice(arr[:, :, 16], position=origin, row=(0, 1, 0), col=(0, 0, -1),
                     spacing_xy=(spacing[1], spacing[2]), series=uid(),
                     study=series[0].StudyInstanceUID, instance=1,
                     image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    loc.save_as(OUT / "scout" / "localizer_series.dcm", enforce_file_format=True)

    # A sheared stack (gantry tilt in the positions only, 14 degrees): ctgrade refuses it,
    # SimpleITK gives a non-orthogonal direction (recorded).
    sheared = stack(arr, spacing, origin)
    for k, ds in enumerate(sheared):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [ds_str(x), ds_str(y + 5.0 * k), ds_str(z)]
    write_series("sheared", sheared)
    expected["sheared"] = geometry(sitk_read(OUT / "sheared"))

    # A missing slice: ctgrade refuses it; SimpleITK's reading is recorded for the README.
    gap = stack(arr, spacing, origin)
    del gap[3]
    write_series("missing_slice", gap)
    expected["missing_slice"] = geometry(sitk_read(OUT / "missing_slice"))

    # pydicom's bundled CT test files: real scanner headers.
    real = OUT / "pydicom_ct5n"
    real.mkdir()
    ct5n = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    for f in sorted(ct5n.iterdir()):
        shutil.copy(f, real / f.name)
    reference("pydicom_ct5n", expected)
    (OUT / "pydicom_ct_small").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), OUT / "pydicom_ct_small" / "CT_small.dcm")
    reference("pydicom_ct_small", expected)
    # A real series with a gap (one slice 202.5 mm from the next three): refused.
    gap_real = OUT / "pydicom_ct2_gap"
    gap_real.mkdir()
    for f in sorted((ct5n.parent.parent / "77654033" / "CT2").iterdir()):
        shutil.copy(f, gap_real / f.name)
    expected["pydicom_ct2_gap"] = geometry(sitk_read(gap_real))

    # Bad inputs.
    bad = OUT / "bad"
    bad.mkdir()
    good = stack(arr[:1], spacing, origin, signed=True)[0]
    d = copy.deepcopy(good)
    del d.PixelData
    d.ImageComments = "x" * 2048  # so that the file is as long as the pixels would be
    d.save_as(bad / "no_pixel_data.dcm", enforce_file_format=True)
    d = copy.deepcopy(good)
    d.PixelData = good.PixelData[: len(good.PixelData) // 2]
    d.ImageComments = "x" * 2048  # so that the file is as long as the pixels would be
    d.save_as(bad / "short_pixel_data.dcm", enforce_file_format=True)
    d = copy.deepcopy(good)
    d.Rows, d.Columns = 4096, 4096  # a huge image claimed by a small file
    d.save_as(bad / "too_small_for_its_size.dcm", enforce_file_format=True)
    # An element claiming 4 GB in a 3 KB file (dicom-rs would reserve it before reading).
    raw = (bad / "short_pixel_data.dcm").read_bytes()
    meta_end = 144 + struct.unpack("<I", raw[140:144])[0]
    huge = struct.pack("<HH2sHI", 0x0008, 0x0001, b"OB", 0, 0xFFFFFFF0)
    (bad / "huge_element.dcm").write_bytes(raw[:meta_end] + huge + raw[meta_end:])
    d = copy.deepcopy(good)
    d.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    d.save_as(bad / "unknown_syntax.dcm", enforce_file_format=True, implicit_vr=False,
              little_endian=True)
    d = copy.deepcopy(good)
    d.Modality = "MR"
    d.SOPClassUID = MRImageStorage
    d.file_meta.MediaStorageSOPClassUID = MRImageStorage
    d.save_as(bad / "mr.dcm", enforce_file_format=True)
    good.save_as(bad / "jpeg_ls.dcm", enforce_file_format=True)
    gdcm_transcode(bad / "jpeg_ls.dcm", gdcm.TransferSyntax.JPEGLSLossless)
    good.save_as(bad / "jpeg2000.dcm", enforce_file_format=True)
    gdcm_transcode(bad / "jpeg2000.dcm", gdcm.TransferSyntax.JPEG2000Lossless)
    # Two CT series in one folder (two slices each).
    two = bad / "two_series"
    two.mkdir()
    for s in stack(arr[:2], spacing, origin) + stack(arr[2:4], spacing, origin):
        s.save_as(two / f"{s.SOPInstanceUID}.dcm", enforce_file_format=True)
    # One series of two sizes, two slices each: no majority to keep.
    mixed = bad / "mixed_sizes"
    mixed.mkdir()
    a2 = stack(arr[:2], spacing, origin)
    b2 = stack(arr[2:4, :24, :24], spacing, origin)
    for s in b2:
        s.SeriesInstanceUID = a2[0].SeriesInstanceUID
    for s in a2 + b2:
        s.save_as(mixed / f"{s.SOPInstanceUID}.dcm", enforce_file_format=True)

    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())  # regressions too
    print(f"wrote {OUT} ({total / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
