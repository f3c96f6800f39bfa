#!/usr/bin/env python3
"""Golden fixtures for nnU-Net v1 inference: small nnU-Net v1 trained-model folders with random
weights, written by nnU-Net v1's own trainer code, and what nnU-Net v1's own predictor
(nnunet.inference.predict.predict_cases, on the CPU) makes of the small real CT of
tests/fixtures/nnunet/ct.mha (see tools/make_nnunet_fixtures.py; read, not copied).

Models (tests/fixtures/nnunet_v1/<model>/: plans.pkl, fold_N/model_final_checkpoint.model and
fold_N/model_final_checkpoint.model.pkl; nothing else, in particular no training logs):
  plain    nnUNetTrainerV2, 3d_fullres, one stage (0), folds 0 and 1. Generic_UNet with InstanceNorm3d
           (eps 1e-5, affine), 3 poolings [1,2,2], [2,2,2], [2,2,2], kernels [1,3,3] then [3,3,3],
           base_num_features 4 (features 4, 8, 16, 32), conv_per_stage 2, transposed-conv
           upsampling, deep-supervision heads seg_outputs.0..2 (1x1x1, no bias; seg_outputs.2 is the
           full-resolution one). Patch 16 x 64 x 64, target spacing 4 x 1.25 x 1.25 mm (z, y, x):
           anisotropic beyond v1's threshold of 3, so resampling takes the separate-z path both
           ways (the CT's own 5 / 1.140625 spacing would trigger it in any case).
           Normalisation 'CT': clip to [percentile_00_5, percentile_99_5] = [-1000, 300], then
           (x - mean) / sd with mean -300, sd 400. transpose [0, 1, 2]. Labels 0, 1, 2 (num_classes 2).
           No postprocessing.json.
  stage1   nnUNetTrainerV2_DA3 created with stage=1 of a two-stage plan (stage 0: lowres, spacing
           6 x 2.5 x 2.5, patch 16 x 48 x 48; stage 1: spacing 4.5 x 1.6 x 1.6, patch 16 x 48 x 48,
           the plain model's poolings and kernels), transpose_forward = transpose_backward =
           [0, 2, 1] (the plans' spacings, shapes and patches are in that transposed order),
           normalisation 'nonCT' (z-score over the whole cropped volume: (x - mean) / (std + 1e-8)),
           labels 0, 1, fold 0. postprocessing.json: {"for_which_classes": [1],
           "min_valid_object_sizes": "None", ...}: keep only the largest lesion component
           (scipy.ndimage.label, face connectivity). With seed 1902 the raw prediction has 252 lesion
           components and the postprocessed one 1 (asserted: more than 2 before, 1 after).
  bn       nnUNetTrainerV2_DA3_BN: the plain model with BatchNorm3d (eps 1e-5, affine, momentum 0.1)
           instead of InstanceNorm3d, the same plans (same plans file, task 901), fold 0. BatchNorm's
           running_mean ~ N(0, 0.3), running_var ~ U(0.5, 2), num_batches_tracked 750.
  plain2d  nnUNetTrainerV2 on 2-D plans (nnUNetPlansv2.1_plans_2D.pkl: preprocessor
           PreprocessorFor2D, data identifier nnUNetData_plans_v2.1_2D): patch 96 x 96 (larger than
           the slices: padded), current_spacing [5.0, 1.25, 1.25] (three elements: v1's 2-D
           preprocessor replaces the first by the case's own z spacing, in place), poolings [2,2],
           [2,2], kernels [3,3] x 3, features 4, 8, 16, InstanceNorm2d; 'CT' normalisation as plain;
           labels 0, 1; fold 0; mirroring axes (0, 1) (3-D models: (0, 1, 2)).
How they are made: the plans dict is written with batchgenerators' save_pickle where
nnUNet_plan_and_preprocess puts it ($nnUNet_preprocessed/Task90N_.../nnUNetPlansv2.1_plans_3D.pkl or
_plans_2D.pkl) and copied byte for byte to <model>/plans.pkl (as the trainer's
save_debug_information does); the trainer is constructed as nnUNet_train constructs it
(plans_file, fold, output_folder=$RESULTS_FOLDER/nnUNet/<network>/<task>/<trainer>__nnUNetPlansv2.1,
dataset_directory, batch_dice, stage, unpack_data=True, deterministic=False, fp16=True), then
initialize(training=False), random weights, and trainer.save_checkpoint(<fold dir>/
model_final_checkpoint.model), which writes the .model and the .model.pkl. The three folders live
under a fixed temporary root (/tmp/ctgrade_nnunet_v1, removed afterwards), so the paths in the
pickles are the same on every run.
Weights (torch.Generator seeded 1901 plain, 1902 stage1, 1903 bn, 1904 plain2d; one generator per
model, folds drawn in turn): He-initialised conv weights, every norm affine weight 1 + N(0, 0.3),
every bias N(0, 0.2). Generic_UNet's segmentation heads have no bias, so instead the
full-resolution head's weights are projected orthogonal to the mean of its input features over the
first patch: each class's mean logit there is 0 and the labels vary.
Checkpoint contents, as v1's training leaves them: the .model file is a torch.save zip archive
(data.pkl, pickle protocol 2) holding a dict with keys epoch (3), state_dict (OrderedDict in
Generic_UNet's registration order: conv_blocks_localization.*, conv_blocks_context.*, tu.*,
seg_outputs.*; e.g. conv_blocks_context.0.blocks.0.conv.weight, ...blocks.0.instnorm.weight,
conv_blocks_context.3.0.blocks.0.conv.weight for the bottleneck, tu.0.weight, seg_outputs.2.weight;
bn adds instnorm.running_mean/running_var/num_batches_tracked), optimizer_state_dict (SGD, lr
poly_lr(3), momentum buffers from one step on random gradients; the saved weights are the drawn
ones), lr_scheduler_state_dict None, plot_stuff (four lists of np.float32: train, val, val in train
mode (empty), eval metric; 3 epochs), best_stuff (int, np.float32, np.float32) and amp_grad_scaler
(GradScaler state: fp16 training). Its data.pkl refers to _codecs.encode, collections.OrderedDict,
numpy.core.multiarray.scalar, numpy.dtype, torch.FloatStorage (bn: also torch.LongStorage) and
torch._utils._rebuild_tensor_v2. The .model.pkl (pickle protocol 4) is an OrderedDict: init (the
9-tuple of constructor arguments above), name (trainer class name), class (its str()), plans.
plans.pkl and the .model.pkl refer to collections.OrderedDict, numpy.core.multiarray._reconstruct,
numpy.ndarray, numpy.dtype and numpy.core.multiarray.scalar: ndarrays <f8 (current_spacing,
original_spacing, all_spacings) and <i8 (patch_size, median_patient_size_in_voxels), scalars
np.float32 (intensity median, mean, sd, mn, mx: DatasetAnalyzer computes them on float32 voxels),
np.float64 (percentile_00_5, percentile_99_5, size_reductions), np.int64 (transpose_forward[0],
every transpose_backward entry: np.argmax / np.argwhere in the planner) and np.bool_
(do_dummy_2D_data_aug, 3-D plans).

Input: tests/fixtures/nnunet/ct.mha (made by tools/make_nnunet_fixtures.py; 80 x 80 x 16 voxels,
1.140625 x 1.140625 x 5 mm, int16 HU, a zero border and an inner zero block), passed to v1 as it is
(v1 reads any SimpleITK format). v1 crops it to its non-zero region with holes filled: crop_bbox
(z, y, x) [[0, 16], [0, 78], [3, 80]].

Predictions: predict_cases(model, [[ct.mha]], [<run>.nii.gz], folds, save_npz=True,
num_threads_preprocessing=1, num_threads_nifti_save=1, do_tta=<mirroring>, mixed_precision=False,
overwrite_existing=True, all_in_gpu=False, step_size=0.5, checkpoint_name="model_final_checkpoint"),
on the CPU, from a copy of the model folder (v1's inference writes training logs into fold_0).
runs: plain_mirror (folds 0, 1, mirroring), plain_nomirror (folds 0, 1, no mirroring),
      stage1_mirror, bn_mirror, plain2d_mirror (fold 0, mirroring).
Files (tests/fixtures/nnunet_v1/):
  <run>_seg.mha        the label map v1 wrote (after its postprocessing for stage1), uint8, the CT's
                       geometry (read from v1's .nii.gz, rewritten compressed).
  <run>_prob<c>.mha    class c's probability as v1 saved it in the .npz ('softmax', float16, on the
                       cropped grid in the original axis order, before postprocessing), pasted into
                       the CT's grid at crop_bbox (outside: background 1, other classes 0); float32.
                       float16 rounding ties the top two probabilities at some voxels, where the
                       argmax of these maps picks the lower class while v1's labels come from the
                       float32 probabilities: cases.json gives the number of tied voxels
                       (float16_ties) and of voxels where the argmax differs (float16_argmax_differs:
                       78, 55, 312, 22, 122 for the five runs; all of them ties, asserted).
  stage1_mirror_seg_raw.mha  v1's own label map without postprocessing (a second predict_cases run
                       with disable_postprocessing=True): the float32 argmax, so that removing all
                       but the largest lesion component from it gives stage1_mirror_seg.mha exactly
                       (asserted with v1's remove_all_but_the_largest_connected_component).
  cases.json           the runs (model, folds, mirroring, files, label_counts; for stage1 also
                       label_counts_raw and lesion components before and after postprocessing), and
                       per model its trainer, stage, folds and v1's preprocessing properties
                       (original_size_of_raw_data, original_spacing, crop_bbox, size_after_cropping:
                       original axis order; spacing_after_resampling, size_after_resampling: the
                       transposed order) and the preprocessed shape.
  intermediates.safetensors (float32), to localise a mismatch:
    <model>.preprocessed       trainer.preprocess_patient([ct.mha])[0] for plain, stage1, plain2d:
                               (C, Z, Y, X) after transpose, resampling and normalisation (bn's is
                               plain's): plain (1, 20, 71, 70), stage1 (1, 18, 55, 56) (transposed:
                               z, x, y), plain2d (1, 16, 71, 70).
    <model>.fold0.patch_logits fold 0's network (eval, do_ds False) on the first patch of the
                               preprocessed data from voxel (0, 0, 0), zero-padded where the data is
                               shorter: raw logits (no softmax); plain and bn (1, 3, 16, 64, 64),
                               stage1 (1, 2, 16, 48, 48), plain2d the first slice (1, 2, 96, 96).
                               Checked equal to the logits of the network as v1's
                               load_model_and_checkpoint_files restores it.
Label counts (voxels of label 0 / 1 / 2 in the 102400-voxel grid): plain_mirror 24976 / 31311 /
46113, plain_nomirror 31407 / 31225 / 39768, stage1_mirror 53072 / 49328 (raw 51982 / 50418),
bn_mirror 36384 / 63757 / 2259, plain2d_mirror 43658 / 58742.

Workarounds (at run time, in this script; site-packages untouched):
  torch >= 2.6 loads with weights_only=True, and v1's load_model_and_checkpoint_files calls
  torch.load without weights_only; the numpy scalars in plot_stuff and best_stuff then fail to
  load. torch.serialization.add_safe_globals([numpy.core.multiarray.scalar, numpy.dtype,
  numpy.dtypes.Float32DType]) allows exactly those.
Note: for a model with one foreground class, v1's own determine_postprocessing would write
for_which_classes [[1]] (the "all foreground classes as one region" entry); [1] (the per-class form)
is used here. load_postprocessing reads both, with the same effect.

Run (70 to 130 s on 2 cores, depending on load; writes 8.3 MB, of which the five checkpoints
3.0 MB, intermediates.safetensors 2.9 MB and the probability maps 2.4 MB):
  python3 -m venv /tmp/nnv1 && /tmp/nnv1/bin/pip install nnunet==1.7.1 torch==2.15.0 numpy==1.26.4 \
      SimpleITK==2.5.7 scipy==1.13.1 scikit-image==0.24.0 batchgenerators==0.25.1 safetensors==0.8.0
(everything runs on the CPU: the script sets CUDA_VISIBLE_DEVICES="" before importing torch)
  /tmp/nnv1/bin/python tools/make_nnunet_v1_fixtures.py
"""

