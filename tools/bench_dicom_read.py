#!/usr/bin/env python3
"""Read speed of ctgrade's DICOM series reader versus SimpleITK's ImageSeriesReader, same files,
same run.

Builds (once) an uncompressed 512x512x400 CT series (explicit VR little endian, signed 16-bit,
one file per slice, names shuffled) from the real CT tests/data/real_ct/lung1.mha tiled
along z, outside git (in /tmp), then times, alternating:
  - sitk:       ImageSeriesReader.Execute on the file list (sorted beforehand, untimed);
  - sitk+scan:  GetGDCMSeriesFileNames (finding and sorting the slices) + Execute, which is
                what ctgrade's read does from a folder;
  - ctgrade:    `target/release/examples/read_bench DIR 1` (ctgrade::volume::read on the folder:
                scanning, sorting, checking and decoding, f32 output; timed inside the process).
It prints the wall and CPU medians and the ratios.

Run from the repository root:
  cargo build --release --example read_bench
  /tmp/dcmenv/bin/python tools/bench_dicom_read.py [--runs 7] [--dir /tmp/ctgrade_bench_dicom]
requirements: pydicom==3.0.2 SimpleITK==2.5.7 numpy==2.4.6
"""

import argparse
import os
import random
import re
import resource
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

assert sitk.Version.VersionString() == "2.5.7", sitk.Version.VersionString()
assert np.__version__ == "2.4.6", np.__version__
assert pydicom.__version__ == "3.0.2", pydicom.__version__

ROOT = Path(__file__).resolve().parent.parent
REAL_CT = ROOT / "tests" / "data" / "real_ct" / "lung1.mha"
BENCH = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "examples" / "read_bench"
SLICES = 400


def make_series(folder: Path) -> None:
    """lung1 (48 slices) tiled along z to 400 slices, mirrored (no seams), one file a slice."""
    src = sitk.ReadImage(str(REAL_CT))
    arr = sitk.GetArrayFromImage(src)
    reps = -(-SLICES // arr.shape[0])
    big = np.concatenate([arr, arr[::-1]] * reps, axis=0)[:SLICES].astype("<i2")
    sx, sy, sz = src.GetSpacing()
    ox, oy, oz = src.GetOrigin()
    folder.mkdir(parents=True)
    rng = random.Random(400)
    series, study = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    names = list(range(SLICES))
    rng.shuffle(names)
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{ox:.6f}", f"{oy:.6f}", f"{oz + k * sz:.6f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{sy:.8g}", f"{sx:.8g}"]
        ds.SliceThickness = f"{sz:.8g}"
        ds.Rows, ds.Columns = big.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = big[k].tobytes()
        ds.save_as(folder / f"{names[k]:05d}.dcm", enforce_file_format=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", default="/tmp/ctgrade_bench_dicom")
    args = ap.parse_args()
    folder = Path(args.dir)
    if not folder.exists():
        make_series(folder)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    assert len(files) == SLICES, len(files)
    total = sum(Path(f).stat().st_size for f in files)
    print(f"series: {folder} ({SLICES} files, {total / 1e6:.1f} MB, explicit VR little endian int16)")
    print(f"SimpleITK {sitk.Version.VersionString()}, threads "
          f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, cpus {os.cpu_count()}")

    res = {"sitk": ([], []), "sitk+scan": ([], []), "ctgrade": ([], [])}
    checks = {}
    for _ in range(args.runs):
        for name in ("sitk", "sitk+scan"):
            c, t = time.process_time(), time.perf_counter()
            names = files if name == "sitk" else sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(names)
            img = reader.Execute()
            res[name][0].append(time.perf_counter() - t)
            res[name][1].append(time.process_time() - c)
            checks["size"] = img.GetSize()
            del img, reader
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([str(BENCH), str(folder), "1"], check=True, capture_output=True,
                             text=True).stdout
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = re.search(r"median ([0-9.]+) s", out)
        assert m, out
        res["ctgrade"][0].append(float(m.group(1)))
        res["ctgrade"][1].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    assert checks["size"] == (512, 512, SLICES), checks
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in res.items()}
    for k, (w, c) in res.items():
        print(f"{k:10s} wall: {' '.join(f'{t:.3f}' for t in w)}  median {med[k][0]:.3f} s;"
              f"  cpu median {med[k][1]:.3f} s")
    print(f"ratio ctgrade / SimpleITK ImageSeriesReader (wall medians) = "
          f"{med['ctgrade'][0] / med['sitk'][0]:.2f}")
    print(f"ratio ctgrade / SimpleITK GetGDCMSeriesFileNames+ImageSeriesReader = "
          f"{med['ctgrade'][0] / med['sitk+scan'][0]:.2f}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
