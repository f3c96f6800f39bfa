#!/usr/bin/env python3
"""The demonstration lesion segmenter (weights/default/lesion/), trained by nnU-Net v2 itself on
ctgrade's synthetic phantoms, the way a user trains one. This script is its provenance.

Steps (all under WORK, default target/demo-segmenter/):
1. Data: `ctgrade synth --lesion-labels` draws N phantoms per CO-RADS category (seeds 3000...,
   never used by the demo ensemble's training or test sets, nor by the measurement below),
   alternating three scan grids (128x128x80 at 2.8x2.8x4 mm, 144x144x88 at 2.5x2.5x3.6 mm,
   112x112x64 at 3.2x3.2x5 mm) so the model does not learn one grid. They are written as an
   nnU-Net raw dataset (Dataset901_CtgradePhantomLesions: imagesTr/<case>_0000.mha, labelsTr/
   <case>.mha, dataset.json with labels background 0, ground_glass 1, consolidation 2; channel CT).
2. Planning: nnUNetv2_extract_fingerprint and nnUNetv2_plan_experiment (nnU-Net's default planner),
   then one configuration added to nnUNetPlans.json as nnU-Net's documentation describes
   (a configuration that `inherits_from` another): `2d_demo`, a small 2-D PlainConvUNet for a
   CPU (features 8-16-32-64, four stages, kernels 3x3) at an in-plane SPACING (y, x mm) coarser
   than the scans', patch PATCH, batch size 8. A 2-D network because PyTorch trains small 3-D
   convolutions slowly on a CPU (about 1.5 s per batch of two 40x64x64 patches on 2 cores,
   against 0.4 s for eight 96x96 slices). The phantoms' lesions are large and contrasted; the
   classifier reads the lesion map at 5 mm.
3. nnUNetv2_preprocess -c 2d_demo, then nnUNetv2_train 901 2d_demo 0 -tr TRAINER -device cpu
   (TRAINER one of nnU-Net's short trainers, nnUNetTrainer_<N>epochs; fold 0 of nnU-Net's
   5-fold split, so nnU-Net's own validation Dice is in the fold's log).
4. `ctgrade convert --from-nnunet` writes the compact form to OUT (default
   weights/default/lesion/), with provenance.json (this script's settings, nnU-Net's versions,
   the validation Dice nnU-Net reported, the training time).

nnU-Net on the CPU is not bit-deterministic (its data augmentation draws from unseeded workers),
so a rerun reproduces the model within nnU-Net's own determinism, not byte for byte.

Run (about 15 minutes on 2 cores, 13 of them nnU-Net's training):
  python3 -m venv /tmp/nnenv
  /tmp/nnenv/bin/pip install torch==2.15.0 nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 \\
      numpy==2.4.6 SimpleITK==2.5.7 scipy==1.17.1 scikit-image==0.26.0 acvl_utils==0.2.6 \\
      batchgenerators==0.25.5
  cargo build --release --bin ctgrade
  /tmp/nnenv/bin/python tools/train_demo_segmenter.py [--work DIR] [--out DIR] [--per-class N]
      [--trainer nnUNetTrainer_10epochs] [--spacing 3.75,3.75] [--patch 96,96]
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASET_ID = 901
DATASET = f"Dataset{DATASET_ID}_CtgradePhantomLesions"
CONFIG = "2d_demo"
GRIDS = [
    ((128, 128, 80), (2.8, 2.8, 4.0)),
    ((144, 144, 88), (2.5, 2.5, 3.6)),
    ((112, 112, 64), (3.2, 3.2, 5.0)),
]
SEED0 = 3000


def pair(text, kind):
    parts = [kind(p) for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}")
    return parts


def run(cmd, env=None, log=None):
    print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    if log is None:
        subprocess.run([str(c) for c in cmd], check=True, env=env)
    else:
        with open(log, "w") as f:
            subprocess.run([str(c) for c in cmd], check=True, env=env, stdout=f, stderr=subprocess.STDOUT)


def make_dataset(ctgrade, raw, per_class):
    images, labels = raw / "imagesTr", raw / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    n = 0
    for co_rads in range(1, 6):
        for j in range(per_class):
            seed = SEED0 + n
            size, spacing = GRIDS[n % len(GRIDS)]
            case = f"phantom_{seed}"
            run([ctgrade, "synth", "--out", images / f"{case}_0000.mha", "--seed", seed,
                 "--co-rads", co_rads, "--size", ",".join(map(str, size)),
                 "--spacing", ",".join(map(str, spacing)),
                 "--lesion-labels", labels / f"{case}.mha"])
            n += 1
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "ground_glass": 1, "consolidation": 2},
        "numTraining": n,
        "file_ending": ".mha",
        "name": "ctgrade synthetic phantom lesions (demonstration only)",
        "description": "ctgrade synth phantoms: ground-glass opacities and consolidations drawn "
                       "by the phantom generator; no real CT",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return n


def add_configuration(plans_path, spacing, patch):
    """Adds CONFIG: a small 2-D PlainConvUNet inheriting from nnU-Net's own 2d configuration.
    Its spacing has two entries, so nnU-Net keeps each scan's slice spacing and resamples
    in-plane only."""
    plans = json.loads(plans_path.read_text())
    base = plans["configurations"]["2d"]
    arch = json.loads(json.dumps(base["architecture"]))
    kw = arch["arch_kwargs"]
    features = [8, 16, 32, 64]
    stages = len(features)
    kw["n_stages"] = stages
    kw["features_per_stage"] = features
    kw["kernel_sizes"] = [[3, 3]] * stages
    kw["strides"] = [[1, 1]] + [[2, 2]] * (stages - 1)
    kw["n_conv_per_stage"] = [2] * stages
    kw["n_conv_per_stage_decoder"] = [2] * (stages - 1)
    plans["configurations"][CONFIG] = {
        "inherits_from": "2d",
        "data_identifier": f"nnUNetPlans_{CONFIG}",
        "spacing": spacing,
        "patch_size": patch,
        "batch_size": 8,
        "architecture": arch,
    }
    plans_path.write_text(json.dumps(plans, indent=4) + "\n")


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=root / "target/demo-segmenter")
    ap.add_argument("--out", type=Path, default=root / "weights/default/lesion")
    ap.add_argument("--ctgrade", type=Path, default=root / "target/release/ctgrade")
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--trainer", default="nnUNetTrainer_10epochs")
    ap.add_argument("--spacing", type=lambda t: pair(t, float), default=[3.75, 3.75],
                    help="in-plane y,x mm")
    ap.add_argument("--patch", type=lambda t: pair(t, int), default=[96, 96], help="y,x")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    work = a.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
        "nnUNet_compile": "f",
        "nnUNet_n_proc_DA": "1",
        "OMP_NUM_THREADS": str(a.threads),
        "MKL_NUM_THREADS": str(a.threads),
    })
    bin_dir = Path(sys.executable).parent
    t0 = time.time()
    n = make_dataset(a.ctgrade, work / "raw" / DATASET, a.per_class)
    t_data = time.time() - t0

    run([bin_dir / "nnUNetv2_extract_fingerprint", "-d", DATASET_ID, "-np", a.threads], env)
    run([bin_dir / "nnUNetv2_plan_experiment", "-d", DATASET_ID], env)
    plans_path = work / "preprocessed" / DATASET / "nnUNetPlans.json"
    add_configuration(plans_path, a.spacing, a.patch)
    run([bin_dir / "nnUNetv2_preprocess", "-d", DATASET_ID, "-c", CONFIG, "-np", a.threads], env)
    t1 = time.time()
    run([bin_dir / "nnUNetv2_train", DATASET_ID, CONFIG, "0", "-tr", a.trainer, "-device", "cpu"],
        env, log=work / "train.log")
    t_train = time.time() - t1

    model = work / "results" / DATASET / f"{a.trainer}__nnUNetPlans__{CONFIG}"
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    if a.out.exists():
        shutil.rmtree(a.out)
    run([a.ctgrade, "convert", "--from-nnunet", model, "--out", a.out])
    provenance = {
        "made_by": "tools/train_demo_segmenter.py",
        "nnunetv2": importlib.metadata.version("nnunetv2"),
        "torch": torch.__version__,
        "dataset": DATASET,
        "training_cases": n,
        "phantom_seeds": [SEED0, SEED0 + n - 1],
        "grids": [{"size": s, "spacing_mm": sp} for s, sp in GRIDS],
        "configuration": CONFIG,
        "spacing_yx_mm": a.spacing,
        "patch_yx": a.patch,
        "trainer": a.trainer,
        "fold": 0,
        "device": "cpu",
        "threads": a.threads,
        "nnunet_validation": {
            "mean_dice_foreground": summary["foreground_mean"]["Dice"],
            "mean_dice_per_class": {k: v["Dice"] for k, v in summary["mean"].items()},
        },
        "phantom_seconds": round(t_data, 1),
        "training_seconds": round(t_train, 1),
    }
    (a.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