import json
import os
import pickle
import pickletools
import shutil
import sys
import tempfile
import time
import zipfile
from collections import OrderedDict

PINS = {
    "nnunet": "1.7.1",
    "torch": "2.15.0",
    "numpy": "1.26.4",
    "SimpleITK": "2.5.7",
    "scipy": "1.13.1",
    "scikit-image": "0.24.0",
    # nnU-Net v1's own dependency whose code computes results (resize_segmentation, pickles).
    "batchgenerators": "0.25.1",
    "safetensors": "0.8.0",
}


def check_versions():
    from importlib.metadata import version

    wrong = []
    for name, want in PINS.items():
        have = version(name)
        # torch wheels carry a local tag (2.15.0+cpu, +cu132): the release is what counts.
        if have.split("+")[0] != want:
            wrong.append(f"{name} {have} (want {want})")
    if wrong:
        sys.exit("wrong versions: " + ", ".join(wrong))


check_versions()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "nnunet_v1")
CT_PATH = os.path.join(ROOT, "tests", "fixtures", "nnunet", "ct.mha")

# nnU-Net v1 reads its three folders from the environment when nnunet.paths is first imported (and
# creates them). A fixed temporary root keeps the paths that the trainer stores in its pickles
# (init args: plans file, output and dataset folders) the same from run to run.
WORK = os.path.join(tempfile.gettempdir(), "ctgrade_nnunet_v1")
RAW = os.path.join(WORK, "nnUNet_raw_data_base")
PREPROCESSED = os.path.join(WORK, "nnUNet_preprocessed")
RESULTS = os.path.join(WORK, "nnUNet_trained_models")
shutil.rmtree(WORK, ignore_errors=True)
os.environ["nnUNet_raw_data_base"] = RAW
os.environ["nnUNet_preprocessed"] = PREPROCESSED
os.environ["RESULTS_FOLDER"] = RESULTS
# v1 moves networks and data to the GPU whenever torch.cuda.is_available(): the CPU it is.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import save_pickle  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from scipy.ndimage import label  # noqa: E402

