#!/usr/bin/env python3
"""PyTorch side of scripts/gpu-check.sh: random 3-D DenseNets, their outputs and their speed.

Plain torch (no MONAI, which the GPU machine lacks): `DenseNet3d` below is MONAI's
`DenseNet(spatial_dims=3)` layer for layer, with the same module names, so its state dict has the
names ctgrade reads (`features.denseblock1.denselayer1.layers.norm1.weight`, `class_layers.out.*`).
`selftest` checks that claim against MONAI where MONAI is installed (the project's venv).

Subcommands (all print one JSON object on stdout):
  make     --arch A [--config C.json] --shape N,C,D,H,W --seed S --weights W.safetensors
           [--input X.safetensors] [--members K --members-dir DIR]
           random weights (Kaiming convs, random BatchNorm affine and running statistics, as a trained
           network has) and a random input `input` (NCDHW f32); with --members, K weight files
           member0.safetensors ... of seeds S, S+1, ...
  forward  --arch A [--config C.json] --weights W --input X --device cpu|cuda [--tf32 on|off]
           the network's output on X; --save Y.safetensors writes it too
  bench    --arch A [--config C.json] --shape N,C,D,H,W --device cuda --repeat R [--tf32 on|off]
           [--cudnn-benchmark]   median seconds per forward (eager, inference mode, f32)
  compare  A.json B.json    max abs / rel difference of two `output` arrays
  selftest                  DenseNet3d == MONAI DenseNet (names, shapes, outputs), needs monai

Runs with the GPU machine's python3 (torch 2.11.0+cu130, safetensors 0.8.0, numpy 2.5) and with the
project's venv (torch 2.15.0, monai 1.6.1): nothing version-specific is used.
requirements: torch>=2.4 safetensors>=0.4 numpy>=1.26 (monai==1.6.1 for selftest only)
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict



def outputs_of(path):
    """The `output` array of the last JSON line in a file (ctgrade and this tool print one)."""
    with open(path) as f:
        lines = f.read().strip().splitlines()
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "output" in obj:
            return obj["output"]
    sys.exit(f"{path}: no JSON line with an `output` array")


def flat(v):
    return [x for row in v for x in flat(row)] if isinstance(v, list) else [float(v)]


def shape(v):
    return [len(v)] + shape(v[0]) if isinstance(v, list) and v else []


def compare_main(argv):
    """`compare A B [--tol T]` without torch: importing torch costs seconds per call."""
    p = argparse.ArgumentParser(prog="gpu_reference.py compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, default=1e-3)
    args = p.parse_args(argv)
    a, b = outputs_of(args.a), outputs_of(args.b)
    if shape(a) != shape(b):
        sys.exit(f"shapes differ: {args.a} {shape(a)}, {args.b} {shape(b)}")
    fa, fb = flat(a), flat(b)
    d = [abs(x - y) for x, y in zip(fa, fb)]
    res = {"a": args.a, "b": args.b, "max_abs": max(d),
           "max_rel": max(e / max(abs(y), 1e-6) for e, y in zip(d, fb)),
           "max_abs_value": max(abs(y) for y in fb), "tolerance": args.tol, "ok": max(d) <= args.tol}
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__" and sys.argv[1:2] == ["compare"]:
    compare_main(sys.argv[2:])

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

assert tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4), torch.__version__

BLOCKS = {
    "densenet121-3d": (6, 12, 24, 16),
    "densenet169-3d": (6, 12, 32, 32),
    "densenet201-3d": (6, 12, 48, 32),
}


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth, bn_size):
        super().__init__()
        mid = bn_size * growth
        self.layers = nn.Sequential(OrderedDict([
            ("norm1", nn.BatchNorm3d(c_in)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv1", nn.Conv3d(c_in, mid, 1, bias=False)),
            ("norm2", nn.BatchNorm3d(mid)),
            ("relu2", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv3d(mid, growth, 3, padding=1, bias=False)),
        ]))

    def forward(self, x):
        return torch.cat([x, self.layers(x)], 1)


class DenseNet3d(nn.Module):
    """MONAI DenseNet(spatial_dims=3, act=relu, norm=batch, dropout 0) with MONAI's module names."""

    def __init__(self, in_channels, out_channels, init_features=64, growth_rate=32,
                 block_config=(6, 12, 24, 16), bn_size=4):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv3d(in_channels, init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm3d(init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool3d(3, stride=2, padding=1)),
        ]))
        c = init_features
        for i, n in enumerate(block_config):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", _DenseLayer(c + j * growth_rate, growth_rate, bn_size))
            self.features.add_module(f"denseblock{i + 1}", block)
            c += n * growth_rate
            if i == len(block_config) - 1:
                self.features.add_module("norm5", nn.BatchNorm3d(c))
            else:
                self.features.add_module(f"transition{i + 1}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm3d(c)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("conv", nn.Conv3d(c, c // 2, 1, bias=False)),
                    ("pool", nn.AvgPool3d(2, stride=2)),
                ])))
                c //= 2
        self.class_layers = nn.Sequential(OrderedDict([
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.AdaptiveAvgPool3d(1)),
            ("flatten", nn.Flatten(1)),
            ("out", nn.Linear(c, out_channels)),
        ]))

    def forward(self, x):
        return self.class_layers(self.features(x))


