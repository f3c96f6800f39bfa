#!/usr/bin/env python3
"""Reference implementation of ctgrade's preprocessing in Python, for speed comparison and as a
cross-check of the Rust code (src/preprocess/). Same steps and parameters:

1. orientation: SimpleITK DICOMOrient(image, "LPS")
2. linear resampling to 1.5 mm isotropic (SimpleITK Resample, same origin and direction,
   size round(size * spacing / 1.5)); outside the scan is NaN for the lung mask
3. HU window [-1100, 300] scaled to [0, 1]
4. lung mask: threshold -400 HU; drop 6-connected air touching the x/y faces; drop axial airway
   components (< 8 cm², centroid within 25 mm of the body's x centroid); keep 3-D components of
   at least 15 % of the largest (which must hold 100 mL); per component: closing with a 10 mm
   ball via two Euclidean distance transforms, 3-D hole filling (scipy.ndimage)
   With --plain, the lung mask is instead the plainer pipeline many projects use: threshold,
   6-connected components, those touching the x/y faces dropped, components of at least 15 %
   of the largest kept, holes filled (SimpleITK's ConnectedComponent and BinaryFillhole, both
   multi-threaded): a faster peer that does less, to compare speed with.
5. slices 10 mm or more from the mask dropped; 6. 240 x 240 crop around the mask's bounding-box
   centre, padded with -1100 HU; 7. 128 slices sampled uniformly; the mask mapped back to the
   input grid with nearest-neighbour resampling.

Usage:
    /work/pyenv/bin/python tools/preprocess_reference.py CT.mha [--out DIR] [--plain]
Prints one JSON object with the per-stage seconds (file reading apart, as "read_s"; `total` as in
`ctgrade preprocess`'s preprocess.json, reading excluded) and the lung volume; --out writes lung_mask.mha and
input.mha (the CT channel) for comparison.
Requirements (the versions it was run with): SimpleITK==2.5.7 numpy==2.4.6 scipy==1.17.1
"""

import argparse
import json
import math
import os
import time

import numpy as np
import scipy
import SimpleITK as sitk
from scipy import ndimage as ndi

assert sitk.__version__ == "2.5.7", sitk.__version__
assert np.__version__ == "2.4.6", np.__version__
assert scipy.__version__ == "1.17.1", scipy.__version__

SPACING = 1.5
CROP = (240, 240)  # x, y
SLICES = 128
WINDOW = (-1100.0, 300.0)
Z_MARGIN_MM = 10.0
PAD_HU = -1100.0
AIR_HU = -400.0
AIRWAY_MAX_AREA_MM2 = 800.0
AIRWAY_MIDLINE_MM = 25.0
KEEP_FRACTION = 0.15
MIN_LUNG_ML = 100.0
CLOSING_MM = 10.0

SIX = ndi.generate_binary_structure(3, 1)
FOUR = ndi.generate_binary_structure(2, 1)