from nnunet.inference.predict import predict_cases  # noqa: E402
from nnunet.postprocessing.connected_components import (  # noqa: E402
    load_postprocessing,
    remove_all_but_the_largest_connected_component,
)
from nnunet.training.learning_rate.poly_lr import poly_lr  # noqa: E402
from nnunet.training.model_restore import load_model_and_checkpoint_files  # noqa: E402
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2  # noqa: E402
from nnunet.training.network_training.nnUNet_variants.data_augmentation.nnUNetTrainerV2_DA3 import (  # noqa: E402
    nnUNetTrainerV2_DA3,
    nnUNetTrainerV2_DA3_BN,
)

# torch >= 2.6 loads with weights_only=True by default, and nnU-Net v1's
# load_model_and_checkpoint_files calls torch.load(path, map_location=cpu) without weights_only. A v1
# checkpoint holds numpy scalars (the losses and metrics in plot_stuff and best_stuff), which the
# weights-only unpickler refuses ("Unsupported global: numpy.core.multiarray.scalar"). Allowing
# exactly these numpy globals lets v1's own loading code run unchanged.
torch.serialization.add_safe_globals([np.core.multiarray.scalar, np.dtype, np.dtypes.Float32DType])

PLANS_ID = "nnUNetPlansv2.1"
DATA_ID = "nnUNetData_plans_v2.1"
CASES = [f"ctgrade_{i:03d}" for i in range(5)]
# The training cases the plans describe (sizes after cropping, spacings), as nnU-Net's
# DatasetAnalyzer records them: (z, y, x).
CASE_SIZES = [(16, 78, 77), (18, 80, 80), (16, 76, 78), (20, 80, 79), (17, 77, 80)]
CASE_SPACINGS = [[5.0, 1.140625, 1.140625], [5.0, 1.1, 1.1], [4.5, 1.2, 1.2], [5.0, 1.15, 1.15], [5.0, 1.140625, 1.140625]]
EPOCHS = 3  # the training history stored in the checkpoints
BATCHES_PER_EPOCH = 250