def config(args, in_channels, num_outputs):
    """ctgrade's NetworkConfig fields: the architecture's defaults, then the --config JSON on top."""
    cfg = {"in_channels": in_channels, "num_outputs": num_outputs, "growth_rate": 32,
           "block_config": list(BLOCKS[args.arch]), "bn_size": 4, "init_features": 64}
    if args.config:
        with open(args.config) as f:
            over = json.load(f)
        over.pop("arch", None)
        unknown = set(over) - set(cfg)
        if unknown:
            sys.exit(f"{args.config}: unknown NetworkConfig fields {sorted(unknown)}")
        cfg.update(over)
    return cfg


def build(cfg):
    return DenseNet3d(cfg["in_channels"], cfg["num_outputs"], cfg["init_features"], cfg["growth_rate"],
                      tuple(cfg["block_config"]), cfg["bn_size"]).eval()


def randomize(net, seed):
    """Weights of a trained network's scale: Kaiming convs, BatchNorm with random affine parameters
    and running statistics (so that folding them into the convolutions is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / m.in_features) ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net


def state_tensors(net):
    # num_batches_tracked is training bookkeeping; ctgrade does not read it.
    return {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def parse_shape(s):
    dims = [int(v) for v in s.split(",")]
    if len(dims) == 4:
        dims = [1] + dims
    if len(dims) != 5:
        sys.exit(f"--shape {s}: expected N,C,D,H,W or C,D,H,W")
    return dims


def set_tf32(flag):
    """on: PyTorch's defaults for convolutions (cuDNN may use TF32) and matmuls set to TF32 too;
    off: strict f32 everywhere. default: leave PyTorch's defaults alone."""
    if flag == "default":
        return
    on = flag == "on"
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def cmd_make(args):
    shape = parse_shape(args.shape)
    cfg = config(args, shape[1], args.num_outputs)
    out = {"config": cfg, "files": []}
    if args.input:
        g = torch.Generator().manual_seed(args.seed + 10_000)
        save_file({"input": torch.randn(shape, generator=g)}, args.input)
        out["files"].append(args.input)
    seeds = [args.seed + k for k in range(args.members)] if args.members else [args.seed] if args.weights else []
    for k, seed in enumerate(seeds):
        path = args.weights if not args.members else os.path.join(args.members_dir, f"member{k}.safetensors")
        if args.members:
            os.makedirs(args.members_dir, exist_ok=True)
        save_file(state_tensors(randomize(build(cfg), seed)), path)
        out["files"].append(path)
    print(json.dumps(out))


