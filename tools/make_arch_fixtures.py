#!/usr/bin/env python3
"""Golden fixtures for every architecture of the paper beyond the 3-D DenseNets (src/model/resnet.rs,
inception.rs, slice2d.rs), with PyTorch as the oracle:

  3-D ResNet-18/34/50   MONAI ResNet(spatial_dims=3), with the hyper-parameters each case sets (MONAI's
                        defaults otherwise)
  3-D Inception-v1      I3D, a reference written here from Carreira & Zisserman's description and the
                        PyTorch port's conventions (TensorFlow "SAME" padding computed from kernel and
                        stride, zero-padded ceil-mode max pools, `conv3d`/`batch3d` unit names); the head
                        is the port's AvgPool3d((2, 7, 7), stride 1) and mean (the window shrunk to
                        the map where the map is smaller: these cases' 2x1x1 maps get the global
                        average) + a 1x1x1 convolution with bias (`conv3d_0c_1x1`). The STOIC
                        baseline's `linear` head: tools/make_reference_fixtures.py
  2-D backbones         torchvision densenet121/169/201 (and MONAI DenseNet(spatial_dims=2) names),
                        googlenet (no aux heads, transform_input=False), resnet18/34/50; COVNet is
                        resnet50 (Li et al.)
  2-D slice reduction   the backbone on every axial slice, its pooled features max-pooled over slices,
                        then the backbone's own linear layer

Networks are shrunk through the engine's config overrides (width_divisor, growth_rate, ...), get random
weights, BatchNorm statistics measured on random inputs and then perturbed, and run in eval mode. Writes tests/fixtures/arch/:
  cases.json             one entry per case: name, NetworkConfig, naming, file
  <name>.safetensors     the state dict (checkpoint names; 2-D convolutions 4-D), `input`, `output`

Run with the project's venv:  /work/pyenv/bin/python tools/make_arch_fixtures.py
requirements: torch==2.15.0 torchvision==0.29.2 monai==1.6.1 safetensors==0.8.0 numpy==2.4.6
"""

import json
import os
import sys

import monai
import numpy as np
import safetensors
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from monai.networks.nets import DenseNet as MonaiDenseNet
from monai.networks.nets import ResNet as MonaiResNet
from safetensors.torch import save_file
from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

# The fixtures were generated with exactly these versions; other versions may differ in the last bits.
assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.29.2", torchvision.__version__
assert monai.__version__ == "1.6.1", monai.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__
assert np.__version__ == "2.4.6", np.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "arch")

# ---------------------------------------------------------------------------------------------------
# I3D (3-D Inception-v1), written from the architecture description.


def same_pad(k, s):
    """TensorFlow "SAME" as the PyTorch port computes it from kernel and stride only."""
    along = max(k - s, 0)
    return along // 2, along - along // 2


def pad_arg(kernel, stride):
    """F.pad's argument (last axis first) for per-axis SAME padding."""
    out = []
    for k, s in reversed(list(zip(kernel, stride))):
        out += list(same_pad(k, s))
    return out


class Unit(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with SAME padding."""

    def __init__(self, cin, cout, k, s=1):
        super().__init__()
        self.k, self.s = (k,) * 3, (s,) * 3
        self.conv3d = nn.Conv3d(cin, cout, k, s, bias=False)
        self.batch3d = nn.BatchNorm3d(cout)

    def forward(self, x):
        return F.relu(self.batch3d(self.conv3d(F.pad(x, pad_arg(self.k, self.s)))))


class SamePool(nn.Module):
    """Max pool with zero SAME padding (inputs are ReLU outputs) and ceil mode."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        return F.max_pool3d(F.pad(x, pad_arg(self.k, self.s)), self.k, self.s, ceil_mode=True)


class Mixed(nn.Module):
    def __init__(self, cin, w):
        super().__init__()
        a, br, b, cr, c, p = w
        self.branch_0 = Unit(cin, a, 1)
        self.branch_1 = nn.Sequential(Unit(cin, br, 1), Unit(br, b, 3))
        self.branch_2 = nn.Sequential(Unit(cin, cr, 1), Unit(cr, c, 3))
        self.branch_3 = nn.Sequential(SamePool((3, 3, 3), (1, 1, 1)), Unit(cin, p, 1))
        self.out_channels = a + b + c + p

    def forward(self, x):
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], 1)


