#!/usr/bin/env python3
"""Golden fixtures for training: one optimiser step of small MONAI networks in PyTorch, the oracle
for ctgrade's trainable networks (src/train/net.rs and its bodies) and its optimiser
(src/train/optim.rs). tests/train_parity.rs repeats the step and compares.

The step is ctgrade's recipe: train mode (BatchNorm normalises with the batch statistics and
updates its running mean and unbiased variance with momentum 0.1), the continuous head's loss
(binary cross-entropy on the sigmoid of the single output, target (CO-RADS - 1) / 4, mean over
the batch; the last case has the categorical head: cross-entropy over five outputs), one
torch.optim.Adam step (lr 1e-4, betas 0.9/0.999, eps 1e-8). PyTorch computes the step in double
precision from float32 weights and batch; the results are stored as float32.

Cases (the names are ctgrade's architectures; `network` is the NetworkConfig that builds the same
network in ctgrade):
  resnet18-3d   MONAI ResNet("basic", [1, 1, 1, 1], widths / 32): stem kernel 7, stride 1, max pool,
                type-B shortcuts with bias (MONAI's defaults)
  resnet50-3d   MONAI ResNet("bottleneck", [1, 1, 1, 1], widths / 32), the same defaults
  densenet-3d   MONAI DenseNet(init_features 4, growth_rate 4, block_config (2, 2), bn_size 2)
  resnet18-2d   torchvision's ResNet (BasicBlock, [1, 1, 1, 1], widths / 32) on every axial slice,
                its globally pooled features max-pooled over slices, then its `fc` (the paper's
                2-D networks, Li et al.'s reduction)
  covnet        the same with torchvision's Bottleneck (widths / 32): COVNet
  densenet-2d   MONAI DenseNet(spatial_dims=2), the sizes of densenet-3d, with the same reduction
  inception-v1-3d   the I3D reference of tools/make_arch_fixtures.py (widths / 32, Kinetics head)
  inception-v1-2d   torchvision's GoogLeNet (widths / 32, no dropout) with the same reduction
  densenet-2d-categorical   densenet-2d with five outputs and the categorical head

The weights are random, with BatchNorm affine parameters, running statistics and biases drawn
away from their initial values so that every term of the step shows. Writes tests/fixtures/train/:
  cases.json             per case: name, network, head, lr, betas, eps, file
  <name>.safetensors     init.<t>   every tensor of the state dict before the step
                         input      the batch (N, C, D, H, W), float16 values
                         co_rads    the labels (uint8)
                         logits     the outputs of the training-mode forward pass
                         loss       the loss (one value)
                         grad.<p>   every parameter's gradient
                         after.<t>  every tensor of the state dict after the step

Run:  python tools/make_train_fixtures.py   (in a venv with the versions below)
requirements: torch==2.15.0 torchvision==0.29.2 monai==1.6.1 safetensors==0.8.0 numpy==2.4.6
"""

import json
import os
import sys
import types

import monai
import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import torchvision
from monai.networks.nets import DenseNet as MonaiDenseNet
from monai.networks.nets import ResNet as MonaiResNet
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck

# The I3D and small GoogLeNet of the inference fixtures, so that both test the same references.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_arch_fixtures import I3D, TinyResNet as TinyBackbone, tiny_googlenet  # noqa: E402

# The fixtures were generated with exactly these versions; other versions may differ in the last bits.
assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.29.2", torchvision.__version__
assert monai.__version__ == "1.6.1", monai.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__
assert np.__version__ == "2.4.6", np.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "train")

LR, BETAS, EPS = 1e-4, (0.9, 0.999), 1e-8


class TinyResNet(TinyBackbone):
    """The inference fixtures' torchvision ResNet (every width divided by `div`) on slices."""

    def forward(self, x):
        """(N, C, D, H, W): the backbone on every slice, each slice's features averaged, their
        maximum over slices, the linear layer."""
        n, c, d, h, w = x.shape
        s = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        s = self.maxpool(self.relu(self.bn1(self.conv1(s))))
        f = self.layer4(self.layer3(self.layer2(self.layer1(s))))
        f = f.mean((2, 3)).reshape(n, d, -1).amax(1)
        return self.fc(f)


class SliceDenseNet(MonaiDenseNet):
    """MONAI's 2-D DenseNet on every slice of (N, C, D, H, W), with the reduction of TinyResNet."""

    def forward(self, x):
        n, c, d, h, w = x.shape
        f = self.features(x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w))
        f = F.relu(f).mean((2, 3)).reshape(n, d, -1).amax(1)
        return self.class_layers.out(f)


def slice_googlenet(div, in_channels, num_outputs):
    """torchvision's GoogLeNet on every slice with the reduction of TinyResNet; no dropout
    (ctgrade trains without it)."""
    m = tiny_googlenet(div, in_channels, num_outputs)

    def forward(self, x):
        n, c, d, h, w = x.shape
        s = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        for name in ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                     "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
                     "maxpool4", "inception5a", "inception5b"]:
            s = getattr(self, name)(s)
        f = s.mean((2, 3)).reshape(n, d, -1).amax(1)
        return self.fc(f)

    m.forward = types.MethodType(forward, m)
    return m