# ----------------------------------------------------------------------------------------- plans


def dataset_properties(modality, mean, sd, p005, p995, median, mn, mx, classes):
    """What nnU-Net v1's DatasetAnalyzer.analyze_dataset stores. The foreground statistics are
    computed on float32 voxels: median, mean, sd, mn and mx come out as np.float32 and the
    percentiles as np.float64 (np.percentile), as here."""
    local = OrderedDict()
    for i, case in enumerate(CASES):
        d = 5.0 * (i - 2)
        local[case] = OrderedDict(
            [
                ("median", np.float32(median + d)),
                ("mean", np.float32(mean + d)),
                ("sd", np.float32(sd - d)),
                ("mn", np.float32(mn)),
                ("mx", np.float32(mx - 10 * i)),
                ("percentile_99_5", np.float64(p995 + d)),
                ("percentile_00_5", np.float64(p005 - d)),
            ]
        )
    props = OrderedDict()
    props["local_props"] = local
    props["median"] = np.float32(median)
    props["mean"] = np.float32(mean)
    props["sd"] = np.float32(sd)
    props["mn"] = np.float32(mn)
    props["mx"] = np.float32(mx)
    props["percentile_99_5"] = np.float64(p995)
    props["percentile_00_5"] = np.float64(p005)
    size_reductions = OrderedDict()
    for case, size in zip(CASES, CASE_SIZES):
        size_reductions[case] = np.prod(size) / np.prod(np.array([size[0], 80, 80]))
    return {
        "all_sizes": list(CASE_SIZES),
        "all_spacings": [np.array(s) for s in CASE_SPACINGS],
        "all_classes": list(classes),
        "modalities": {0: modality},
        "intensityproperties": OrderedDict([(0, props)]),
        "size_reductions": size_reductions,
    }


def transposes(forward):
    # ExperimentPlanner.plan_experiment: forward = [np.argmax(spacing)] + remaining axes (python
    # ints), backward = np.argwhere(...)[0][0] per axis: numpy ints, as here.
    fwd = [np.int64(forward[0])] + list(forward[1:])
    bwd = [np.argwhere(np.array(fwd) == i)[0][0] for i in range(3)]
    return fwd, bwd


def stage_plan(batch_size, patch, spacing, original_spacing, median_shape, pools, kernels):
    """One entry of plans_per_stage as ExperimentPlanner3D_v21.get_properties_for_stage writes it
    (3-D: spacing, shape and patch in transposed axis order)."""
    patch = np.array(patch).astype(int)
    num_pool = [int(sum(1 for p in pools if p[a] == 2)) for a in range(len(patch))]
    return {
        "batch_size": batch_size,
        "num_pool_per_axis": num_pool,
        "patch_size": patch,
        "median_patient_size_in_voxels": np.array(median_shape).astype(int),
        "current_spacing": np.array(spacing, dtype=np.float64),
        "original_spacing": np.array(original_spacing, dtype=np.float64),
        "do_dummy_2D_data_aug": (max(patch) / patch[0]) > 3,
        "pool_op_kernel_sizes": pools,
        "conv_kernel_sizes": kernels,
    }


def plans(task, stages, classes, scheme, modality, forward, data_identifier, preprocessor):
    fwd, bwd = transposes(forward)
    ds = dataset_properties(modality, -300.0, 400.0, -1000.0, 300.0, -420.0, -1024.0, 1800.0, classes)
    cropped = os.path.join(RAW, "nnUNet_cropped_data", task)
    return {
        "num_stages": len(stages),
        "num_modalities": 1,
        "modalities": {0: modality},
        "normalization_schemes": OrderedDict([(0, scheme)]),
        "dataset_properties": ds,
        "list_of_npz_files": [os.path.join(cropped, c + ".npz") for c in CASES],
        "original_spacings": ds["all_spacings"],
        "original_sizes": ds["all_sizes"],
        "preprocessed_data_folder": os.path.join(PREPROCESSED, task),
        "num_classes": len(classes),
        "all_classes": list(classes),
        "base_num_features": 4,
        "use_mask_for_norm": OrderedDict([(0, False)]),
        "keep_only_largest_region": None,
        "min_region_size_per_class": None,
        "min_size_per_class": None,
        "transpose_forward": fwd,
        "transpose_backward": bwd,
        "data_identifier": data_identifier,
        "plans_per_stage": {i: s for i, s in enumerate(stages)},
        "preprocessor_name": preprocessor,
        "conv_per_stage": 2,
    }


