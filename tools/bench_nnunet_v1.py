#!/usr/bin/env python3
"""nnU-Net v1's side of scripts/bench-segment.sh (NNUNET=v1): a benchmark nnU-Net v1 trained-model
folder, and nnU-Net v1's own predictor (nnunet.inference.predict.predict_cases) run on it on the
CPU, timed.

  /tmp/nnv1/bin/python tools/bench_nnunet_v1.py make-model DIR [--ct tests/data/real_ct/lung1.mha]
  /tmp/nnv1/bin/python tools/bench_nnunet_v1.py predict --model DIR --input CT --output DIR --threads 2

make-model writes DIR/plans.pkl and DIR/fold_{0,1}/model_final_checkpoint.model and .model.pkl,
made as tools/make_nnunet_v1_fixtures.py makes its fixtures (its functions are reused; the
committed fixtures are not touched): the plans dict saved with batchgenerators' save_pickle where
nnUNet_plan_and_preprocess puts it, nnUNetTrainerV2 constructed as nnUNet_train constructs it
(3d_fullres, stage 0, folds 0 and 1), initialize(training=False), random weights, the training
state that v1's run_training leaves behind (the fixtures' train_like), trainer.save_checkpoint, and
the plans file and the two checkpoint files copied into DIR. The v1 folders (raw, preprocessed,
results) live in a private temporary folder, removed afterwards; the pickles name its paths.
The model, as close to tools/bench_nnunet.py's v2 model as Generic_UNet allows:
  one stage, target spacing 5 x 1.25 x 1.25 mm (z, y, x), transpose [0, 1, 2], patch 40 x 160 x 160
  (do_dummy_2D_data_aug True: 160 / 40 > 3), poolings [1,2,2], [1,2,2], [2,2,2], [2,2,2], kernels
  [1,3,3], [1,3,3], [3,3,3], [3,3,3], [3,3,3], conv_per_stage 2, base_num_features 16. Generic_UNet
  doubles the features at every pooling up to 320, so the five stages have 16, 32, 64, 128, 256
  features: exactly the v2 model's features_per_stage, and the same convolutions (strided-conv
  pooling, conv bias, InstanceNorm3d eps 1e-5 affine, LeakyReLU 0.01, 2 convs per encoder and
  decoder stage, transposed-conv upsampling). What differs is Generic_UNet's: the transposed convs
  and the 1x1x1 segmentation heads have no bias (v2's have), and the state dict also holds the
  deep-supervision heads seg_outputs.0..3, which inference does not use (do_ds False).
  Normalisation 'CT' with the v2 model's foreground intensity properties (lung CT): clip to
  [percentile_00_5, percentile_99_5] = [-1000, 300], then (x - mean) / sd, mean -520, sd 330
  (median -640, min -1024, max 1500). Labels 0, 1, 2 (num_classes 2: GGO, consolidation).
  No postprocessing.json. Mirror axes (0, 1, 2) (v1's 3-D default): 8 passes per tile.
  Weights from seeded generators (seed 911, one generator, folds drawn in turn): the fixtures'
  randomise (He-initialised convs, every norm weight 1 + N(0, 0.3), every bias N(0, 0.2)); as
  Generic_UNet's heads have no bias, the full-resolution head's weights are projected orthogonal to
  the mean of its input features over the centre patch of the preprocessed CT (--ct, the
  benchmark's input; its corner is air only), so every class's mean logit there is 0 and all three
  labels occur.

predict runs predict_cases(DIR, [[CT]], [OUTPUT/<case>.nii.gz], folds=(0, 1), save_npz=False,
num_threads_preprocessing=1, num_threads_nifti_save=1, do_tta=True, mixed_precision=False,
overwrite_existing=True, all_in_gpu=False, step_size=0.5, checkpoint_name="model_final_checkpoint")
on the CPU (CUDA_VISIBLE_DEVICES=""), with torch.set_num_threads(THREADS) and OMP_NUM_THREADS /
MKL_NUM_THREADS set before torch loads. v1 writes NIfTI only: OUTPUT/<case>.nii.gz (uint8 labels).
Its preprocessing and its export each run in a child process (multiprocessing, fork). It prints one
JSON line on stdout (v1's own messages go to stderr): wall seconds of the whole process so far
(imports included) and of predict_cases, the peak RSS of this process and that of its waited-for
child processes (resource.getrusage ru_maxrss), peak_rss_mib being the larger of the two as
/usr/bin/time reports it, the thread count, the output file and the versions.
Timing here (2 threads, lung1.mha, 512 x 512 x 48): make-model about 20 s, one predict run 3.8 to
4.1 minutes, of which about 2 minutes of system CPU time (ctgrade segment: 2.4 to 2.6 minutes).
v1 writes into the model folder: restoring the trainer logs "Using dummy2d data augmentation" (this
patch is anisotropic), which creates DIR/fold_0/training_log_<date>.txt on every run.
torch >= 2.6 loads with weights_only=True and v1's load_model_and_checkpoint_files does not say
otherwise; the fixture script's torch.serialization.add_safe_globals workaround (numpy scalars in
plot_stuff and best_stuff) applies here too (importing it installs it).

Needs the venv of tools/make_nnunet_v1_fixtures.py (its pins are checked on import):
  python3 -m venv /tmp/nnv1 && /tmp/nnv1/bin/pip install nnunet==1.7.1 torch==2.15.0 numpy==1.26.4 \\
      SimpleITK==2.5.7 scipy==1.13.1 scikit-image==0.24.0 batchgenerators==0.25.1 safetensors==0.8.0
"""

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