def perturb(model, gen):
    """Moves every BatchNorm and bias off its initial value (deterministically)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            n = t.numel()
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(n, generator=gen).reshape(t.shape))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.2 * torch.randn(n, generator=gen).reshape(t.shape))
            elif t.dim() == 1:
                # BatchNorm weight.
                t.copy_(1.0 + 0.2 * torch.randn(n, generator=gen).reshape(t.shape))


def state(model):
    return {
        k: v.detach().to(torch.float32).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def step(model, x, co_rads, head):
    """ctgrade's training step; returns the tensors of the fixture."""
    out = {"init." + k: v for k, v in state(model).items()}
    # The step runs in double precision from these float32 values: the reference then carries
    # no rounding of its own (long BatchNorm sums cancel badly in float32), and the comparison
    # measures ctgrade's float32 step alone.
    model.double()
    x = x.double()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
    opt.zero_grad()
    logits = model(x)
    if head == "continuous":
        target = (co_rads.to(torch.float32) - 1.0) / 4.0
        loss = F.binary_cross_entropy_with_logits(logits.reshape(-1), target)
    else:
        loss = F.cross_entropy(logits, co_rads - 1)
    loss.backward()
    grads = {"grad." + k: p.grad.detach().to(torch.float32).contiguous() for k, p in model.named_parameters()}
    opt.step()
    out.update(grads)
    out.update({"after." + k: v for k, v in state(model).items()})
    out["input"] = x.to(torch.float16).contiguous()
    out["co_rads"] = co_rads.to(torch.uint8)
    out["logits"] = logits.detach().to(torch.float32).contiguous()
    out["loss"] = loss.detach().to(torch.float32).reshape(1)
    return out


def cases():
    base = {"in_channels": 3, "num_outputs": 1}
    yield (
        "resnet18-3d",
        {"arch": "resnet18-3d", **base, "width_divisor": 32, "block_config": [1, 1, 1, 1]},
        lambda: MonaiResNet("basic", [1, 1, 1, 1], [2, 4, 8, 16], spatial_dims=3, n_input_channels=3, num_classes=1),
        (2, 3, 16, 20, 20),
    )
    yield (
        "resnet50-3d",
        {"arch": "resnet50-3d", **base, "width_divisor": 32, "block_config": [1, 1, 1, 1]},
        lambda: MonaiResNet("bottleneck", [1, 1, 1, 1], [2, 4, 8, 16], spatial_dims=3, n_input_channels=3, num_classes=1),
        (2, 3, 16, 20, 20),
    )
    yield (
        "densenet-3d",
        {
            "arch": "densenet121-3d",
            **base,
            "growth_rate": 4,
            "block_config": [2, 2],
            "bn_size": 2,
            "init_features": 4,
        },
        lambda: MonaiDenseNet(
            spatial_dims=3,
            in_channels=3,
            out_channels=1,
            init_features=4,
            growth_rate=4,
            block_config=(2, 2),
            bn_size=2,
        ),
        (2, 3, 16, 20, 20),
    )
    yield (
        "resnet18-2d",
        {"arch": "resnet18-2d", **base, "width_divisor": 32, "block_config": [1, 1, 1, 1]},
        lambda: TinyResNet(BasicBlock, [1, 1, 1, 1], 32, 3, 1),
        (2, 3, 6, 32, 32),
    )
    yield (
        "covnet",
        {"arch": "covnet", **base, "width_divisor": 32, "block_config": [1, 1, 1, 1]},
        lambda: TinyResNet(Bottleneck, [1, 1, 1, 1], 32, 3, 1),
        (2, 3, 6, 32, 32),
    )
    yield (
        "densenet-2d",
        {
            "arch": "densenet121-2d",
            **base,
            "growth_rate": 4,
            "block_config": [2, 2],
            "bn_size": 2,
            "init_features": 4,
        },
        lambda: SliceDenseNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=1,
            init_features=4,
            growth_rate=4,
            block_config=(2, 2),
            bn_size=2,
        ),
        (2, 3, 6, 32, 32),
    )
    yield (
        "inception-v1-3d",
        {"arch": "inception-v1-3d", **base, "width_divisor": 32},
        lambda: I3D(3, 1, 32),
        (2, 3, 8, 24, 24),
    )
    yield (
        "inception-v1-2d",
        {"arch": "inception-v1-2d", **base, "width_divisor": 32},
        lambda: slice_googlenet(32, 3, 1),
        (2, 3, 4, 32, 32),
    )
    yield (
        "densenet-2d-categorical",
        {
            "arch": "densenet121-2d",
            "in_channels": 3,
            "num_outputs": 5,
            "growth_rate": 4,
            "block_config": [2, 2],
            "bn_size": 2,
            "init_features": 4,
        },
        lambda: SliceDenseNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=5,
            init_features=4,
            growth_rate=4,
            block_config=(2, 2),
            bn_size=2,
        ),
        (2, 3, 4, 32, 32),
    )


def main():
    os.makedirs(OUT, exist_ok=True)
    index = []
    for i, (name, network, make, shape) in enumerate(cases()):
        torch.manual_seed(1000 + i)
        model = make()
        gen = torch.Generator().manual_seed(2000 + i)
        perturb(model, gen)
        # Half-precision values (stored as such, a third of the fixtures' size otherwise).
        x = torch.randn(shape, generator=gen).half().float()
        co_rads = torch.tensor([2, 5])
        head = "continuous" if network["num_outputs"] == 1 else "categorical"
        tensors = step(model, x, co_rads, head)
        file = f"{name}.safetensors"
        save_file(tensors, os.path.join(OUT, file))
        index.append({"name": name, "network": network, "head": head, "lr": LR, "betas": list(BETAS), "eps": EPS, "file": file})
        print(f"{name}: loss {tensors['loss'].item():.6f}, {len(tensors)} tensors")
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