POOLS_3D = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]


def plain_plans():
    stage = stage_plan(2, [16, 64, 64], [4.0, 1.25, 1.25], [4.0, 1.25, 1.25], [20, 71, 70], POOLS_3D, KERNELS_3D)
    return plans("Task901_CtgradePlain", [stage], [1, 2], "CT", "CT", [0, 1, 2], DATA_ID, "GenericPreprocessor")


def stage1_plans():
    # Spacings, shapes and patches in transposed order (transpose_forward [0, 2, 1]; y and x alike).
    low = stage_plan(2, [16, 48, 48], [6.0, 2.5, 2.5], [4.5, 1.6, 1.6], [13, 36, 36], POOLS_3D, KERNELS_3D)
    full = stage_plan(2, [16, 48, 48], [4.5, 1.6, 1.6], [4.5, 1.6, 1.6], [18, 56, 55], POOLS_3D, KERNELS_3D)
    # A modality other than CT is what makes nnU-Net's planner choose 'nonCT' (z-scoring per case).
    return plans("Task902_CtgradeStage1", [low, full], [1], "nonCT", "MR", [0, 2, 1], DATA_ID, "GenericPreprocessor")


def plain2d_plans():
    # ExperimentPlanner2D_v21.get_properties_for_stage: 2-D patch and kernels, 3-element spacings.
    stage = {
        "batch_size": 32,
        "num_pool_per_axis": [2, 2],
        "patch_size": np.array([96, 96]).astype(int),
        "median_patient_size_in_voxels": np.array([16, 71, 70]).astype(int),
        "current_spacing": np.array([5.0, 1.25, 1.25]),
        "original_spacing": np.array([5.0, 1.25, 1.25]),
        "pool_op_kernel_sizes": [[2, 2], [2, 2]],
        "conv_kernel_sizes": [[3, 3], [3, 3], [3, 3]],
        "do_dummy_2D_data_aug": False,
    }
    return plans(
        "Task903_CtgradePlain2d", [stage], [1], "CT", "CT", [0, 1, 2], DATA_ID + "_2D", "PreprocessorFor2D"
    )


# ----------------------------------------------------------------------------------------- models


def randomise(net, gen):
    """He-initialised weights, then every norm affine parameter and every bias moved off its
    initial value (1 and 0), so that a missing scale, shift or bias shows in the outputs. BatchNorm
    running statistics get non-trivial values too (mean N(0, 0.3), variance U(0.5, 2))."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("instnorm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                b.fill_(EPOCHS * BATCHES_PER_EPOCH)


def first_patch(data, patch):
    """The first patch of the preprocessed data (C, Z, Y, X), from voxel (0, 0, 0), zero-padded
    where the data is shorter: (1, C, *patch). In 2-D the first slice."""
    x = np.zeros((1, data.shape[0], *patch), dtype=np.float32)
    if len(patch) == 3:
        n = [min(a, b) for a, b in zip(data.shape[1:], patch)]
        x[0, :, : n[0], : n[1], : n[2]] = data[:, : n[0], : n[1], : n[2]]
    else:
        n = [min(a, b) for a, b in zip(data.shape[2:], patch)]
        x[0, :, : n[0], : n[1]] = data[:, 0, : n[0], : n[1]]
    return x


def centre_classes(net, x):
    """Generic_UNet's segmentation layers have no bias (seg_output_use_bias=False), so instead of a
    bias shift the last one's weights are projected orthogonal to the mean of its input features
    over the first patch: every class then has mean logit 0 there, and the labels vary (a random
    network otherwise labels nearly every voxel alike)."""
    seg = net.seg_outputs[-1]
    feats = []
    hook = seg.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        net(torch.from_numpy(x))
    hook.remove()
    mu = feats[0].double().mean(dim=(0, *range(2, feats[0].ndim)))  # (F,)
    with torch.no_grad():
        w = seg.weight.double().reshape(seg.weight.shape[0], -1)  # (classes, F)
        w = w - (w @ mu)[:, None] * mu[None, :] / (mu @ mu)
        seg.weight.copy_(w.reshape(seg.weight.shape).float())


def train_like(trainer, gen):
    """State that nnU-Net v1's run_training leaves behind before it saves model_final_checkpoint:
    EPOCHS epochs of history (run_iteration returns float32 numpy losses, so the means are
    np.float32, as are the Dice-based metrics and moving averages), self.epoch decremented after
    the loop, the poly learning rate, SGD momentum buffers (one step on random gradients; the saved
    weights are the drawn ones) and the fp16 GradScaler's state."""
    net = trainer.network
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    for p in net.parameters():
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    net.load_state_dict(weights)
    trainer.optimizer.param_groups[0]["lr"] = poly_lr(EPOCHS, trainer.max_num_epochs, trainer.initial_lr, 0.9)
    trainer.all_tr_losses = [np.float32(-0.1 * i - 0.05) for i in range(EPOCHS)]
    trainer.all_val_losses = [np.float32(-0.1 * i - 0.02) for i in range(EPOCHS)]
    trainer.all_val_losses_tr_mode = []
    trainer.all_val_eval_metrics = [np.float32(0.1 * i + 0.1) for i in range(EPOCHS)]
    trainer.epoch = EPOCHS - 1
    trainer.best_epoch_based_on_MA_tr_loss = EPOCHS - 1
    trainer.best_MA_tr_loss_for_patience = np.float32(-0.12)
    trainer.best_val_eval_criterion_MA = np.float32(0.21)
    # nnUNet_train runs with fp16 (mixed precision) unless --fp32; on a GPU
    # NetworkTrainer._maybe_init_amp creates a GradScaler, saved as 'amp_grad_scaler'. The CPU
    # GradScaler has the same state.
    trainer.amp_grad_scaler = torch.amp.GradScaler("cpu")