T0 = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import case_name, folds_found, parse_args, peak_rss  # noqa: E402

ARGS = parse_args(__doc__, "nnU-Net v1's predict_cases")

# Importing the fixture script checks the pins, sets CUDA_VISIBLE_DEVICES="" and nnU-Net v1's three
# folder variables, imports nnunet and installs the safe-globals workaround; it also empties
# <tempdir>/ctgrade_nnunet_v1, its fixed root. A private tempdir keeps it off the real one (a
# fixture build running beside this one). nnunet.paths prints on stdout when imported: stderr.
PRIVATE = tempfile.mkdtemp(prefix="bench_nnunet_v1_")
tempfile.tempdir = PRIVATE
with contextlib.redirect_stdout(sys.stderr):
    import make_nnunet_v1_fixtures as fx  # noqa: E402
tempfile.tempdir = None
import numpy as np  # noqa: E402
import torch  # noqa: E402

SEED = 911
FOLDS = (0, 1)
TASK = "Task911_CtgradeBenchV1"
BASE_FEATURES = 16
POOLS = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
PATCH = [40, 160, 160]
SPACING = [5.0, 1.25, 1.25]
# tools/bench_nnunet.py's foreground intensity properties (tools/make_nnunet_fixtures.py).
MEAN, SD, P005, P995, MEDIAN, MIN, MAX = -520.0, 330.0, -1000.0, 300.0, -640.0, -1024.0, 1500.0


def bench_plans():
    """The fixtures' plain plans at the benchmark's size: one stage, 3d_fullres. The training-case
    list (list_of_npz_files, all_sizes, all_spacings, size_reductions) stays the fixtures'; v1's
    inference reads none of it."""
    stage = fx.stage_plan(2, PATCH, SPACING, [5.0, 0.5703125, 0.5703125], [48, 234, 234], POOLS, KERNELS)
    p = fx.plans(TASK, [stage], [1, 2], "CT", "CT", [0, 1, 2], fx.DATA_ID, "GenericPreprocessor")
    p["base_num_features"] = BASE_FEATURES
    ds = fx.dataset_properties("CT", MEAN, SD, P005, P995, MEDIAN, MIN, MAX, [1, 2])
    p["dataset_properties"] = ds
    p["original_spacings"] = ds["all_spacings"]
    p["original_sizes"] = ds["all_sizes"]
    return p


