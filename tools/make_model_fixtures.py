#!/usr/bin/env python3
"""Golden fixtures for the 3-D CNN engine (src/model), with PyTorch + MONAI as the oracle.

Writes tests/fixtures/model/:
  ops.json + ops.safetensors   conv3d / max-pool / avg-pool cases (inputs, weights, PyTorch outputs)
  densenet_<net>_<naming>.safetensors
                               a small MONAI DenseNet(spatial_dims=3) with random weights and random
                               BatchNorm running statistics (eval mode): its state dict under MONAI or
                               torchvision-style names, plus `input` and the PyTorch `output`
  densenet.json                the configurations of those networks

With --full OUT_DIR it instead writes the one-off full-size check (not for CI, ~100 MB):
  OUT_DIR/densenet201_weights.safetensors, OUT_DIR/densenet201_input.safetensors (1x3x128x240x240)
  and prints MONAI's output on that input as JSON.

Run with the project's venv:  /work/pyenv/bin/python tools/make_model_fixtures.py
requirements: torch==2.15.0 monai==1.6.1 safetensors==0.8.0 numpy==2.4.6
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import monai
import safetensors
from monai.networks.nets import DenseNet
from safetensors.torch import save_file

# The fixtures were generated with exactly these versions; other versions may differ in the last bits.
assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert monai.__version__ == "1.6.1", monai.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "model")


def conv_case(g, name, inp, wshape, stride, pads, bias):
    """pads = (d_before, d_after, h_before, h_after, w_before, w_after)."""
    x = torch.randn(*inp, generator=g)
    w = torch.randn(*wshape, generator=g) * (1.0 / np.sqrt(np.prod(wshape[1:])))
    b = torch.randn(wshape[0], generator=g) if bias else None
    # F.pad takes the last dimension first.
    xp = F.pad(x, (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1]))
    y = F.conv3d(xp, w, b, stride=stride)
    tensors = {f"{name}.input": x, f"{name}.weight": w, f"{name}.output": y}
    if b is not None:
        tensors[f"{name}.bias"] = b
    meta = {"name": name, "kind": "conv", "stride": list(stride), "padding": list(pads), "bias": bias}
    return meta, tensors


def pool_case(g, name, kind, inp, kernel, stride, padding, ceil_mode, count_include_pad=True, side_pads=None):
    """side_pads: explicit per-side -inf padding (max pool only), as (d0, d1, h0, h1, w0, w1)."""
    x = torch.randn(*inp, generator=g)
    if side_pads is not None:
        assert kind == "max" and padding == (0, 0, 0)
        xp = F.pad(x, (side_pads[4], side_pads[5], side_pads[2], side_pads[3], side_pads[0], side_pads[1]),
                   value=float("-inf"))
        y = F.max_pool3d(xp, kernel, stride, 0, ceil_mode=ceil_mode)
        pads = list(side_pads)
    else:
        pads = [padding[0], padding[0], padding[1], padding[1], padding[2], padding[2]]
        if kind == "max":
            y = F.max_pool3d(x, kernel, stride, padding, ceil_mode=ceil_mode)
        else:
            y = F.avg_pool3d(x, kernel, stride, padding, ceil_mode=ceil_mode,
                             count_include_pad=count_include_pad)
    meta = {"name": name, "kind": kind, "kernel": list(kernel), "stride": list(stride), "padding": pads,
            "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    return meta, {f"{name}.input": x, f"{name}.output": y}


def op_cases():
    g = torch.Generator().manual_seed(1234)
    cases = []
    c = cases.append
    # (N, C, D, H, W) input, (Cout, Cin, kd, kh, kw) weight, stride, per-side padding, bias
    c(conv_case(g, "conv_1x1x1", (2, 5, 3, 4, 6), (7, 5, 1, 1, 1), (1, 1, 1), (0,) * 6, True))
    c(conv_case(g, "conv_3x3x3_pad1", (1, 4, 5, 6, 7), (3, 4, 3, 3, 3), (1, 1, 1), (1,) * 6, False))
    c(conv_case(g, "conv_c_eq_h_eq_w", (1, 5, 4, 5, 5), (5, 5, 3, 3, 3), (1, 1, 1), (1,) * 6, False))
    c(conv_case(g, "conv_c_eq_h_eq_w_nopad", (1, 3, 3, 3, 3), (2, 3, 1, 3, 3), (1, 1, 1), (0,) * 6, True))
    c(conv_case(g, "conv_depth1_k133", (1, 3, 1, 8, 8), (4, 3, 1, 3, 3), (1, 1, 1), (0, 0, 1, 1, 1, 1), False))
    c(conv_case(g, "conv_depth1_k333", (2, 3, 1, 6, 5), (4, 3, 3, 3, 3), (1, 1, 1), (1,) * 6, True))
    c(conv_case(g, "conv_stem_7_s2_p3", (1, 3, 9, 13, 11), (4, 3, 7, 7, 7), (2, 2, 2), (3,) * 6, False))
    c(conv_case(g, "conv_k133_s122", (1, 4, 3, 9, 10), (6, 4, 1, 3, 3), (1, 2, 2), (0, 0, 1, 1, 1, 1), False))
    c(conv_case(g, "conv_same_7_s2_asym", (1, 2, 8, 10, 9), (3, 2, 7, 7, 7), (2, 2, 2), (2, 3, 2, 3, 2, 3), False))
    c(conv_case(g, "conv_k311", (1, 4, 6, 5, 3), (5, 4, 3, 1, 1), (1, 1, 1), (1, 1, 0, 0, 0, 0), True))
    c(conv_case(g, "conv_k231_mixed", (2, 3, 7, 6, 8), (4, 3, 2, 3, 1), (2, 1, 3), (0, 1, 1, 0, 0, 2), True))
    c(conv_case(g, "conv_1x1x1_s2", (1, 6, 5, 7, 8), (3, 6, 1, 1, 1), (2, 2, 2), (0,) * 6, False))
    c(conv_case(g, "conv_3_s2_p1", (2, 4, 7, 7, 7), (4, 4, 3, 3, 3), (2, 2, 2), (1,) * 6, True))
    c(conv_case(g, "conv_wide", (1, 40, 4, 12, 11), (24, 40, 3, 3, 3), (1, 1, 1), (1,) * 6, False))
    c(conv_case(g, "conv_pad_asym_same_k3", (1, 3, 4, 6, 6), (2, 3, 3, 3, 3), (2, 2, 2), (0, 1, 0, 1, 0, 1), False))
    # pools
    c(pool_case(g, "max_k3_s2_p1", "max", (1, 3, 7, 9, 8), (3, 3, 3), (2, 2, 2), (1, 1, 1), False))
    c(pool_case(g, "max_k3_s2_p1_ceil", "max", (1, 2, 8, 9, 10), (3, 3, 3), (2, 2, 2), (1, 1, 1), True))
    c(pool_case(g, "max_k133_s122_ceil", "max", (1, 2, 5, 10, 11), (1, 3, 3), (1, 2, 2), (0, 0, 0), True))
    c(pool_case(g, "max_k2_s2_ceil", "max", (2, 3, 5, 7, 6), (2, 2, 2), (2, 2, 2), (0, 0, 0), True))
    c(pool_case(g, "max_k3_s1_p1", "max", (1, 4, 4, 5, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1), False))
    c(pool_case(g, "max_side_pads", "max", (1, 2, 6, 7, 8), (3, 3, 3), (2, 2, 2), (0, 0, 0), False,
                side_pads=(0, 1, 1, 0, 1, 1)))
    c(pool_case(g, "avg_k2_s2", "avg", (1, 4, 5, 7, 6), (2, 2, 2), (2, 2, 2), (0, 0, 0), False))
    c(pool_case(g, "avg_k3_s2_p1_incl", "avg", (1, 2, 7, 8, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), False, True))
    c(pool_case(g, "avg_k3_s2_p1_excl", "avg", (1, 2, 7, 8, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), False, False))
    c(pool_case(g, "avg_k3_s2_p1_ceil_incl", "avg", (1, 2, 8, 8, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), True, True))
    c(pool_case(g, "avg_k3_s2_p1_ceil_excl", "avg", (1, 2, 8, 8, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), True, False))
    c(pool_case(g, "avg_k233_s122_ceil_excl", "avg", (1, 3, 5, 9, 10), (2, 3, 3), (1, 2, 2), (1, 1, 0), True,
                False))
    c(pool_case(g, "avg_k277_s1", "avg", (2, 3, 2, 7, 7), (2, 7, 7), (1, 1, 1), (0, 0, 0), False))
    metas, tensors = [], {}
    for m, t in cases:
        metas.append(m)
        tensors.update(t)
    return metas, {k: v.contiguous() for k, v in tensors.items()}


def randomize_bn(net, g):
    """Non-trivial BatchNorm: random affine parameters and running statistics (used in eval mode)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.3 * torch.randn(n, generator=g)
            m.running_mean.data = 0.5 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + 1.5 * torch.rand(n, generator=g)
        elif isinstance(m, torch.nn.Linear):
            m.bias.data = 0.1 * torch.randn(m.out_features, generator=g)


