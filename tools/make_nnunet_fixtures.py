#!/usr/bin/env python3
"""Golden fixtures for nnU-Net v2 inference (src/segment/): small nnU-Net v2 trained-model folders
with random weights, laid out exactly as nnU-Net's trainer leaves them, one small real CT, and what
nnunetv2's own predictor (nnUNetPredictor, on the CPU) makes of it. tests/nnunet_parity.rs and the
unit tests of src/segment/ compare ctgrade with these.

Models (tests/fixtures/nnunet/<model>/: dataset.json, plans.json, fold_N/checkpoint_final.pth):
  plain   PlainConvUNet, configuration 3d_fullres, folds 0 and 1, 4 stages (features 4, 8, 12, 16),
          kernels [1,3,3] then [3,3,3], strides [1,1,1], [1,2,2], [2,2,2], [2,2,2], patch 16x64x64,
          conv_bias True, InstanceNorm3d eps 1e-5, 2 convs per stage, target spacing 4 x 1.25 x 1.25 mm (z, y, x):
          anisotropic beyond nnU-Net's threshold of 3, so resampling takes the separate-z path both
          ways; CTNormalization; labels background, GGO, consolidation.
  resenc  ResidualEncoderUNet (BasicBlockD), fold 0, configuration `3d_fullres_resenc`, which
          `inherits_from` 3d_fullres and overrides its architecture and patch; transpose_forward
          [0, 2, 1]; features 4, 8, 12, 16, blocks 1, 1, 2, 1; spacing 4.5 x 1.6 x 1.6 mm (no
          separate z), ZScoreNormalization, eps 1e-4;
          labels background, lesion.
  plain2d the plain model's plans, configuration 2d: PlainConvUNet with Conv2d, 3 stages
          (features 4, 8, 16), patch 96 x 96 (larger than the slices: padded), spacing 1.25 x 1.25
          in-plane; fold 0; mirroring axes (0, 1); labels background, lesion.
Every checkpoint is a dict saved with torch.save as nnU-Net's trainer saves it: network_weights
(the state dict, with dynamic_network_architectures' alias names), optimizer_state (SGD with
momentum buffers after one step), grad_scaler_state None, logging (numpy floats), _best_ema,
current_epoch, init_args (plans, configuration, fold, dataset_json, device), trainer_name
'nnUNetTrainer', inference_allowed_mirroring_axes ((0, 1, 2); (0, 1) in 2-D). Weights are drawn from a seeded
generator, with InstanceNorm affine parameters and every bias drawn away from their initial values
so that each term shows; the last segmentation layer's bias then centres each class's mean logit
over the CT's first patch, so that the labels vary.

Input: ct.mha, cut from the repository's real CT (tests/data/real_ct/lung1.mha, pyradiomics'
lung1, BSD-3-Clause): slices 16..31, an in-plane window of 160 x 160 voxels from (176, 170)
averaged 2 x 2 to 80 x 80 at 1.140625 mm (z spacing 5 mm), int16 HU. Its first three columns and last two rows are
set to 0 and a 3 x 6 x 6 block inside is set to 0, so nnU-Net's crop to the non-zero region cuts
a border and its hole filling keeps the inner block.

Predictions (nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, device=cpu,
perform_everything_on_device=False).predict_from_files_sequential, save_probabilities=True):
  <run>_seg.mha         the label map nnU-Net writes (uint8, the CT's geometry)
  <run>_prob<c>.mha     the probability of class c (float32, the CT's geometry), from the .npz
runs: plain_mirror (folds 0, 1, mirroring), plain_nomirror (folds 0, 1, no mirroring),
      resenc_mirror, resenc_nomirror (fold 0), plain2d_mirror (fold 0).
cases.json lists the runs (model, folds, mirroring, files) and nnU-Net's preprocessing properties.

Intermediates (intermediates.safetensors, float32), to localise a mismatch:
  plain.preprocessed      DefaultPreprocessor.run_case on ct.mha with the plain model: (C, Z, Y, X)
  resenc.preprocessed     the same for resenc (after its transpose_forward)
  plain.fold0.patch_logits  the network of fold 0 (eval mode) on the first patch of the
                          preprocessed data: (1, 1, 16, 64, 64) from voxel (0, 0, 0), zero-padded
                          where the data is shorter
  resenc.fold0.patch_logits   the same for resenc, patch 16 x 48 x 48
  plain2d.preprocessed, plain2d.fold0.patch_logits   the same for plain2d: its first slice,
                          (1, 1, 96, 96)
  plain.logits_mirror     predict_logits_from_preprocessed_data (both folds, mirroring; float16, as
                          nnU-Net accumulates them): the
                          sliding-window logits before export, (C, Z, Y, X)

Run (about 2 minutes on 2 cores; writes about 8 MB):
  python3 -m venv /tmp/nnenv
  /tmp/nnenv/bin/pip install torch==2.15.0 nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 \
      numpy==2.4.6 SimpleITK==2.5.7 scipy==1.17.1 scikit-image==0.26.0 safetensors==0.8.0 \
      acvl_utils==0.2.6 batchgenerators==0.25.5
(PyPI's torch wheel; the predictor runs on the CPU, device=cpu.)
  /tmp/nnenv/bin/python tools/make_nnunet_fixtures.py [path/to/lung1.mha]
The CT defaults to the repository's tests/data/real_ct/lung1.mha.
"""