def centre_patch(data):
    """The centre patch of the preprocessed data (C, Z, Y, X), zero-padded where shorter."""
    x = np.zeros((1, data.shape[0], *PATCH), dtype=np.float32)
    n = [min(a, b) for a, b in zip(data.shape[1:], PATCH)]
    o = [(a - b) // 2 for a, b in zip(data.shape[1:], n)]
    x[0, :, : n[0], : n[1], : n[2]] = data[:, o[0] : o[0] + n[0], o[1] : o[1] + n[1], o[2] : o[2] + n[2]]
    return x


def make_model(folder, ct):
    from batchgenerators.utilities.file_and_folder_operations import save_pickle

    torch.set_num_threads(ARGS.threads)
    cls = fx.nnUNetTrainerV2
    dataset_dir = os.path.join(fx.PREPROCESSED, TASK)
    plans_file = os.path.join(dataset_dir, fx.PLANS_ID + "_plans_3D.pkl")
    os.makedirs(dataset_dir, exist_ok=True)
    save_pickle(bench_plans(), plans_file)
    output_base = os.path.join(fx.RESULTS, "nnUNet", "3d_fullres", TASK, f"{cls.__name__}__{fx.PLANS_ID}")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(plans_file, os.path.join(folder, "plans.pkl"))
    gen = torch.Generator().manual_seed(SEED)
    x = None
    for fold in FOLDS:
        trainer = cls(
            plans_file,
            fold,
            output_folder=output_base,
            dataset_directory=dataset_dir,
            batch_dice=False,
            stage=0,
            unpack_data=True,
            deterministic=False,
            fp16=True,
        )
        trainer.initialize(training=False)
        net = trainer.network
        fx.randomise(net, gen)
        net.eval()
        net.do_ds = False
        if x is None:
            data = trainer.preprocess_patient([ct])[0]
            print("preprocessed", data.shape, file=sys.stderr)
            x = centre_patch(np.ascontiguousarray(data, dtype=np.float32))
        fx.centre_classes(net, x)
        net.do_ds = True
        fx.train_like(trainer, gen)
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "model_final_checkpoint.model"))
        dst = os.path.join(folder, f"fold_{fold}")
        os.makedirs(dst, exist_ok=True)
        for f in ("model_final_checkpoint.model", "model_final_checkpoint.model.pkl"):
            shutil.copy(os.path.join(trainer.output_folder, f), os.path.join(dst, f))
    features = [min(BASE_FEATURES * 2**i, 320) for i in range(len(KERNELS))]
    return {"model": folder, "folds": list(FOLDS), "features": features, "patch": PATCH}


def predict(args):
    from importlib.metadata import version

    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    out = os.path.join(args.output, case_name(args.input) + ".nii.gz")
    t = time.perf_counter()
    folds = folds_found(args.model, "model_final_checkpoint.model")
    with contextlib.redirect_stdout(sys.stderr):
        fx.predict_cases(
            args.model,
            [[args.input]],
            [out],
            folds,
            save_npz=False,
            num_threads_preprocessing=1,
            num_threads_nifti_save=1,
            do_tta=True,
            mixed_precision=False,
            overwrite_existing=True,
            all_in_gpu=False,
            step_size=0.5,
            checkpoint_name="model_final_checkpoint",
        )
    predict_s = time.perf_counter() - t
    return {
        "prog": "nnunet-v1",
        "case": case_name(args.input),
        "wall_s": time.perf_counter() - T0,
        "predict_s": predict_s,
        **peak_rss(),
        "threads": torch.get_num_threads(),
        "folds": list(folds),
        "input": args.input,
        "output": out,
        "versions": {n: version(n) for n in ("nnunet", "torch", "numpy", "SimpleITK")},
    }


def main():
    try:
        if ARGS.cmd == "make-model":
            with contextlib.redirect_stdout(sys.stderr):
                line = make_model(ARGS.dir, ARGS.ct)
        else:
            line = predict(ARGS)
    finally:
        shutil.rmtree(PRIVATE, ignore_errors=True)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