def torchvision_names(sd):
    out = {}
    for k, v in sd.items():
        k = k.replace(".layers.", ".")
        k = k.replace("class_layers.out.", "classifier.")
        out[k] = v
    return out


def make_net(cfg, seed):
    torch.manual_seed(seed)
    net = DenseNet(spatial_dims=3, in_channels=cfg["in_channels"], out_channels=cfg["num_outputs"],
                   init_features=cfg["init_features"], growth_rate=cfg["growth_rate"],
                   block_config=tuple(cfg["block_config"]), bn_size=cfg["bn_size"])
    randomize_bn(net, torch.Generator().manual_seed(seed + 1))
    return net.eval()


NETS = {
    # Two blocks, 3 input channels, continuous head; batch of 2 with odd sizes.
    "a": ({"arch": "densenet121-3d", "in_channels": 3, "num_outputs": 1, "init_features": 8, "growth_rate": 4,
           "block_config": [2, 2], "bn_size": 2}, (2, 3, 13, 17, 19)),
    # Three blocks, 1 input channel, categorical head with 5 outputs.
    "b": ({"arch": "densenet201-3d", "in_channels": 1, "num_outputs": 5, "init_features": 6, "growth_rate": 3,
           "block_config": [1, 2, 3], "bn_size": 2}, (1, 1, 20, 24, 22)),
}


