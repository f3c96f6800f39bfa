#!/usr/bin/env python3
"""nnunetv2's side of scripts/bench-segment.sh: a benchmark nnU-Net v2 model folder, and
nnUNetPredictor run on it on the CPU, timed.

  /tmp/nnenv/bin/python tools/bench_nnunet.py make-model DIR [--ct tests/data/real_ct/lung1.mha]
  /tmp/nnenv/bin/python tools/bench_nnunet.py predict --model DIR --input CT --output DIR --threads 2

make-model writes DIR/dataset.json, DIR/plans.json and DIR/fold_{0,1}/checkpoint_final.pth, laid
out and saved exactly as tools/make_nnunet_fixtures.py saves its fixtures (its functions are
reused; the committed fixtures are not touched):
  PlainConvUNet, configuration 3d_fullres, folds 0 and 1, target spacing 5 x 1.25 x 1.25 mm
  (z, y, x), CTNormalization, labels background, GGO, consolidation; 5 stages, features
  16, 32, 64, 128, 256, 2 convs per stage (encoder and decoder), kernels [1,3,3] for the two
  full-in-plane-resolution stages and [3,3,3] below, strides [1,1,1], [1,2,2], [1,2,2], [2,2,2],
  [2,2,2] (z is not pooled until the in-plane spacing reaches it, as nnU-Net plans it), patch
  40 x 160 x 160, conv_bias True, InstanceNorm eps 1e-5, LeakyReLU 0.01.
  Weights from seeded generators (seed 911), every norm and bias moved off its initial value; the
  last layer's bias centres each class's mean logit over the centre patch of the CT (--ct, the
  benchmark's input) so that all three labels occur.
Why this size: nnU-Net's planner would give this CT (48 x 234 x 234 voxels at the target
spacing) a patch of about 48 x 224 x 224 and features 32 ... 320 in 6 stages; that network takes
one nnunetv2 run (2 folds, 8 mirrored passes per tile) well past 20 minutes on 2 threads. With
features 32, 64, 128, 256, 320 at 40 x 160 x 160 one torch forward took 7 to 9 s on 2 threads
here (128 forwards a run: over 15 minutes), so the widths are halved: 2.5 to 3.5 minutes per
nnunetv2 run. The sliding window is that of the real size: 2 x 2 x 2 tiles, 8 passes each, 2
folds.

predict runs nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
perform_everything_on_device=False, device=cpu).predict_from_files_sequential on one CT, writing
OUTPUT/<case>.mha (uint8 labels), with torch.set_num_threads(THREADS) and OMP_NUM_THREADS /
MKL_NUM_THREADS set before torch loads. It prints one JSON line on stdout (the predictor's own
messages go to stderr): wall seconds of the whole process so far (imports included) and of the
prediction (predictor set-up included), the peak RSS of this process and that of its waited-for
child processes (resource.getrusage ru_maxrss; one shows up, about 0.77 GB here), peak_rss_mib
being the larger of the two as /usr/bin/time reports it, the thread count and the versions.

Needs the venv of tools/make_nnunet_fixtures.py (its docstring lists the pins and makes it).
"""

import contextlib
import json
import os
import sys
import time

T0 = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import case_name, folds_found, parse_args, peak_rss  # noqa: E402

ARGS = parse_args(__doc__, "nnUNetPredictor")

import make_nnunet_fixtures as fx  # noqa: E402  (checks the pinned versions on import)
import numpy as np  # noqa: E402
import torch  # noqa: E402

SEED = 911
FOLDS = (0, 1)
LABELS = {"background": 0, "GGO": 1, "consolidation": 2}
FEATURES = [16, 32, 64, 128, 256]
KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
PATCH = [40, 160, 160]
SPACING = [5.0, 1.25, 1.25]


def bench_plans():
    """The plans of the benchmark model: the fixtures' 3d_fullres layout at the benchmark's size."""
    p = fx.plain_plans()
    p["dataset_name"] = "Dataset911_CtgradeBench"
    p["original_median_spacing_after_transp"] = [5.0, 0.5703125, 0.5703125]
    p["original_median_shape_after_transp"] = [48, 512, 512]
    del p["configurations"]["2d"]
    c = p["configurations"]["3d_fullres"]
    c["patch_size"] = PATCH
    c["median_image_size_in_voxels"] = [48.0, 234.0, 234.0]
    c["spacing"] = SPACING
    c["architecture"]["arch_kwargs"].update(
        {
            "n_stages": len(FEATURES),
            "features_per_stage": FEATURES,
            "kernel_sizes": KERNELS,
            "strides": STRIDES,
            "n_conv_per_stage": [2] * len(FEATURES),
            "n_conv_per_stage_decoder": [2] * (len(FEATURES) - 1),
        }
    )
    return p


def centre_classes(net, cm, pm, ds, ct):
    """As the fixtures' centre_classes, over the centre patch of `ct` (the corner of a full CT is
    air only): every class's mean logit there becomes 0."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    data, _, _ = DefaultPreprocessor(verbose=False).run_case([ct], None, pm, cm, ds)
    x = np.zeros((1, 1, *PATCH), dtype=np.float32)
    n = [min(a, b) for a, b in zip(data.shape[1:], PATCH)]
    o = [(a - b) // 2 for a, b in zip(data.shape[1:], n)]
    x[0, :, : n[0], : n[1], : n[2]] = data[:, o[0] : o[0] + n[0], o[1] : o[1] + n[1], o[2] : o[2] + n[2]]
    with torch.no_grad():
        y = net(torch.from_numpy(x))
        net.decoder.seg_layers[-1].bias -= y.mean(dim=(0, 2, 3, 4))


def make_model(folder, ct):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(ARGS.threads)
    os.makedirs(folder, exist_ok=True)
    plans = bench_plans()
    ds = fx.dataset_json(LABELS)
    with open(os.path.join(folder, "plans.json"), "w") as f:
        json.dump(plans, f, indent=4)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(ds, f, indent=4)
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    gen = torch.Generator().manual_seed(SEED)
    for fold in FOLDS:
        net = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            1,
            len(LABELS),
            allow_init=True,
            deep_supervision=False,
        )
        fx.randomise(net, gen)
        net.eval()
        centre_classes(net, cm, pm, ds, ct)
        path = os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth")
        fx.save_checkpoint(path, net, plans, "3d_fullres", fold, ds, gen, (0, 1, 2))
    print(json.dumps({"model": folder, "folds": list(FOLDS), "features": FEATURES, "patch": PATCH}))


def predict(args):
    from importlib.metadata import version

    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    t = time.perf_counter()
    # nnU-Net prints progress on stdout: the JSON line must be the only stdout output.
    with contextlib.redirect_stdout(sys.stderr):
        p = fx.predictor(args.model, folds_found(args.model, "checkpoint_final.pth"), True)
        trunc = os.path.join(args.output, case_name(args.input))
        p.predict_from_files_sequential([[args.input]], [trunc], save_probabilities=False, overwrite=True)
    predict_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "prog": "nnunetv2",
                "wall_s": time.perf_counter() - T0,
                "predict_s": predict_s,
                **peak_rss(),
                "threads": torch.get_num_threads(),
                "input": args.input,
                "output": trunc + ".mha",
                "versions": {n: version(n) for n in ("nnunetv2", "torch", "numpy", "SimpleITK")},
            }
        )
    )


def main():
    if ARGS.cmd == "make-model":
        make_model(ARGS.dir, ARGS.ct)
    else:
        predict(ARGS)


if __name__ == "__main__":
    main()
