#!/usr/bin/env python3
"""Golden fixtures for ctgrade's orientation and resampling (tests/preprocess.rs).

SimpleITK is the reference: `DICOMOrient(image, "LPS")` for step 1 and `Resample` (linear for the
CT, nearest neighbour for a label map) for step 2, on small int16 volumes with anisotropic
spacing, non-zero origins, flipped and permuted axes, a slight obliquity (kept in the direction,
as SimpleITK does) and a gantry tilt (resampled onto an axis-aligned grid covering the scan).

Writes tests/fixtures/preprocess/resample_cases.json. Run from the repository root:
    /work/pyenv/bin/python tools/make_resample_fixtures.py
Requirements (the versions it was run with): SimpleITK==2.5.7 numpy==2.4.6
"""

import json
import math
import os

import numpy as np
import SimpleITK as sitk

assert sitk.__version__ == "2.5.7", sitk.__version__
assert np.__version__ == "2.4.6", np.__version__

OUT = os.path.join("tests", "fixtures", "preprocess", "resample_cases.json")
DEFAULT = -2000.0  # outside value: no CT value, so inside/outside disagreements show
SPACING = 1.5


def smooth_volume(rng, size_xyz, label=False):
    """Smooth CT-like int16 values (-1000..400 HU) or a 0-3 label map; numpy z, y, x order."""
    nx, ny, nz = size_xyz
    coarse = rng.normal(size=(nz // 2 + 2, ny // 2 + 2, nx // 2 + 2))
    zz, yy, xx = np.meshgrid(
        np.linspace(0, coarse.shape[0] - 1.001, nz),
        np.linspace(0, coarse.shape[1] - 1.001, ny),
        np.linspace(0, coarse.shape[2] - 1.001, nx),
        indexing="ij",
    )
    z0, y0, x0 = zz.astype(int), yy.astype(int), xx.astype(int)
    fz, fy, fx = zz - z0, yy - y0, xx - x0
    v = np.zeros_like(zz)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (fz if dz else 1 - fz) * (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
                v += w * coarse[z0 + dz, y0 + dy, x0 + dx]
    if label:
        return np.clip(np.round(v * 1.5 + 1.5), 0, 3).astype(np.int16)
    return np.clip(np.round(-300 + 350 * v + rng.normal(scale=20, size=v.shape)), -1024, 3071).astype(
        np.int16
    )


def geometry(img):
    return {
        "size": list(img.GetSize()),
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": list(img.GetDirection()),
    }


def volume_json(img):
    g = geometry(img)
    arr = sitk.GetArrayFromImage(img)  # z, y, x: flattening gives x fastest
    g["data"] = [float(v) if arr.dtype.kind == "f" else int(v) for v in arr.ravel()]
    return g


def rotation_x(deg):
    a = math.radians(deg)
    return [1, 0, 0, 0, math.cos(a), -math.sin(a), 0, math.sin(a), math.cos(a)]


def rotation_z(deg):
    a = math.radians(deg)
    return [math.cos(a), -math.sin(a), 0, math.sin(a), math.cos(a), 0, 0, 0, 1]


def axis_aligned_cover(img, s):
    """The identity-direction grid of spacing s covering the voxel centres (ctgrade's rule)."""
    n = img.GetSize()
    pts = []
    for c in range(8):
        idx = [(n[k] - 1) if c & (1 << k) else 0 for k in range(3)]
        pts.append(img.TransformContinuousIndexToPhysicalPoint([float(i) for i in idx]))
    pts = np.array(pts)
    lo, hi = pts.min(0), pts.max(0)
    size = [int(round((hi[k] - lo[k]) / s)) + 1 for k in range(3)]
    return size, list(lo), [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]


def make_case(rng, name, size, spacing, origin, direction, label=False, oblique=False):
    arr = smooth_volume(rng, size, label=label)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    oriented = sitk.DICOMOrient(img, "LPS")
    if oblique:
        out_size, out_origin, out_dir = axis_aligned_cover(oriented, SPACING)
    else:
        out_size = [
            int(round(oriented.GetSize()[k] * oriented.GetSpacing()[k] / SPACING)) for k in range(3)
        ]
        out_origin, out_dir = oriented.GetOrigin(), oriented.GetDirection()
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = sitk.Resample(
        oriented,
        out_size,
        sitk.Transform(),
        interp,
        out_origin,
        [SPACING] * 3,
        out_dir,
        DEFAULT,
        sitk.sitkFloat32,
    )
    return {
        "name": name,
        "interpolation": "nearest" if label else "linear",
        "oblique": oblique,
        "default": DEFAULT,
        "spacing_mm": SPACING,
        "input": volume_json(img),
        "oriented": volume_json(oriented),
        "output": volume_json(out),
    }


def main():
    rng = np.random.default_rng(20240531)
    cases = [
        make_case(rng, "anisotropic", [14, 11, 6], [0.7, 0.9, 2.5], [-120.3, 45.1, -300.7], [1, 0, 0, 0, 1, 0, 0, 0, 1]),
        make_case(rng, "flipped_x_z", [13, 12, 7], [0.8, 1.1, 2.0], [96.2, -40.5, 12.25], [-1, 0, 0, 0, 1, 0, 0, 0, -1]),
        # Sagittal acquisition: axis 0 posterior, axis 1 inferior, axis 2 to the left.
        make_case(rng, "permuted_flipped", [9, 15, 12], [1.9, 0.6, 0.95], [-30.0, -80.0, 150.0], [0, 0, 1, 1, 0, 0, 0, -1, 0]),
        # A slight obliquity (0.4 degrees) is kept in the direction, as SimpleITK keeps it.
        make_case(rng, "slightly_oblique", [12, 12, 8], [0.9, 0.9, 1.7], [5.5, -7.25, -60.0], rotation_z(0.4)),
        # A 15-degree gantry tilt: resampled onto an axis-aligned grid that covers the scan.
        make_case(rng, "gantry_tilt", [12, 10, 8], [1.2, 1.2, 2.5], [-10.0, 20.0, -5.0], rotation_x(15.0), oblique=True),
        make_case(rng, "labels_nearest", [11, 10, 6], [0.75, 1.3, 2.2], [3.3, 4.4, -5.5], [1, 0, 0, 0, -1, 0, 0, 0, 1], label=True),
    ]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "tools/make_resample_fixtures.py", "simpleitk": sitk.__version__, "cases": cases}, f)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