import json
import os
import shutil
import sys
import tempfile

PINS = {
    "nnunetv2": "2.8.1",
    "torch": "2.15.0",
    "dynamic_network_architectures": "0.4.4",
    "numpy": "2.4.6",
    "SimpleITK": "2.5.7",
    "scipy": "1.17.1",
    "scikit-image": "0.26.0",
    "safetensors": "0.8.0",
    # nnunetv2's own dependencies whose code computes results (padding, cropping).
    "acvl_utils": "0.2.6",
    "batchgenerators": "0.25.5",
}


def check_versions():
    from importlib.metadata import version

    wrong = []
    for name, want in PINS.items():
        have = version(name)
        # CPU wheels carry a local tag (2.15.0+cpu): the release is what counts.
        if have.split("+")[0] != want:
            wrong.append(f"{name} {have} (want {want})")
    if wrong:
        sys.exit("wrong versions: " + ", ".join(wrong))


check_versions()

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "nnunet")
CT_PATH = os.path.join(OUT, "ct.mha")

LEAKY = {"inplace": True}  # nnU-Net's plans; the slope is LeakyReLU's default 0.01


def find_ct():
    if len(sys.argv) > 1:
        return sys.argv[1]
    p = os.path.join(ROOT, "tests", "data", "real_ct", "lung1.mha")
    if os.path.exists(p):
        return p
    sys.exit(f"{p} not found: pass the CT's path")


def make_ct(src, dst):
    img = sitk.ReadImage(src)
    a = sitk.GetArrayFromImage(img).astype(np.float64)  # (z, y, x)
    z0, y0, x0 = 16, 170, 176
    a = a[z0 : z0 + 16, y0 : y0 + 160, x0 : x0 + 160]
    a = a.reshape(16, 80, 2, 80, 2).mean(axis=(2, 4))
    a = np.round(a).astype(np.int16)
    a[:, :, :3] = 0
    a[:, -2:, :] = 0
    a[6:9, 40:46, 50:56] = 0
    out = sitk.GetImageFromArray(a)
    sp = img.GetSpacing()
    out.SetSpacing((sp[0] * 2, sp[1] * 2, sp[2]))
    # The centre of the first averaged voxel: half an original voxel in from the window's corner.
    corner = img.TransformIndexToPhysicalPoint((x0, y0, z0))
    out.SetOrigin((corner[0] + sp[0] / 2, corner[1] + sp[1] / 2, corner[2]))
    out.SetDirection(img.GetDirection())
    sitk.WriteImage(out, dst, useCompression=True)
    return a