def lung_mask(hu, sp):
    """hu: numpy (z, y, x) float32 with NaN outside the scan; sp: (x, y, z) mm."""
    nz, ny, nx = hu.shape
    air = hu < AIR_HU  # NaN compares False: not air
    labels, n = ndi.label(air, structure=SIX)
    faces = np.concatenate(
        [labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
    )
    outside = np.zeros(n + 1, bool)
    outside[np.unique(faces)] = True
    outside[0] = False
    out_vox = outside[labels]
    body = ~out_vox
    xs = np.arange(nx, dtype=np.float64)
    midline = (body.sum(axis=(0, 1)) * xs).sum() / max(body.sum(), 1)
    cand = air & ~out_vox
    del labels, out_vox, air, body

    max_px = AIRWAY_MAX_AREA_MM2 / (sp[0] * sp[1])
    mid_vox = AIRWAY_MIDLINE_MM / sp[0]
    for z in range(nz):
        lab, m = ndi.label(cand[z], structure=FOUR)
        if m == 0:
            continue
        idx = np.arange(1, m + 1)
        area = ndi.sum_labels(np.ones_like(lab), lab, idx)
        cx = ndi.sum_labels(np.broadcast_to(xs, lab.shape), lab, idx) / area
        drop = idx[(area < max_px) & (np.abs(cx - midline) < mid_vox)]
        if len(drop):
            cand[z][np.isin(lab, drop)] = False

    labels, n = ndi.label(cand, structure=SIX)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    if n == 0:
        raise SystemExit("no lungs found")
    sizes = np.bincount(labels.ravel())[1:]
    largest = sizes.max()
    if largest * voxel_ml < MIN_LUNG_ML:
        raise SystemExit(f"no lungs found: largest {largest * voxel_ml:.1f} mL")
    mask = np.zeros(hu.shape, bool)
    boxes = ndi.find_objects(labels)
    r2 = CLOSING_MM**2
    sampling = (sp[2], sp[1], sp[0])
    for lab in np.nonzero(sizes >= KEEP_FRACTION * largest)[0] + 1:
        box = boxes[lab - 1]
        margin = [int(math.ceil(CLOSING_MM / s)) + 2 for s in sampling]
        sub = labels[box] == lab
        sub = np.pad(sub, [(m, m) for m in margin])
        d_mask = ndi.distance_transform_edt(~sub, sampling=sampling)
        dil = d_mask <= CLOSING_MM
        d_out = ndi.distance_transform_edt(dil, sampling=sampling)
        closed = sub | (d_out > CLOSING_MM)
        closed = ndi.binary_fill_holes(closed, structure=SIX)
        # Back into the grid, cutting the padding (the box may extend beyond the volume).
        lo = [box[k].start - margin[k] for k in range(3)]
        src, dst = [], []
        for k in range(3):
            a = max(lo[k], 0)
            b = min(lo[k] + closed.shape[k], hu.shape[k])
            dst.append(slice(a, b))
            src.append(slice(a - lo[k], b - lo[k]))
        mask[tuple(dst)] |= closed[tuple(src)]
        del d_mask, d_out, dil
    return mask


def plain_lung_mask(res):
    """res: the resampled sitk image (NaN outside the scan); returns a numpy (z, y, x) bool mask."""
    air = sitk.BinaryThreshold(res, -1e30, AIR_HU, 1, 0)  # NaN lies in no range: not air
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(air, False))
    faces = np.concatenate(
        [labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
    )
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    sizes[np.unique(faces)] = 0
    if sizes.max() * SPACING**3 / 1000.0 < MIN_LUNG_ML:
        raise SystemExit(f"no lungs found: largest {sizes.max() * SPACING**3 / 1000.0:.1f} mL")
    keep = sizes >= KEEP_FRACTION * sizes.max()
    mask = sitk.GetImageFromArray(keep[labels].astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(mask, False, 1)) > 0


def preprocess(img, plain=False):
    seconds = {}
    t0 = time.perf_counter()
    t = t0
    oriented = sitk.DICOMOrient(img, "LPS")
    size = [int(math.floor(oriented.GetSize()[k] * oriented.GetSpacing()[k] / SPACING + 0.5)) for k in range(3)]
    seconds["orient"] = time.perf_counter() - t

    t = time.perf_counter()
    res = sitk.Resample(
        oriented,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        oriented.GetOrigin(),
        [SPACING] * 3,
        oriented.GetDirection(),
        float("nan"),
        sitk.sitkFloat32,
    )
    hu = sitk.GetArrayViewFromImage(res)
    seconds["resample"] = time.perf_counter() - t

    t = time.perf_counter()
    mask = plain_lung_mask(res) if plain else lung_mask(hu, (SPACING,) * 3)
    seconds["lung_mask"] = time.perf_counter() - t

    t = time.perf_counter()
    zs, ys, xs = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    m = max(int(math.ceil(Z_MARGIN_MM / SPACING)) - 1, 0)
    k0, k1 = max(zs[0] - m, 0), min(zs[-1] + m, hu.shape[0] - 1)
    x0 = int(math.floor((xs[0] + xs[-1] + 1) / 2 - CROP[0] / 2 + 0.5))
    y0 = int(math.floor((ys[0] + ys[-1] + 1) / 2 - CROP[1] / 2 + 0.5))
    n = k1 - k0 + 1
    idx = k0 + np.floor(np.arange(SLICES) * (n - 1) / (SLICES - 1) + 0.5).astype(int)
    padded = np.full((SLICES, CROP[1], CROP[0]), PAD_HU, np.float32)
    ya, yb = max(y0, 0), min(y0 + CROP[1], hu.shape[1])
    xa, xb = max(x0, 0), min(x0 + CROP[0], hu.shape[2])
    padded[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = hu[idx, ya:yb, xa:xb]
    padded = np.nan_to_num(padded, nan=PAD_HU)
    ct = (np.clip(padded, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    net_input = np.stack([ct, ct, ct])
    seconds["assemble"] = time.perf_counter() - t

    t = time.perf_counter()
    mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_img.CopyInformation(res)
    mask_orig = sitk.Resample(mask_img, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    seconds["mask_to_input_grid"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    count = int(sitk.GetArrayViewFromImage(mask_orig).sum())
    report = {
        "seconds": seconds,
        "lung_volume_ml": count * float(np.prod(img.GetSpacing())) / 1000.0,
        "resampled_size": size,
        "lung_z_range": [int(zs[0]), int(zs[-1])],
        "kept_z_range": [int(k0), int(k1)],
        "crop_box": {"x": [x0, x0 + CROP[0]], "y": [y0, y0 + CROP[1]]},
    }
    return net_input, mask_orig, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ct")
    ap.add_argument("--out")
    ap.add_argument("--plain", action="store_true", help="the plain lung mask (see above)")
    args = ap.parse_args()
    t = time.perf_counter()
    img = sitk.ReadImage(args.ct, sitk.sitkFloat32)
    read_s = time.perf_counter() - t
    net_input, mask, report = preprocess(img, args.plain)
    report["read_s"] = read_s
    report["threads_simpleitk"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        sitk.WriteImage(mask, os.path.join(args.out, "lung_mask.mha"), useCompression=True)
        ct = sitk.GetImageFromArray(net_input[0])
        sitk.WriteImage(ct, os.path.join(args.out, "input.mha"), useCompression=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
