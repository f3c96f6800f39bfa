#!/usr/bin/env python3
"""Fixtures for the reference implementations' own defaults (issue 19), checked end to end through
`ctgrade convert` and `ctgrade forward` by tests/reference_defaults.rs:

  3-D ResNet-18/34/50   MONAI 1.6.1 as a new user makes them: `resnet18/34/50(spatial_dims=3,
                        n_input_channels=3, num_classes=1)` with every other argument MONAI's default.
                        The published widths would make 130-250 MB checkpoints, so the fixtures are
                        MONAI's `ResNet` class with the widths divided (`block_inplanes`) and nothing
                        else passed; the script asserts that `resnet18/34/50` build exactly that
                        class with exactly its defaults (equal module trees at full width), and
                        records those defaults for the Rust test to compare with the engine's.
  3-D Inception-v1      the STOIC 2021 baseline's I3D (luukboulogne/stoic2021-baseline,
                        algorithm/i3d/i3dpt.py, itself altered from hassony2/kinetics_i3d_pytorch),
                        written again below from its description, in its two head forms:
                        - stoic: trunk -> AvgPool3d((2, 7, 7), stride 1) -> dropout (identity in
                          eval) -> mean over (D, H, W) -> `linear` (Linear 1024 -> n); the module
                          also holds the port's 400-class Kinetics head `conv3d_0c_1x1`, unused;
                        - kinetics: trunk -> the same pool -> `conv3d_0c_1x1` (1x1x1 conv with bias)
                          -> squeeze H, W -> mean over depth, as the port's own forward (which needs
                          a 7x7 map after the pool's window, i.e. H' = W' = 7).
                        Inputs are chosen so that the last feature map is larger than 2x7x7 (4x9x8
                        and 4x7x7): there the pool differs from a global average. Those inputs are
                        large (3x32x288x256), so they are not stored: they are the integer hash
                        `hash_input` below, which the Rust test recomputes bit for bit.

Weights are random (He-normal convolutions, random BatchNorm affine parameters and statistics from
train-mode passes on random inputs, then perturbed), networks run in eval mode, reference outputs in
float64. Writes tests/fixtures/reference/:
  cases.json            MONAI's ResNet defaults, full-size parameter counts, and one entry per case
                        (its `config`: the width divisor, the only override `convert` needs)
  <name>.pth            the state dict, saved with torch.save (zip format), as checkpoints are
  <name>_io.safetensors `output` (and `input` where it is stored)

Run:  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.15.0 monai==1.6.1 \
          safetensors==0.8.0 numpy==2.4.6
      /tmp/ref/bin/python tools/make_reference_fixtures.py
"""

import inspect
import json
import os
import sys

import monai
import numpy as np
import safetensors
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import resnet as monai_resnet
from safetensors.torch import save_file

# The fixtures were generated with exactly these versions; other versions may differ in the last bits.
assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert monai.__version__ == "1.6.1", monai.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__
assert np.__version__ == "2.4.6", np.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "reference")


