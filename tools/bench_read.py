#!/usr/bin/env python3
"""Read speed of ctgrade's MetaImage reader versus SimpleITK.ReadImage, same file, same run.

Builds (once) a zlib-compressed 512x512x400 int16 .mha from the real CT
tests/data/real_ct/lung1.mha, tiled along z (outside git, in /tmp), then times
SimpleITK.ReadImage (also followed by a cast to float32, ctgrade's output type) and
`target/release/examples/read_bench` (ctgrade::volume::read) on it, alternating, and prints the
wall and CPU medians and the ratios.

Run from the repository root:
  cargo build --release --example read_bench
  /work/pyenv/bin/python tools/bench_read.py [--runs 7] [--file /tmp/ctgrade_bench_512x512x400.mha]
requirements: SimpleITK==2.5.7 numpy==2.4.6
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

assert sitk.Version.VersionString() == "2.5.7", sitk.Version.VersionString()
assert np.__version__ == "2.4.6", np.__version__

ROOT = Path(__file__).resolve().parent.parent
REAL_CT = ROOT / "tests" / "data" / "real_ct" / "lung1.mha"
BENCH = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "examples" / "read_bench"


def make_volume(path: Path) -> None:
    """lung1 (48 slices) tiled along z to 400 slices, written compressed as panimg does."""
    src = sitk.ReadImage(str(REAL_CT))
    arr = sitk.GetArrayFromImage(src)
    reps = -(-400 // arr.shape[0])
    big = np.concatenate([arr, arr[::-1]] * reps, axis=0)[:400]  # mirrored: no seams
    img = sitk.GetImageFromArray(np.ascontiguousarray(big))
    img.SetSpacing(src.GetSpacing())
    img.SetOrigin(src.GetOrigin())
    img.SetDirection(src.GetDirection())
    sitk.WriteImage(img, str(path), useCompression=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--file", default="/tmp/ctgrade_bench_512x512x400.mha")
    args = ap.parse_args()
    path = Path(args.file)
    if not path.exists():
        make_volume(path)
    img = sitk.ReadImage(str(path))
    assert img.GetSize() == (512, 512, 400) and img.GetPixelID() == sitk.sitkInt16
    print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB compressed, "
          f"{512 * 512 * 400 * 2 / 1e6:.0f} MB int16)")
    print(f"SimpleITK {sitk.Version.VersionString()}, threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, "
          f"cpus {os.cpu_count()}")

    # Wall and CPU seconds (all threads) for: SimpleITK.ReadImage (int16 result),
    # SimpleITK.ReadImage + Cast to float32 (the same result as ctgrade's f32 volume), and
    # ctgrade's read (one read per process, timed inside it; CPU from the child's rusage,
    # which includes process start-up, a few ms).
    res = {"sitk": ([], []), "sitk+cast": ([], []), "ctgrade": ([], [])}
    for _ in range(args.runs):
        for name in ("sitk", "sitk+cast"):
            c, t = time.process_time(), time.perf_counter()
            img = sitk.ReadImage(str(path))
            if name == "sitk+cast":
                img = sitk.Cast(img, sitk.sitkFloat32)
            res[name][0].append(time.perf_counter() - t)
            res[name][1].append(time.process_time() - c)
            del img
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([str(BENCH), str(path), "1"], check=True, capture_output=True, text=True).stdout
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = re.search(r"median ([0-9.]+) s", out)
        assert m, out
        res["ctgrade"][0].append(float(m.group(1)))
        res["ctgrade"][1].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in res.items()}
    for k, (w, c) in res.items():
        print(f"{k:10s} wall: {' '.join(f'{t:.3f}' for t in w)}  median {med[k][0]:.3f} s;"
              f"  cpu median {med[k][1]:.3f} s")
    print(f"ratio ctgrade / SimpleITK.ReadImage (wall medians) = {med['ctgrade'][0] / med['sitk'][0]:.2f}")
    print(f"ratio ctgrade / SimpleITK.ReadImage+Cast(float32)  = {med['ctgrade'][0] / med['sitk+cast'][0]:.2f}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