def net_fixtures():
    for i, (key, (cfg, shape)) in enumerate(sorted(NETS.items())):
        net = make_net(cfg, 100 + i)
        g = torch.Generator().manual_seed(200 + i)
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            # Rescale the head so that the outputs are O(1): a 1e-4 tolerance is then strict but fair.
            s = 2.0 / net(x).abs().max()
            net.class_layers.out.weight.data *= s
            net.class_layers.out.bias.data *= s
        with torch.inference_mode():
            y = net(x)
        print(f"net {key}: output {y.tolist()}")
        sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        for naming, names in (("monai", sd), ("torchvision", torchvision_names(sd))):
            t = dict(names)
            t["input"] = x.contiguous()
            t["output"] = y.contiguous()
            save_file(t, os.path.join(OUT, f"densenet_{key}_{naming}.safetensors"))
    with open(os.path.join(OUT, "densenet.json"), "w") as f:
        json.dump({k: {"config": c, "input_shape": list(s)} for k, (c, s) in NETS.items()}, f, indent=1)


def full_size(out_dir):
    torch.set_num_threads(2)
    net = DenseNet(spatial_dims=3, in_channels=3, out_channels=1, block_config=(6, 12, 48, 32))
    randomize_bn(net, torch.Generator().manual_seed(7))
    net.eval()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 3, 128, 240, 240, generator=g)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              os.path.join(out_dir, "densenet201_weights.safetensors"))
    save_file({"input": x}, os.path.join(out_dir, "densenet201_input.safetensors"))
    with torch.inference_mode():
        y = net(x)
    print(json.dumps({"output": y.tolist()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", metavar="OUT_DIR", help="write the full-size DenseNet-201 check instead")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.full:
        full_size(args.full)
        return
    os.makedirs(OUT, exist_ok=True)
    metas, tensors = op_cases()
    save_file(tensors, os.path.join(OUT, "ops.safetensors"))
    with open(os.path.join(OUT, "ops.json"), "w") as f:
        json.dump(metas, f, indent=1)
    net_fixtures()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