MODELS = {
    # name: (trainer class, plans, network, task, stage, batch_dice, folds, seed)
    "plain": (nnUNetTrainerV2, plain_plans, "3d_fullres", "Task901_CtgradePlain", 0, False, (0, 1), 1901),
    "stage1": (nnUNetTrainerV2_DA3, stage1_plans, "3d_fullres", "Task902_CtgradeStage1", 1, True, (0,), 1902),
    "bn": (nnUNetTrainerV2_DA3_BN, plain_plans, "3d_fullres", "Task901_CtgradePlain", 0, False, (0,), 1903),
    "plain2d": (nnUNetTrainerV2, plain2d_plans, "2d", "Task903_CtgradePlain2d", 0, True, (0,), 1904),
}
POSTPROCESSING = {
    "stage1": {
        "dc_per_class_raw": {},
        "dc_per_class_pp_all": {},
        "for_which_classes": [1],
        "min_valid_object_sizes": "None",
    }
}


def build_model(name, tensors):
    """Writes the plans where nnUNet_plan_and_preprocess puts them, runs v1's trainer through
    __init__ (as nnUNet_train does), initialize(training=False), random weights, save_checkpoint,
    and copies the model folder (plans.pkl, fold_N/model_final_checkpoint.model[.pkl]) into OUT.
    Returns the preprocessed CT and its properties (from fold 0's trainer.preprocess_patient)."""
    cls, make_plans, network, task, stage, batch_dice, folds, seed = MODELS[name]
    p = make_plans()
    two_d = network == "2d"
    dataset_dir = os.path.join(PREPROCESSED, task)
    plans_file = os.path.join(dataset_dir, PLANS_ID + ("_plans_2D.pkl" if two_d else "_plans_3D.pkl"))
    os.makedirs(dataset_dir, exist_ok=True)
    if not os.path.exists(plans_file):
        save_pickle(p, plans_file)
    output_base = os.path.join(RESULTS, "nnUNet", network, task, f"{cls.__name__}__{PLANS_ID}")
    dst = os.path.join(OUT, name)
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    # NetworkTrainer.save_debug_information copies the plans file to the output folder's plans.pkl.
    shutil.copy(plans_file, os.path.join(dst, "plans.pkl"))
    gen = torch.Generator().manual_seed(seed)
    data = props = None
    for fold in folds:
        trainer = cls(
            plans_file,
            fold,
            output_folder=output_base,
            dataset_directory=dataset_dir,
            batch_dice=batch_dice,
            stage=stage,
            unpack_data=True,
            deterministic=False,
            fp16=True,
        )
        trainer.initialize(training=False)
        net = trainer.network
        randomise(net, gen)
        net.eval()
        net.do_ds = False
        if data is None:
            data, _, props = trainer.preprocess_patient([CT_PATH])
            data = np.ascontiguousarray(data, dtype=np.float32)
        patch = tuple(int(s) for s in trainer.patch_size)
        x = first_patch(data, patch)
        centre_classes(net, x)
        if fold == 0:
            with torch.no_grad():
                y = net(torch.from_numpy(x)).numpy()
            tensors[f"{name}.fold0.patch_logits"] = np.ascontiguousarray(y, dtype=np.float32)
        net.do_ds = True
        train_like(trainer, gen)
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "model_final_checkpoint.model"))
        fold_dst = os.path.join(dst, f"fold_{fold}")
        os.makedirs(fold_dst)
        for f in ("model_final_checkpoint.model", "model_final_checkpoint.model.pkl"):
            shutil.copy(os.path.join(trainer.output_folder, f), os.path.join(fold_dst, f))
    if name in POSTPROCESSING:
        with open(os.path.join(dst, "postprocessing.json"), "w") as f:
            json.dump(POSTPROCESSING[name], f, indent=4)
    return data, props


# ----------------------------------------------------------------------------------------- runs

