#!/usr/bin/env python3
"""Golden fixtures for `ctgrade convert` and `ctgrade inflate` (src/model/{convert,inflate}.rs).

Writes tests/fixtures/convert/:
  monai_module.pth        a small MONAI DenseNet(spatial_dims=3) saved with torch.save (zip format) as
                          {"state_dict": {"module." + name: tensor}, "epoch": 7, "optimizer": {...}}
                          (a DataParallel model's training checkpoint), num_batches_tracked included
  torchvision_legacy.pth  the same network as a bare state dict under old torchvision names
                          (`denselayer1.norm.1.weight`, `classifier.weight`)
  net3d_io.safetensors    `input` (N, C, D, H, W) and MONAI's `output` for that network (eval mode)
  densenet2d.safetensors  a tiny torchvision 2-D DenseNet (torchvision's own class; random weights,
                          random BatchNorm statistics) as its state dict
  net2d_io.safetensors    `input` (N, C, H, W) and torchvision's `output` for it (eval mode)
  legacy_format.pt        a state dict saved with _use_new_zipfile_serialization=False (unsupported)
  no_state_dict.pth       a zip checkpoint with no tensors at all
  convert.json            the networks' configurations, and for the inflation test the depths
                          whose outputs the Rust test combines (see `inflation_check`)

The script also inflates the 2-D network itself, loads the result into MONAI's 3-D DenseNet and
asserts the identities the Rust tests rely on, so that the fixture's depths are known to be valid.

Run with the project's venv:  /work/pyenv/bin/python tools/make_convert_fixtures.py
requirements: torch==2.15.0 torchvision==0.29.2 monai==1.6.1 safetensors==0.8.0 numpy==2.4.6
"""

import json
import os
import sys

import monai
import numpy as np
import safetensors
import torch
import torchvision
from monai.networks.nets import DenseNet as MonaiDenseNet
from safetensors.torch import save_file
from torchvision.models.densenet import DenseNet as TvDenseNet

# The fixtures were generated with exactly these versions; other versions may differ in the last bits.
assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.29.2", torchvision.__version__
assert monai.__version__ == "1.6.1", monai.__version__
assert safetensors.__version__ == "0.8.0", safetensors.__version__
assert np.__version__ == "2.4.6", np.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "convert")

# The 3-D network of the conversion test: three blocks (two transitions), 2 input channels, 5 outputs.
NET3D = {"arch": "densenet121-3d", "in_channels": 2, "num_outputs": 5, "init_features": 6, "growth_rate": 3,
         "block_config": [2, 1, 2], "bn_size": 2}
INPUT3D = (2, 2, 17, 20, 18)

# The 2-D network of the inflation test, and its 3-D counterpart's configuration.
NET2D = {"growth_rate": 4, "block_config": (2, 2), "num_init_features": 8, "bn_size": 2, "num_classes": 3}
NET2D_AS_3D = {"arch": "densenet121-3d", "in_channels": 3, "num_outputs": 3, "init_features": 8,
               "growth_rate": 4, "block_config": [2, 2], "bn_size": 2}
INPUT2D = (2, 3, 24, 22)
# Depths of the identical-slice volumes. The network's total stride is 8 (stem, max pool, one
# transition): depths that differ by a multiple of 8 have identical zero-padding effects at both ends.
DEPTH_CENTER = 5
DEPTHS_REPEAT = (88, 120)


def randomize(net, g):
    """Non-trivial BatchNorm (random affine parameters and running statistics), non-zero head bias."""
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.3 * torch.randn(n, generator=g)
            m.running_mean.data = 0.5 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + 1.5 * torch.rand(n, generator=g)
            m.num_batches_tracked.fill_(123)
        elif isinstance(m, torch.nn.Linear):
            m.bias.data = 0.1 * torch.randn(m.out_features, generator=g)


def rescale_head(net, head, x):
    """Scales the head so that outputs are O(1): a 1e-4 tolerance is then strict but fair."""
    with torch.no_grad():
        s = 2.0 / net(x).abs().max()
        head.weight.data *= s
        head.bias.data *= s