def conv_kwargs(dim=3):
    return {
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": LEAKY,
    }


REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def resampling_entries():
    return {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
    }


def plain_plans():
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 4,
            "features_per_stage": [4, 8, 12, 16],
            **conv_kwargs(),
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2, 2],
            "conv_bias": True,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        },
        "_kw_requires_import": REQ_IMPORT,
    }
    return {
        "dataset_name": "Dataset901_CtgradePlain",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [5.0, 1.140625, 1.140625],
        "original_median_shape_after_transp": [16, 80, 80],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 12,
                "patch_size": [96, 96],
                "median_image_size_in_voxels": [88.0, 88.0],
                "spacing": [1.25, 1.25],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                **resampling_entries(),
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 3,
                        "features_per_stage": [4, 8, 16],
                        **conv_kwargs(),
                        "conv_op": "torch.nn.modules.conv.Conv2d",
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "kernel_sizes": [[3, 3], [3, 3], [3, 3]],
                        "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [2, 2, 2],
                        "n_conv_per_stage_decoder": [2, 2],
                        "conv_bias": True,
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                    },
                    "_kw_requires_import": REQ_IMPORT,
                },
                "batch_dice": True,
            },
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [16, 64, 64],
                "median_image_size_in_voxels": [20.0, 88.0, 88.0],
                "spacing": [4.0, 1.25, 1.25],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                **resampling_entries(),
                "architecture": arch,
                "batch_dice": False,
            },
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1500.0,
                "mean": -520.0,
                "median": -640.0,
                "min": -1024.0,
                "percentile_00_5": -1000.0,
                "percentile_99_5": 300.0,
                "std": 330.0,
            }
        },
    }


def resenc_plans():
    p = plain_plans()
    p["dataset_name"] = "Dataset902_CtgradeResEnc"
    p["plans_name"] = "nnUNetResEncUNetMPlans"
    p["experiment_planner_used"] = "nnUNetPlannerResEncM"
    p["transpose_forward"] = [0, 2, 1]
    p["transpose_backward"] = [0, 2, 1]
    del p["configurations"]["2d"]
    base = p["configurations"]["3d_fullres"]
    base["spacing"] = [4.5, 1.6, 1.6]
    base["normalization_schemes"] = ["ZScoreNormalization"]
    base["patch_size"] = [16, 48, 48]
    p["configurations"]["3d_fullres_resenc"] = {
        "inherits_from": "3d_fullres",
        "data_identifier": "nnUNetResEncUNetMPlans_3d_fullres_resenc",
        "patch_size": [16, 48, 48],
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": {
                "n_stages": 4,
                "features_per_stage": [4, 8, 12, 16],
                **conv_kwargs(),
                "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                "n_blocks_per_stage": [1, 1, 2, 1],
                "n_conv_per_stage_decoder": [1, 1, 1],
                "conv_bias": True,
                "norm_op_kwargs": {"eps": 1e-04, "affine": True},
            },
            "_kw_requires_import": REQ_IMPORT,
        },
    }
    return p


def dataset_json(labels):
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": 20,
        "file_ending": ".mha",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }


def randomise(net, gen):
    """He-initialised weights, then every norm affine parameter and every bias moved off its
    initial value (1 and 0), so a missing scale, shift or bias shows in the outputs."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


def centre_classes(net, cm, pm, ds):
    """Shifts the last segmentation layer's bias so that every class has mean logit 0 over the
    fixture CT's first patch: a random network otherwise labels nearly every voxel alike, and
    label parity would test little."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    data, _, _ = DefaultPreprocessor(verbose=False).run_case([CT_PATH], None, pm, cm, ds)
    patch = cm.patch_size
    x = np.zeros((1, 1, *patch), dtype=np.float32)
    if len(patch) == 3:
        n = [min(a, b) for a, b in zip(data.shape[1:], patch)]
        x[0, :, : n[0], : n[1], : n[2]] = data[:, : n[0], : n[1], : n[2]]
    else:
        n = [min(a, b) for a, b in zip(data.shape[2:], patch)]
        x[0, :, : n[0], : n[1]] = data[:, data.shape[1] // 2, : n[0], : n[1]]
    with torch.no_grad():
        y = net(torch.from_numpy(x))
        mean = y.mean(dim=(0, *range(2, y.ndim)))
        net.decoder.seg_layers[-1].bias -= mean


def save_checkpoint(path, net, plans, configuration, fold, ds, gen, mirror_axes):
    # One SGD step (nnU-Net's optimiser) so that optimizer_state holds momentum buffers.
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    for p in net.parameters():
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    opt.step()
    net.load_state_dict(weights)  # the saved weights are the drawn ones; only the optimiser moved
    epochs = 3
    logging = {
        "mean_fg_dice": [np.float64(0.1 * i) for i in range(epochs)],
        "ema_fg_dice": [np.float64(0.05 * i) for i in range(epochs)],
        "dice_per_class_or_region": [[np.float64(0.1), np.float64(0.2)] for _ in range(epochs)],
        "train_losses": [np.float64(-0.1 * i) for i in range(epochs)],
        "val_losses": [np.float64(-0.1 * i) for i in range(epochs)],
        "lrs": [0.01 * (1 - i / 1000) ** 0.9 for i in range(epochs)],
        "epoch_start_timestamps": [1.7e9 + i for i in range(epochs)],
        "epoch_end_timestamps": [1.7e9 + i + 0.5 for i in range(epochs)],
    }
    checkpoint = {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": logging,
        "_best_ema": np.float64(0.2),
        "current_epoch": epochs,
        "init_args": {
            "plans": plans,
            "configuration": configuration,
            "fold": fold,
            "dataset_json": ds,
            "device": torch.device("cuda"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": mirror_axes,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(checkpoint, path)


def build_model(name, plans, configuration, labels, folds, seed, mirror_axes=(0, 1, 2)):
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    ds = dataset_json(labels)
    with open(os.path.join(folder, "plans.json"), "w") as f:
        json.dump(plans, f, indent=4)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(ds, f, indent=4)
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    gen = torch.Generator().manual_seed(seed)
    nets = []
    for fold in folds:
        net = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            1,
            len(labels),
            allow_init=True,
            deep_supervision=False,
        )
        randomise(net, gen)
        net.eval()
        centre_classes(net, cm, pm, ds)
        save_checkpoint(
            os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth"),
            net,
            plans,
            configuration,
            fold,
            ds,
            gen,
            mirror_axes,
        )
        nets.append(net)
    return folder, nets


def predictor(folder, folds, mirroring):
    p = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    p.initialize_from_trained_model_folder(folder, use_folds=tuple(folds))
    return p


def write_like(arr, ref, path, pixel_type=None):
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    if pixel_type is not None:
        img = sitk.Cast(img, pixel_type)
    sitk.WriteImage(img, path, useCompression=True)


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    ct_path = CT_PATH
    make_ct(find_ct(), ct_path)
    ct = sitk.ReadImage(ct_path)

    plain_labels = {"background": 0, "GGO": 1, "consolidation": 2}
    resenc_labels = {"background": 0, "lesion": 1}
    plain_dir, plain_nets = build_model("plain", plain_plans(), "3d_fullres", plain_labels, [0, 1], 901)
    resenc_dir, resenc_nets = build_model("resenc", resenc_plans(), "3d_fullres_resenc", resenc_labels, [0], 902)
    # nnU-Net's 2-D trainers allow mirroring along the two in-plane axes only.
    flat_plans = plain_plans()
    flat_plans["dataset_name"] = "Dataset903_CtgradePlain2d"
    flat_dir, flat_nets = build_model("plain2d", flat_plans, "2d", resenc_labels, [0], 903, (0, 1))

    tensors = {}
    runs = []
    work = tempfile.mkdtemp()
    for model, folder, nets, folds, patch in (
        ("plain", plain_dir, plain_nets, [0, 1], (16, 64, 64)),
        ("resenc", resenc_dir, resenc_nets, [0], (16, 48, 48)),
        ("plain2d", flat_dir, flat_nets, [0], (96, 96)),
    ):
        # One 2-D run (mirroring) keeps the fixtures small.
        for mirroring in (True, False) if model != "plain2d" else (True,):
            run = f"{model}_{'mirror' if mirroring else 'nomirror'}"
            p = predictor(folder, folds, mirroring)
            if mirroring:
                pre = p.configuration_manager.preprocessor_class(verbose=False)
                data, _, props = pre.run_case([ct_path], None, p.plans_manager, p.configuration_manager, p.dataset_json)
                data = np.ascontiguousarray(data, dtype=np.float32)
                tensors[f"{model}.preprocessed"] = data
                x = np.zeros((1, 1, *patch), dtype=np.float32)
                if len(patch) == 3:
                    n = [min(a, b) for a, b in zip(data.shape[1:], patch)]
                    x[0, :, : n[0], : n[1], : n[2]] = data[:, : n[0], : n[1], : n[2]]
                else:
                    # 2-D: the first slice.
                    n = [min(a, b) for a, b in zip(data.shape[2:], patch)]
                    x[0, :, : n[0], : n[1]] = data[:, 0, : n[0], : n[1]]
                with torch.no_grad():
                    y = nets[0](torch.from_numpy(x)).numpy()
                tensors[f"{model}.fold0.patch_logits"] = np.ascontiguousarray(y, dtype=np.float32)
                if model == "plain":
                    logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float().numpy()
                    # nnU-Net accumulates the logits in float16 (also on the CPU): stored as such, exactly.
                    tensors["plain.logits_mirror"] = np.ascontiguousarray(logits.astype(np.float16))
                props_json = {
                    "spacing": [float(s) for s in props["spacing"]],
                    "shape_before_cropping": [int(s) for s in props["shape_before_cropping"]],
                    "bbox_used_for_cropping": [[int(a), int(b)] for a, b in props["bbox_used_for_cropping"]],
                    "shape_after_cropping_and_before_resampling": [
                        int(s) for s in props["shape_after_cropping_and_before_resampling"]
                    ],
                    "preprocessed_shape": [int(s) for s in data.shape],
                }
            trunc = os.path.join(work, run)
            p.predict_from_files_sequential([[ct_path]], [trunc], save_probabilities=True, overwrite=True)
            seg = sitk.ReadImage(trunc + ".mha")
            write_like(sitk.GetArrayFromImage(seg).astype(np.uint8), ct, os.path.join(OUT, f"{run}_seg.mha"))
            probs = np.load(trunc + ".npz")["probabilities"].astype(np.float32)
            files = []
            for c in range(probs.shape[0]):
                f = f"{run}_prob{c}.mha"
                write_like(probs[c], ct, os.path.join(OUT, f))
                files.append(f)
            runs.append(
                {
                    "name": run,
                    "model": model,
                    "folds": folds,
                    "mirroring": mirroring,
                    "tile_step_size": 0.5,
                    "segmentation": f"{run}_seg.mha",
                    "probabilities": files,
                    "properties": props_json,
                }
            )
    shutil.rmtree(work)
    save_file(tensors, os.path.join(OUT, "intermediates.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"input": "ct.mha", "versions": PINS, "runs": runs}, f, indent=2)
    total = 0
    for dirpath, _, names in os.walk(OUT):
        for n in names:
            total += os.path.getsize(os.path.join(dirpath, n))
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