RUNS = [
    # run, model, folds, mirroring
    ("plain_mirror", "plain", (0, 1), True),
    ("plain_nomirror", "plain", (0, 1), False),
    ("stage1_mirror", "stage1", (0,), True),
    ("bn_mirror", "bn", (0,), True),
    ("plain2d_mirror", "plain2d", (0,), True),
]


def write_like(arr, ref, path):
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    sitk.WriteImage(img, path, useCompression=True)


def components(seg, c):
    return int(label(seg == c)[1])  # scipy's default (face) connectivity, as v1's postprocessing


def model_copy(model):
    # v1's inference writes into the model folder (trainers that log "Using dummy2d data
    # augmentation" create fold_0/training_log_<time>.txt): it runs on a copy.
    model_dir = os.path.join(WORK, "models", model)
    if not os.path.isdir(model_dir):
        shutil.copytree(os.path.join(OUT, model), model_dir)
    return model_dir


def check_patch_logits(model, tensors):
    """The stored patch logits again, from the checkpoint as v1's predictor restores it."""
    trainer, params = load_model_and_checkpoint_files(
        model_copy(model), (0,), mixed_precision=False, checkpoint_name="model_final_checkpoint"
    )
    trainer.load_checkpoint_ram(params[0], False)
    net = trainer.network
    net.eval()
    net.do_ds = False
    data = tensors[f"{'plain' if model == 'bn' else model}.preprocessed"]
    x = first_patch(data, tuple(int(s) for s in trainer.patch_size))
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    want = tensors[f"{model}.fold0.patch_logits"]
    assert np.array_equal(y, want), (model, np.abs(y - want).max())


def run_case(run, model, folds, mirroring, work, disable_postprocessing=False):
    model_dir = model_copy(model)
    out = os.path.join(work, run + ".nii.gz")
    predict_cases(
        model_dir,
        [[CT_PATH]],
        [out],
        folds,
        save_npz=True,
        num_threads_preprocessing=1,
        num_threads_nifti_save=1,
        do_tta=mirroring,
        mixed_precision=False,
        overwrite_existing=True,
        all_in_gpu=False,
        step_size=0.5,
        checkpoint_name="model_final_checkpoint",
        disable_postprocessing=disable_postprocessing,
    )
    return out


def plain_props(props):
    return {
        "original_size_of_raw_data": [int(s) for s in props["original_size_of_raw_data"]],
        "original_spacing": [float(s) for s in props["original_spacing"]],
        "crop_bbox": [[int(a), int(b)] for a, b in props["crop_bbox"]],
        "size_after_cropping": [int(s) for s in props["size_after_cropping"]],
        "spacing_after_resampling": [float(s) for s in props["spacing_after_resampling"]],
        "size_after_resampling": [int(s) for s in props["size_after_resampling"]],
    }


def pickle_globals(data):
    """The globals (module.name) a pickle refers to, read from its opcodes (nothing is imported)."""
    found = set()
    pushed = []  # values pushed by the recent opcodes (None: not a string)
    memo = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(None)
        else:
            pushed.append(None)
    return sorted(found)