def torchvision_legacy_names(sd):
    """MONAI names -> the names of torchvision's original ImageNet checkpoints (`norm.1`)."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in k:
                k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        out[k] = v
    return out


def conversion_fixtures(g):
    c = NET3D
    torch.manual_seed(11)
    net = MonaiDenseNet(spatial_dims=3, in_channels=c["in_channels"], out_channels=c["num_outputs"],
                        init_features=c["init_features"], growth_rate=c["growth_rate"],
                        block_config=tuple(c["block_config"]), bn_size=c["bn_size"])
    randomize(net, g)
    net.eval()
    x = torch.randn(*INPUT3D, generator=g)
    rescale_head(net, net.class_layers.out, x)
    with torch.inference_mode():
        y = net(x)
    print(f"3-D net output {y.tolist()}")
    sd = net.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in sd)
    wrapped = {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 7,
               "optimizer": {"lr": 0.001, "betas": (0.9, 0.999)}}
    torch.save(wrapped, os.path.join(OUT, "monai_module.pth"))
    legacy = torchvision_legacy_names(sd)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy, list(legacy)[:12]
    torch.save(legacy, os.path.join(OUT, "torchvision_legacy.pth"))
    save_file({"input": x.contiguous(), "output": y.contiguous()}, os.path.join(OUT, "net3d_io.safetensors"))


def inflate(sd2d, mode):
    """I3D inflation in PyTorch (the check of the fixture's design, independent of the Rust code)."""
    out = {}
    for k, v in sd2d.items():
        if k.endswith("num_batches_tracked"):
            continue
        if v.dim() == 4:
            kd = v.shape[-1]  # DenseNet kernels are cubic: the depth size equals the width
            if mode == "repeat":
                v = v.unsqueeze(2).repeat(1, 1, kd, 1, 1) / kd
            else:
                z = torch.zeros(v.shape[0], v.shape[1], kd, v.shape[2], v.shape[3])
                z[:, :, kd // 2] = v
                v = z
        k = k.replace("classifier.", "class_layers.out.")
        parts = k.split(".")
        if len(parts) > 3 and parts[2].startswith("denselayer"):
            parts.insert(3, "layers")
        out[".".join(parts)] = v
    return out


def monai_3d(state):
    c = NET2D_AS_3D
    net = MonaiDenseNet(spatial_dims=3, in_channels=c["in_channels"], out_channels=c["num_outputs"],
                        init_features=c["init_features"], growth_rate=c["growth_rate"],
                        block_config=tuple(c["block_config"]), bn_size=c["bn_size"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(m.endswith("num_batches_tracked") for m in missing), (missing, unexpected)
    return net.eval()


def slices(x2d, depth):
    return x2d.unsqueeze(2).repeat(1, 1, depth, 1, 1).contiguous()


def inflation_check(net2d, sd2d, x2d, y2d):
    """Asserts what the Rust inflation test relies on, with MONAI's 3-D DenseNet:

    center: only the centre depth tap is non-zero, so every 3-D convolution acts slice by slice
    and zero padding in depth never contributes: on D identical slices, any D, the output is the
    2-D output.
    repeat: w/kd over kd taps gives the 2-D result on every slice whose depth neighbourhood is
    inside the volume; near both ends zero padding changes the features. The network's output is
    an affine function (the head) of the depth-average of the final feature slices, so with n(D)
    final slices, y(D) = head((B + (n(D) - m) v) / n(D)) where v is the interior (2-D) feature and B
    the sum of the m boundary slices. B and m are the same for depths that differ by a multiple of
    the total stride (8) once the volume is long enough for the ends not to interact, hence
        (n2 y(D2) - n1 y(D1)) / (n2 - n1) = head(v) = the 2-D output.
    """
    with torch.inference_mode():
        net = monai_3d(inflate(sd2d, "center"))
        y = net(slices(x2d, DEPTH_CENTER))
        err = (y - y2d).abs().max().item()
        print(f"center, depth {DEPTH_CENTER}: max |3-D - 2-D| = {err:.2e}")
        assert err < 1e-5, err
        net = monai_3d(inflate(sd2d, "repeat"))
        want = torch.relu(net2d.features(x2d))  # (N, C, h, w): the 2-D final features
        ys, ns, ends = [], [], []
        for d in DEPTHS_REPEAT:
            x3 = slices(x2d, d)
            f = torch.relu(net.features(x3))  # (N, C, n, h, w)
            ok = [(f[:, :, j] - want).abs().max().item() < 1e-5 for j in range(f.shape[2])]
            # Which final slices zero padding reached: a prefix and a suffix, never the middle.
            top = ok.index(True)
            bottom = ok[::-1].index(True)
            assert all(ok[top:len(ok) - bottom]), ok
            ends.append((top, bottom))
            ns.append(f.shape[2])
            ys.append(net(x3))
        print(f"repeat: final depths {ns}, boundary slices (top, bottom) {ends}")
        assert ends[0] == ends[1] and ends[0][0] > 0 and ends[0][1] > 0, ends
        n1, n2 = ns
        combined = (n2 * ys[1] - n1 * ys[0]) / (n2 - n1)
        err = (combined - y2d).abs().max().item()
        naive = (ys[1] - y2d).abs().max().item()
        print(f"repeat, depths {DEPTHS_REPEAT}: combined max err {err:.2e}, single-volume err {naive:.2e}")
        assert err < 1e-5, err
        assert naive > 1e-3, "the boundary effect should be visible (else the test proves nothing)"
    return ns


def inflation_fixtures(g):
    torch.manual_seed(21)
    net = TvDenseNet(**NET2D)
    randomize(net, g)
    net.eval()
    x = torch.randn(*INPUT2D, generator=g)
    rescale_head(net, net.classifier, x)
    with torch.inference_mode():
        y = net(x)
    print(f"2-D net output {y.tolist()}")
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(sd, os.path.join(OUT, "densenet2d.safetensors"))
    save_file({"input": x.contiguous(), "output": y.contiguous()}, os.path.join(OUT, "net2d_io.safetensors"))
    return inflation_check(net, sd, x, y)


def bad_inputs():
    torch.save({"w": torch.zeros(2)}, os.path.join(OUT, "legacy_format.pt"), _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, os.path.join(OUT, "no_state_dict.pth"))


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(31)
    conversion_fixtures(g)
    final_depths = inflation_fixtures(g)
    bad_inputs()
    meta = {
        "net3d": {"config": NET3D, "input_shape": list(INPUT3D)},
        "net2d": {"config": NET2D_AS_3D, "input_shape": list(INPUT2D), "center_depth": DEPTH_CENTER,
                  "repeat_depths": list(DEPTHS_REPEAT), "repeat_final_depths": final_depths},
    }
    with open(os.path.join(OUT, "convert.json"), "w") as f:
        json.dump(meta, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)
    assert total < 1 << 20, total


if __name__ == "__main__":
    main()