def cmd_forward(args):
    set_tf32(args.tf32)
    weights = load_file(args.weights)
    x = load_file(args.input)["input"].float()
    cfg = config(args, x.shape[1], weights["class_layers.out.weight"].shape[0])
    net = build(cfg)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"{args.weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    dev = torch.device(args.device)
    net = net.to(dev)
    with torch.inference_mode():
        t = time.perf_counter()
        y = net(x.to(dev)).float().cpu()
        dt = time.perf_counter() - t
    if args.save:
        save_file({"output": y.contiguous()}, args.save)
    print(json.dumps({"output": y.tolist(), "device": str(dev), "tf32": args.tf32, "seconds": dt}))


def cmd_bench(args):
    set_tf32(args.tf32)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    shape = parse_shape(args.shape)
    dev = torch.device(args.device)
    net = randomize(build(config(args, shape[1], 1)), 0).to(dev)
    x = torch.randn(shape, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for i in range(args.repeat + args.warmup):
            sync()
            t = time.perf_counter()
            net(x)
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    out = {"arch": args.arch, "input": shape, "device": str(dev), "tf32": args.tf32,
           "cudnn_benchmark": args.cudnn_benchmark, "median_s": statistics.median(times), "times_s": times,
           "torch": torch.__version__}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["cudnn"] = torch.backends.cudnn.version()
    print(json.dumps(out))


def cmd_selftest(args):
    from monai.networks.nets import DenseNet

    class A:
        config = None

    failures = []
    for arch, blocks in [("densenet121-3d", (2, 3, 2, 2)), ("densenet201-3d", BLOCKS["densenet201-3d"])]:
        A.arch = arch
        cfg = config(A, 2, 3)
        cfg["block_config"] = list(blocks)
        ours = randomize(build(cfg), 7)
        ref = DenseNet(spatial_dims=3, in_channels=2, out_channels=3, block_config=blocks).eval()
        a, b = ours.state_dict(), ref.state_dict()
        if [(k, tuple(v.shape)) for k, v in a.items()] != [(k, tuple(v.shape)) for k, v in b.items()]:
            failures.append(f"{arch}: state dict names or shapes differ from MONAI's")
            continue
        ref.load_state_dict(a)
        x = torch.randn(1, 2, 32, 40, 36, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            d = (ours(x) - ref(x)).abs().max().item()
        if d != 0.0:
            failures.append(f"{arch}: outputs differ from MONAI's by {d}")
    print(json.dumps({"selftest": "ok" if not failures else "failed", "failures": failures}))
    sys.exit(1 if failures else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def net_args(q):
        q.add_argument("--arch", choices=sorted(BLOCKS), default="densenet201-3d")
        q.add_argument("--config", help="JSON object of NetworkConfig fields, as ctgrade's --config")

    q = sub.add_parser("make")
    net_args(q)
    q.add_argument("--shape", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--num-outputs", type=int, default=1)
    q.add_argument("--weights")
    q.add_argument("--input")
    q.add_argument("--members", type=int, default=0)
    q.add_argument("--members-dir")
    q.set_defaults(func=cmd_make)

    q = sub.add_parser("forward")
    net_args(q)
    q.add_argument("--weights", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("--device", default="cpu")
    q.add_argument("--tf32", choices=["on", "off", "default"], default="off")
    q.add_argument("--save")
    q.set_defaults(func=cmd_forward)

    q = sub.add_parser("bench")
    net_args(q)
    q.add_argument("--shape", default="1,3,128,240,240")
    q.add_argument("--device", default="cuda")
    q.add_argument("--repeat", type=int, default=10)
    q.add_argument("--warmup", type=int, default=2)
    q.add_argument("--tf32", choices=["on", "off", "default"], default="off")
    q.add_argument("--cudnn-benchmark", action="store_true")
    q.set_defaults(func=cmd_bench)

    q = sub.add_parser("selftest")
    q.set_defaults(func=cmd_selftest)

    args = p.parse_args()
    if getattr(args, "cmd", None) == "make" and not args.weights and not args.members and not args.input:
        p.error("make: give --weights, --input or --members")
    if getattr(args, "cmd", None) == "make" and args.members and not args.members_dir:
        p.error("make: --members needs --members-dir")
    args.func(args)


if __name__ == "__main__":
    main()