class Head(nn.Module):
    def __init__(self, cin, n):
        super().__init__()
        self.conv3d = nn.Conv3d(cin, n, 1, bias=True)

    def forward(self, x):
        window = [min(k, n) for k, n in zip((2, 7, 7), x.shape[2:])]
        pooled = F.avg_pool3d(x, window, stride=1).mean((2, 3, 4), keepdim=True)
        return self.conv3d(pooled).flatten(1)


MIXED = [
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


class I3D(nn.Module):
    def __init__(self, in_channels, num_outputs, div=1):
        super().__init__()
        w = lambda c: max(1, c // div)  # noqa: E731
        self.conv3d_1a_7x7 = Unit(in_channels, w(64), 7, 2)
        self.maxPool3d_2a_3x3 = SamePool((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit(w(64), w(64), 1)
        self.conv3d_2c_3x3 = Unit(w(64), w(192), 3)
        self.maxPool3d_3a_3x3 = SamePool((1, 3, 3), (1, 2, 2))
        c = w(192)
        for name, widths in MIXED:
            m = Mixed(c, [w(x) for x in widths])
            setattr(self, name, m)
            c = m.out_channels
            if name == "mixed_3c":
                self.maxPool3d_4a_3x3 = SamePool((3, 3, 3), (2, 2, 2))
            if name == "mixed_4f":
                self.maxPool3d_5a_2x2 = SamePool((2, 2, 2), (2, 2, 2))
        self.conv3d_0c_1x1 = Head(c, num_outputs)

    def forward(self, x):
        # Modules were registered in execution order.
        for m in self.children():
            x = m(x)
        return x


# ---------------------------------------------------------------------------------------------------
# Small torchvision 2-D backbones: the library's own blocks, every width divided by `div`.


class TinyResNet(ResNet):
    def __init__(self, block, layers, div, in_channels, num_outputs):
        self._div = div
        self._first = True
        super().__init__(block, layers, num_classes=num_outputs)
        w = 64 // div
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.fc = nn.Linear(512 // div * block.expansion, num_outputs)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if self._first:
            self.inplanes = 64 // self._div
            self._first = False
        return super()._make_layer(block, planes // self._div, blocks, stride, dilate)


def tiny_googlenet(div, in_channels, num_outputs):
    w = lambda c: max(1, c // div)  # noqa: E731
    # Input width of the next inception block: the previous block's output (rounding breaks the
    # published in_channels // div).
    cin_next = [w(192)]

    def conv_block(cin, cout, **kw):
        return BasicConv2d(in_channels if cin == 3 else w(cin), w(cout), **kw)

    def inception_block(cin, *widths, conv_block=None):
        widths = [w(x) for x in widths]
        m = Inception(cin_next[0], *widths)
        cin_next[0] = widths[0] + widths[2] + widths[4] + widths[5]
        return m

    m = GoogLeNet(num_classes=num_outputs, aux_logits=False, transform_input=False, init_weights=False,
                  blocks=[conv_block, inception_block, None])
    m.fc = nn.Linear(cin_next[0], num_outputs)
    return m


def backbone_2d(cfg):
    arch, n, cin = cfg["arch"], cfg["num_outputs"], cfg["in_channels"]
    if arch.startswith("densenet"):
        blocks = cfg.get("block_config", {"densenet121-2d": [6, 12, 24, 16], "densenet169-2d": [6, 12, 32, 32],
                                          "densenet201-2d": [6, 12, 48, 32]}[arch])
        kw = dict(growth_rate=cfg["growth_rate"], block_config=tuple(blocks), bn_size=cfg["bn_size"])
        if cfg.get("_naming") == "monai":
            return MonaiDenseNet(spatial_dims=2, in_channels=cin, out_channels=n,
                                 init_features=cfg["init_features"], **kw), "class_layers.out"
        m = torchvision.models.DenseNet(num_init_features=cfg["init_features"], num_classes=n, **kw)
        m.features.conv0 = nn.Conv2d(cin, cfg["init_features"], 7, 2, 3, bias=False)
        return m, "classifier"
    if arch == "inception-v1-2d":
        return tiny_googlenet(cfg["width_divisor"], cin, n), "fc"
    block, layers = {
        "resnet18-2d": (BasicBlock, [2, 2, 2, 2]),
        "resnet34-2d": (BasicBlock, [3, 4, 6, 3]),
        "resnet50-2d": (Bottleneck, [3, 4, 6, 3]),
        "covnet": (Bottleneck, [3, 4, 6, 3]),
    }[arch]
    return TinyResNet(block, cfg.get("block_config", layers), cfg["width_divisor"], cin, n), "fc"


def get_mod(m, path):
    for p in path.split("."):
        m = getattr(m, p)
    return m


def set_mod(m, path, v):
    *parent, last = path.split(".")
    setattr(get_mod(m, ".".join(parent)) if parent else m, last, v)


class SliceMax(nn.Module):
    """Li et al.'s reduction: 2-D backbone on every slice, features max-pooled over slices, linear."""

    def __init__(self, backbone, head_path):
        super().__init__()
        self.backbone, self.head_path = backbone, head_path

    def forward(self, x):
        n, c, d, h, w = x.shape
        head = get_mod(self.backbone, self.head_path)
        set_mod(self.backbone, self.head_path, nn.Identity())
        try:
            f = self.backbone(x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w))
        finally:
            set_mod(self.backbone, self.head_path, head)
        return head(f.reshape(n, d, -1).amax(1))

    def checkpoint(self):
        return self.backbone.state_dict()


# ---------------------------------------------------------------------------------------------------


def monai_resnet(cfg):
    bottleneck = cfg["arch"] == "resnet50-3d"
    layers = cfg.get("block_config", [3, 4, 6, 3] if cfg["arch"] != "resnet18-3d" else [2, 2, 2, 2])
    div = cfg.get("width_divisor", 1)
    # Only what the case sets is passed: everything else is MONAI's own default, as for the engine.
    kw = {k: cfg[k] for k in ("conv1_t_size", "conv1_t_stride", "no_max_pool", "shortcut_type",
                              "bias_downsample") if k in cfg}
    return MonaiResNet(
        block="bottleneck" if bottleneck else "basic", layers=layers,
        block_inplanes=[64 // div, 128 // div, 256 // div, 512 // div], spatial_dims=3,
        n_input_channels=cfg["in_channels"], num_classes=cfg["num_outputs"], **kw)


def calibrate(net, shape, g):
    """Running statistics of the activations of random inputs, then perturbed: non-trivial, yet the
    activations stay O(1) and the outputs depend on the input through every layer."""
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(2):
            # A batch of 4, so that 1x1x1 feature maps still have several values per channel.
            net(torch.randn(4, *shape[1:], generator=g))
    net.eval()
    for m in bns:
        n = m.num_features
        m.running_mean.data += 0.2 * m.running_var.sqrt() * torch.randn(n, generator=g)
        # The floor keeps near-constant channels from amplifying rounding noise hundredfold.
        m.running_var.data = m.running_var * (0.6 + 0.8 * torch.rand(n, generator=g)) + 0.1


def randomize(net, g):
    """He-normal convolutions, random BatchNorm affine parameters, random biases."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * np.sqrt(2.0 / fan_in)
            if m.bias is not None:
                m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.3 * torch.randn(n, generator=g)
        elif isinstance(m, nn.Linear):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / np.sqrt(m.in_features)
            m.bias.data = 0.1 * torch.randn(m.out_features, generator=g)


def head_of(net, cfg):
    if cfg["arch"] == "inception-v1-3d":
        return net.conv3d_0c_1x1.conv3d
    if isinstance(net, SliceMax):
        return get_mod(net.backbone, net.head_path)
    return net.fc


def make(cfg):
    arch = cfg["arch"]
    if arch.endswith("-3d") and arch.startswith("resnet"):
        return monai_resnet(cfg)
    if arch == "inception-v1-3d":
        return I3D(cfg["in_channels"], cfg["num_outputs"], cfg.get("width_divisor", 1))
    return SliceMax(*backbone_2d(cfg))


# name: (config: NetworkConfig fields as the Rust engine reads them, naming, input shape)
CASES = {
    # The _a cases and resnet34-3d_b have the MedicalNet-style stem stride 2 (the engine's default
    # until issue 19; MONAI's is 1, covered by tools/make_reference_fixtures.py).
    "resnet18-3d_a": ({"arch": "resnet18-3d", "in_channels": 3, "num_outputs": 1, "width_divisor": 32,
                       "conv1_t_stride": 2},
                      (1, 3, 6, 33, 31)),
    "resnet18-3d_b": ({"arch": "resnet18-3d", "in_channels": 2, "num_outputs": 5, "width_divisor": 32,
                       "shortcut_type": "A", "conv1_t_stride": 1, "conv1_t_size": 3}, (2, 2, 7, 12, 11)),
    "resnet34-3d_a": ({"arch": "resnet34-3d", "in_channels": 3, "num_outputs": 5, "width_divisor": 64,
                       "conv1_t_stride": 2},
                      (1, 3, 7, 32, 33)),
    "resnet34-3d_b": ({"arch": "resnet34-3d", "in_channels": 1, "num_outputs": 1, "width_divisor": 32,
                       "block_config": [1, 2, 1, 1], "bias_downsample": False, "no_max_pool": True,
                       "conv1_t_stride": 2},
                      (2, 1, 8, 17, 16)),
    "resnet50-3d_a": ({"arch": "resnet50-3d", "in_channels": 3, "num_outputs": 1, "width_divisor": 64,
                       "conv1_t_stride": 2},
                      (1, 3, 7, 24, 25)),
    "resnet50-3d_b": ({"arch": "resnet50-3d", "in_channels": 3, "num_outputs": 5, "width_divisor": 64,
                       "block_config": [1, 1, 2, 1], "conv1_t_stride": 1}, (2, 3, 6, 13, 14)),
    "inception-v1-3d_a": ({"arch": "inception-v1-3d", "in_channels": 3, "num_outputs": 1, "width_divisor": 32},
                          (1, 3, 9, 21, 19)),
    "inception-v1-3d_b": ({"arch": "inception-v1-3d", "in_channels": 1, "num_outputs": 5, "width_divisor": 32},
                          (2, 1, 9, 32, 32)),
    "densenet121-2d_a": ({"arch": "densenet121-2d", "in_channels": 3, "num_outputs": 1, "init_features": 4,
                          "growth_rate": 2, "bn_size": 2}, (1, 3, 2, 35, 33)),
    "densenet121-2d_b": ({"arch": "densenet121-2d", "in_channels": 1, "num_outputs": 5, "init_features": 6,
                          "growth_rate": 3, "bn_size": 2, "block_config": [2, 3, 2], "_naming": "monai"},
                         (2, 1, 4, 24, 26)),
    "densenet169-2d_a": ({"arch": "densenet169-2d", "in_channels": 3, "num_outputs": 5, "init_features": 4,
                          "growth_rate": 2, "bn_size": 1, "block_config": [3, 4, 5, 4]}, (1, 3, 2, 33, 32)),
    "densenet169-2d_b": ({"arch": "densenet169-2d", "in_channels": 2, "num_outputs": 1, "init_features": 4,
                          "growth_rate": 3, "bn_size": 1, "block_config": [1, 2, 1, 1], "_naming": "monai"},
                         (1, 2, 5, 40, 36)),
    "densenet201-2d_a": ({"arch": "densenet201-2d", "in_channels": 3, "num_outputs": 1, "init_features": 4,
                          "growth_rate": 2, "bn_size": 1, "block_config": [2, 3, 6, 4]}, (1, 3, 2, 32, 33)),
    "densenet201-2d_b": ({"arch": "densenet201-2d", "in_channels": 3, "num_outputs": 5, "init_features": 8,
                          "growth_rate": 4, "bn_size": 2, "block_config": [2, 2, 2, 2]}, (2, 3, 2, 33, 35)),
    "inception-v1-2d_a": ({"arch": "inception-v1-2d", "in_channels": 3, "num_outputs": 1, "width_divisor": 32},
                          (1, 3, 3, 35, 33)),
    # More slices than the engine's chunk of 16.
    "inception-v1-2d_b": ({"arch": "inception-v1-2d", "in_channels": 1, "num_outputs": 5, "width_divisor": 32},
                          (1, 1, 18, 32, 32)),
    "resnet18-2d_a": ({"arch": "resnet18-2d", "in_channels": 3, "num_outputs": 1, "width_divisor": 32},
                      (1, 3, 3, 35, 33)),
    "resnet18-2d_b": ({"arch": "resnet18-2d", "in_channels": 2, "num_outputs": 5, "width_divisor": 32},
                      (2, 2, 3, 32, 30)),
    "resnet34-2d_a": ({"arch": "resnet34-2d", "in_channels": 3, "num_outputs": 5, "width_divisor": 32},
                      (1, 3, 2, 33, 32)),
    "resnet34-2d_b": ({"arch": "resnet34-2d", "in_channels": 1, "num_outputs": 1, "width_divisor": 32,
                       "block_config": [1, 2, 2, 1]}, (2, 1, 3, 30, 33)),
    "resnet50-2d_a": ({"arch": "resnet50-2d", "in_channels": 3, "num_outputs": 1, "width_divisor": 32},
                      (1, 3, 2, 34, 35)),
    "resnet50-2d_b": ({"arch": "resnet50-2d", "in_channels": 3, "num_outputs": 5, "width_divisor": 64,
                       "block_config": [2, 1, 1, 2]}, (2, 3, 2, 32, 32)),
    "covnet_a": ({"arch": "covnet", "in_channels": 3, "num_outputs": 5, "width_divisor": 32}, (1, 3, 3, 33, 31)),
    "covnet_b": ({"arch": "covnet", "in_channels": 3, "num_outputs": 1, "width_divisor": 64}, (2, 3, 2, 32, 34)),
}


def main():
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    index = []
    for i, (name, (cfg, shape)) in enumerate(CASES.items()):
        torch.manual_seed(1000 + i)
        net = make(cfg)
        randomize(net, torch.Generator().manual_seed(2000 + i))
        calibrate(net, shape, torch.Generator().manual_seed(4000 + i))
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(3000 + i))
        with torch.no_grad():
            # Rescale the head so that the outputs are O(1): a 1e-4 tolerance is then strict but fair.
            head = head_of(net, cfg)
            y0 = net(x)
            s = 2.0 / (y0 - head.bias).abs().max()
            head.weight.data *= s
        # The reference output in float64: PyTorch's own float32 result can be 1e-4 off in the deeper
        # networks, as much as the tolerance.
        with torch.inference_mode():
            y = net.double()(x.double()).float()
        net.float()
        sd = net.checkpoint() if isinstance(net, SliceMax) else net.state_dict()
        # BatchNorm's batch counters are no parameters; one case keeps them, as checkpoints have them.
        t = {k: v.detach().clone().contiguous() for k, v in sd.items()
             if i == 0 or not k.endswith("num_batches_tracked")}
        t["input"] = x.contiguous()
        t["output"] = y.contiguous()
        save_file(t, os.path.join(OUT, f"{name}.safetensors"))
        naming = cfg.get("_naming", "torchvision" if cfg["arch"].startswith("densenet") else "monai")
        rust_cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        index.append({"name": name, "config": rust_cfg, "naming": naming, "file": f"{name}.safetensors"})
        n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                                 "num_batches_tracked")))
        print(f"{name}: {n_params} parameters, output {[round(v, 4) for v in y.flatten().tolist()]}")
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