def hash_input(shape):
    """A reproducible input in [-1, 1): a 32-bit integer hash of each element's flat index, scaled.
    Every step is exact in integers and float64, so Rust gets the same float32 values."""
    idx = np.arange(int(np.prod(shape)), dtype=np.uint64)
    v = (idx * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    v ^= v >> np.uint64(15)
    v = (v * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    v ^= v >> np.uint64(13)
    x = v.astype(np.float64) / 2.0**32 * 2.0 - 1.0
    return torch.from_numpy(x.astype(np.float32).reshape(shape))


# ---------------------------------------------------------------------------------------------------
# MONAI's 3-D ResNets with MONAI's defaults.

RESNETS = {
    "resnet18-3d": (monai_resnet.resnet18, "basic", [2, 2, 2, 2]),
    "resnet34-3d": (monai_resnet.resnet34, "basic", [3, 4, 6, 3]),
    "resnet50-3d": (monai_resnet.resnet50, "bottleneck", [3, 4, 6, 3]),
}

# The arguments a new user passes; everything else stays MONAI's.
USER_ARGS = dict(spatial_dims=3, n_input_channels=3, num_classes=1)

# ResNet.__init__ arguments a checkpoint stores nothing of, or whose default the engine must share.
DEFAULT_NAMES = ["conv1_t_size", "conv1_t_stride", "no_max_pool", "shortcut_type", "bias_downsample",
                 "widen_factor", "feed_forward"]


def monai_defaults():
    sig = inspect.signature(monai_resnet.ResNet.__init__)
    return {k: sig.parameters[k].default for k in DEFAULT_NAMES}


def check_factories_use_class_defaults():
    """resnet18/34/50 build the ResNet class with its defaults: same module tree at full width."""
    counts = {}
    for arch, (factory, block, layers) in RESNETS.items():
        full = factory(**USER_ARGS)
        plain = monai_resnet.ResNet(block, layers, monai_resnet.get_inplanes(), **USER_ARGS)
        assert repr(full) == repr(plain), arch
        assert full.conv1.stride == (1, 1, 1) and full.conv1.kernel_size == (7, 7, 7), arch
        counts[arch] = sum(p.numel() for p in full.parameters())
    return counts


# ---------------------------------------------------------------------------------------------------
# The STOIC 2021 baseline's I3D, from its description.


def tf_same(kernel, stride):
    """TensorFlow "SAME" padding as the port computes it (from kernel and stride only), as F.pad's
    argument: (W before, W after, H before, H after, D before, D after)."""
    pads = []
    for k, s in zip(reversed(kernel), reversed(stride)):
        total = max(k - s, 0)
        pads += [total // 2, total - total // 2]
    return pads


class ConvBnRelu(nn.Module):
    """The port's unit: zero "SAME" padding, Conv3d without bias, BatchNorm3d, ReLU. The attribute
    names (`conv3d`, `batch3d`) are the checkpoint's."""

    def __init__(self, cin, cout, k, s=1):
        super().__init__()
        self.pad = tf_same((k,) * 3, (s,) * 3)
        self.conv3d = nn.Conv3d(cin, cout, k, s, bias=False)
        self.batch3d = nn.BatchNorm3d(cout)

    def forward(self, x):
        return F.relu(self.batch3d(self.conv3d(F.pad(x, self.pad))))


class LogitsUnit(nn.Module):
    """The Kinetics head: a 1x1x1 convolution with bias under the unit's name `conv3d`."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv3d = nn.Conv3d(cin, cout, 1, bias=True)

    def forward(self, x):
        return self.conv3d(x)


class TfMaxPool(nn.Module):
    """Zero "SAME" padding, then a ceil-mode max pool (inputs are ReLU outputs, so zeros are neutral)."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s, self.pad = k, s, tf_same(k, s)

    def forward(self, x):
        return F.max_pool3d(F.pad(x, self.pad), self.k, self.s, ceil_mode=True)


class MixedBlock(nn.Module):
    """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max pool (stride 1) -> 1x1."""

    def __init__(self, cin, widths):
        super().__init__()
        b0, b1r, b1, b2r, b2, b3 = widths
        self.branch_0 = ConvBnRelu(cin, b0, 1)
        self.branch_1 = nn.Sequential(ConvBnRelu(cin, b1r, 1), ConvBnRelu(b1r, b1, 3))
        self.branch_2 = nn.Sequential(ConvBnRelu(cin, b2r, 1), ConvBnRelu(b2r, b2, 3))
        self.branch_3 = nn.Sequential(TfMaxPool((3, 3, 3), (1, 1, 1)), ConvBnRelu(cin, b3, 1))
        self.width = b0 + b1 + b2 + b3

    def forward(self, x):
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], 1)


# Inception-v1's mixed blocks (Szegedy et al., Table 1; the 5x5 branch is 3x3x3 in I3D).
BLOCKS = [
    ("mixed_3b", [64, 96, 128, 16, 32, 32]),
    ("mixed_3c", [128, 128, 192, 32, 96, 64]),
    ("mixed_4b", [192, 96, 208, 16, 48, 64]),
    ("mixed_4c", [160, 112, 224, 24, 64, 64]),
    ("mixed_4d", [128, 128, 256, 24, 64, 64]),
    ("mixed_4e", [112, 144, 288, 32, 64, 64]),
    ("mixed_4f", [256, 160, 320, 32, 128, 128]),
    ("mixed_5b", [256, 160, 320, 32, 128, 128]),
    ("mixed_5c", [384, 192, 384, 48, 128, 128]),
]


class StoicI3D(nn.Module):
    """Channel counts divided by `div` (at least 1) to keep fixtures small; `head` picks the forward."""

    def __init__(self, num_outputs, head, div=1, kinetics_classes=400):
        super().__init__()
        w = lambda c: max(1, c // div)  # noqa: E731
        self.head = head
        self.conv3d_1a_7x7 = ConvBnRelu(3, w(64), 7, 2)
        self.conv3d_2b_1x1 = ConvBnRelu(w(64), w(64), 1)
        self.conv3d_2c_3x3 = ConvBnRelu(w(64), w(192), 3)
        c = w(192)
        for name, widths in BLOCKS:
            block = MixedBlock(c, [w(x) for x in widths])
            setattr(self, name, block)
            c = block.width
        # Both heads exist in the STOIC module; the Kinetics-form checkpoint has only its own.
        self.conv3d_0c_1x1 = LogitsUnit(c, kinetics_classes if head == "stoic" else num_outputs)
        if head == "stoic":
            self.linear = nn.Linear(c, num_outputs)
        self.pool_1x3 = TfMaxPool((1, 3, 3), (1, 2, 2))
        self.pool_3 = TfMaxPool((3, 3, 3), (2, 2, 2))
        self.pool_2 = TfMaxPool((2, 2, 2), (2, 2, 2))

    def trunk(self, x):
        x = self.pool_1x3(self.conv3d_1a_7x7(x))
        x = self.pool_1x3(self.conv3d_2c_3x3(self.conv3d_2b_1x1(x)))
        x = self.pool_3(self.mixed_3c(self.mixed_3b(x)))
        for name in ["mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"]:
            x = getattr(self, name)(x)
        x = self.pool_2(x)
        return self.mixed_5c(self.mixed_5b(x))

    def forward(self, x):
        pooled = F.avg_pool3d(self.trunk(x), (2, 7, 7), stride=1)
        if self.head == "stoic":
            return self.linear(pooled.mean(dim=(2, 3, 4)))
        logits = self.conv3d_0c_1x1(pooled)
        assert logits.shape[3] == logits.shape[4] == 1, "the port's forward needs H' = W' = 7"
        return logits.squeeze(3).squeeze(3).mean(2)


# ---------------------------------------------------------------------------------------------------


def randomize(net, g):
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * np.sqrt(2.0 / m.weight[0].numel())
            if m.bias is not None:
                m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
        elif isinstance(m, nn.BatchNorm3d):
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
            m.bias.data = 0.3 * torch.randn(m.num_features, generator=g)
        elif isinstance(m, nn.Linear):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / np.sqrt(m.in_features)
            m.bias.data = 0.1 * torch.randn(m.out_features, generator=g)


def calibrate(net, shape, g):
    """BatchNorm statistics of the activations of random inputs, then perturbed: activations stay
    O(1) through the depth and the outputs depend on the input through every layer."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randn(2, *shape[1:], generator=g))
    net.eval()
    for m in bns:
        n = m.num_features
        m.running_mean.data += 0.2 * m.running_var.sqrt() * torch.randn(n, generator=g)
        m.running_var.data = m.running_var * (0.6 + 0.8 * torch.rand(n, generator=g)) + 0.1


def head_layer(net):
    if isinstance(net, StoicI3D):
        return net.linear if net.head == "stoic" else net.conv3d_0c_1x1.conv3d
    return net.fc


# name: (arch, how the network is made, outputs, input shape, whether the input is stored)
CASES = {
    "resnet18-3d_monai": ("resnet18-3d", 32, 1, (1, 3, 9, 21, 19), True),
    "resnet34-3d_monai": ("resnet34-3d", 64, 1, (2, 3, 8, 17, 20), True),
    "resnet50-3d_monai": ("resnet50-3d", 64, 1, (1, 3, 10, 19, 18), True),
    # Last feature map 4x9x8.
    "i3d_stoic": ("inception-v1-3d", "stoic", 1, (1, 3, 32, 288, 256), False),
    # Last feature map 4x7x7, the port's Kinetics forward (H' = W' = 7 after the pool).
    "i3d_kinetics": ("inception-v1-3d", "kinetics", 5, (1, 3, 32, 224, 224), False),
}


def make(arch, how, outputs):
    if arch == "inception-v1-3d":
        return StoicI3D(outputs, how, div=32)
    _, block, layers = RESNETS[arch]
    inplanes = [c // how for c in monai_resnet.get_inplanes()]
    return monai_resnet.ResNet(block, layers, inplanes, **{**USER_ARGS, "num_classes": outputs})


def main():
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    index = {"monai_resnet_defaults": monai_defaults(), "full_size_parameters": check_factories_use_class_defaults(),
             "cases": []}
    for i, (name, (arch, how, outputs, shape, stored)) in enumerate(CASES.items()):
        torch.manual_seed(5000 + i)
        net = make(arch, how, outputs)
        randomize(net, torch.Generator().manual_seed(6000 + i))
        calibrate(net, shape, torch.Generator().manual_seed(7000 + i))
        if stored:
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(8000 + i))
        else:
            x = hash_input(shape)
        with torch.no_grad():
            # Outputs O(1), so that the 1e-4 tolerance is strict but fair.
            head = head_layer(net)
            y0 = net(x)
            head.weight.data *= 2.0 / (y0 - head.bias).abs().max()
        with torch.inference_mode():
            y = net.double()(x.double()).float()
        net.float()
        sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        torch.save(sd, os.path.join(OUT, f"{name}.pth"))
        io = {"output": y.contiguous()}
        if stored:
            io["input"] = x.contiguous()
        save_file(io, os.path.join(OUT, f"{name}_io.safetensors"))
        # The one override the engine needs for these shrunk networks (everything else default).
        div = 32 if arch == "inception-v1-3d" else how
        entry = {"name": name, "arch": arch, "num_outputs": outputs, "config": {"width_divisor": div},
                 "checkpoint": f"{name}.pth",
                 "io": f"{name}_io.safetensors", "input_shape": list(shape),
                 "input": "stored" if stored else "hash"}
        if arch == "inception-v1-3d":
            entry["i3d_head"] = how
            entry["feature_map"] = list(net.trunk(x[:1]).shape[2:])
        index["cases"].append(entry)
        print(f"{name}: output {[round(v, 4) for v in y.flatten().tolist()]}", file=sys.stderr)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