def numpy_types(obj, found=None):
    """The numpy scalar and array types (with dtypes) inside a loaded pickle, tensors skipped."""
    found = set() if found is None else found
    if isinstance(obj, np.ndarray):
        found.add(f"ndarray[{obj.dtype.str}]")
    elif isinstance(obj, np.generic):
        found.add(f"{type(obj).__name__}[{obj.dtype.str}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            numpy_types(k, found)
            numpy_types(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            numpy_types(v, found)
    return found


def describe_pickles():
    """Prints what the Rust loader has to understand: the globals in each pickle and the layout of
    the .model (torch zip) checkpoints."""
    for name in MODELS:
        folder = os.path.join(OUT, name)
        with open(os.path.join(folder, "plans.pkl"), "rb") as f:
            raw = f.read()
        print(f"{name}/plans.pkl globals:", pickle_globals(raw), "numpy:", sorted(numpy_types(pickle.loads(raw))))
        with open(os.path.join(folder, "fold_0", "model_final_checkpoint.model.pkl"), "rb") as f:
            raw = f.read()
        print(f"{name}/fold_0/model_final_checkpoint.model.pkl globals:", pickle_globals(raw))
        print("  numpy:", sorted(numpy_types(pickle.loads(raw))))
        info = pickle.loads(raw)
        print("  keys", list(info), "name", info["name"], "class", info["class"], "init", info["init"])
        model = os.path.join(folder, "fold_0", "model_final_checkpoint.model")
        print(f"{name}/fold_0/model_final_checkpoint.model zip:", zipfile.is_zipfile(model))
        with zipfile.ZipFile(model) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("data.pkl")][0]
            print("  members", len(names), names[:3], "... data.pkl globals:", pickle_globals(z.read(pkl)))
        ck = torch.load(model, map_location="cpu")
        print("  top-level keys", list(ck), "numpy:", sorted(numpy_types(ck)))
        print("  optimizer", list(ck["optimizer_state_dict"]), ck["optimizer_state_dict"]["param_groups"][0].keys())
        print("  epoch", ck["epoch"], "plot_stuff", ck["plot_stuff"], "best_stuff", ck["best_stuff"])
        print("  amp_grad_scaler", ck.get("amp_grad_scaler"), "lr_scheduler", ck["lr_scheduler_state_dict"])
        if name in ("plain", "bn"):
            for k, v in ck["state_dict"].items():
                print(f"    {k} {tuple(v.shape)} {v.dtype}")


def main():
    t0 = time.time()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    np.random.seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    ct = sitk.ReadImage(CT_PATH)

    tensors = {}
    shapes = {}
    run_props = {}
    for name in MODELS:
        data, _ = build_model(name, tensors)
        shapes[name] = list(data.shape)
        if name != "bn":  # bn preprocesses exactly as plain (same plans)
            tensors[f"{name}.preprocessed"] = data

    for name in MODELS:
        check_patch_logits(name, tensors)

    work = os.path.join(WORK, "predictions")
    runs = []
    for run, model, folds, mirroring in RUNS:
        out = run_case(run, model, folds, mirroring, work)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(out)).astype(np.uint8)
        write_like(seg, ct, os.path.join(OUT, f"{run}_seg.mha"))
        softmax = np.load(out[:-7] + ".npz")["softmax"]
        with open(out[:-7] + ".pkl", "rb") as f:
            props = pickle.load(f)
        assert softmax.dtype == np.float16, softmax.dtype
        bbox = props["crop_bbox"]
        full = np.zeros((softmax.shape[0], *seg.shape), dtype=np.float32)
        full[0] = 1.0
        full[:, bbox[0][0] : bbox[0][1], bbox[1][0] : bbox[1][1], bbox[2][0] : bbox[2][1]] = softmax
        files = []
        for c in range(full.shape[0]):
            f = f"{run}_prob{c}.mha"
            write_like(full[c], ct, os.path.join(OUT, f))
            files.append(f)
        entry = {
            "name": run,
            "model": model,
            "folds": list(folds),
            "mirroring": mirroring,
            "step_size": 0.5,
            "segmentation": f"{run}_seg.mha",
            "probabilities": files,
            "label_counts": {str(c): int((seg == c).sum()) for c in range(full.shape[0])},
        }
        # float16 rounding ties some voxels' top two probabilities; there the argmax of the .npz
        # (the first class) can differ from v1's label map (argmax of float32).
        top = np.sort(full, 0)
        tied = top[-1] == top[-2]
        entry["float16_ties"] = int(tied.sum())
        argmax16 = full.argmax(0).astype(np.uint8)
        if model in POSTPROCESSING:
            # v1's own label map without postprocessing (a second run, disable_postprocessing=True):
            # the float32 argmax, from which postprocessing.json's rule gives the _seg map.
            v1raw = run_case(run + "_nopp", model, folds, mirroring, work, disable_postprocessing=True)
            raw = sitk.GetArrayFromImage(sitk.ReadImage(v1raw)).astype(np.uint8)
            fwc, min_size = load_postprocessing(os.path.join(OUT, model, "postprocessing.json"))
            pp = remove_all_but_the_largest_connected_component(raw.copy(), fwc, float(np.prod(ct.GetSpacing())), min_size)[0]
            assert (pp == seg).all()
            write_like(raw, ct, os.path.join(OUT, f"{run}_seg_raw.mha"))
            entry["segmentation_raw"] = f"{run}_seg_raw.mha"
            entry["label_counts_raw"] = {str(c): int((raw == c).sum()) for c in range(full.shape[0])}
            entry["components_raw"] = {str(c): components(raw, c) for c in range(1, full.shape[0])}
            entry["components"] = {str(c): components(seg, c) for c in range(1, full.shape[0])}
            assert entry["components_raw"]["1"] > 2, entry
            assert entry["components"]["1"] == 1, entry
        else:
            raw = seg
        differ = argmax16 != raw
        assert tied[differ].all()
        print(f"{run}: argmax of the float16 probabilities differs from v1's labels at {int(differ.sum())} voxels, all ties")
        entry["float16_argmax_differs"] = int(differ.sum())
        runs.append(entry)
        run_props.setdefault(model, plain_props(props))

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        models = {}
        for name, (cls, _, network, task, stage, _, folds, seed) in MODELS.items():
            models[name] = {
                "trainer": cls.__name__,
                "network": network,
                "stage": stage,
                "folds": list(folds),
                "postprocessing": name in POSTPROCESSING,
                "properties": run_props[name],
                "preprocessed_shape": shapes[name],
            }
        json.dump(
            {"input": "../nnunet/ct.mha", "versions": PINS, "models": models, "runs": runs}, f, indent=2
        )
    save_file(tensors, os.path.join(OUT, "intermediates.safetensors"))
    shutil.rmtree(WORK, ignore_errors=True)

    describe_pickles()
    for r in runs:
        print(r["name"], r["label_counts"], r.get("label_counts_raw", ""), r.get("components_raw", ""), r.get("components", ""))
    total = 0
    for dirpath, _, names in os.walk(OUT):
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            total += os.path.getsize(p)
            print(f"{os.path.getsize(p):>9}  {os.path.relpath(p, OUT)}")
    print(f"wrote {OUT}: {total / 1e6:.2f} MB in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
