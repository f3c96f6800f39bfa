#!/usr/bin/env python3
"""PyTorch counterpart of `ctgrade bench`: median time per forward of MONAI's 3-D DenseNet and peak RSS.

  /work/pyenv/bin/python tools/bench_torch.py --arch densenet201-3d --input 3,128,240,240 --repeat 3 --threads 2

Random weights, eval mode, torch.inference_mode(); one untimed warm-up forward, then --repeat timed ones.
Prints one JSON line with the same keys as `ctgrade bench`.
requirements: torch==2.15.0 monai==1.6.1
"""

import argparse
import json
import statistics
import time

import torch
import monai
from monai.networks.nets import DenseNet

assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert monai.__version__ == "1.6.1", monai.__version__

BLOCKS = {
    "densenet121-3d": (6, 12, 24, 16),
    "densenet169-3d": (6, 12, 32, 32),
    "densenet201-3d": (6, 12, 48, 32),
}


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=sorted(BLOCKS))
    ap.add_argument("--input", default="3,128,240,240", help="C,D,H,W or N,C,D,H,W")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-outputs", type=int, default=1)
    args = ap.parse_args()
    dims = [int(v) for v in args.input.split(",")]
    if len(dims) == 4:
        dims = [1] + dims
    if len(dims) != 5:
        raise SystemExit("--input: expected C,D,H,W or N,C,D,H,W")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    net = DenseNet(spatial_dims=3, in_channels=dims[1], out_channels=args.num_outputs,
                   block_config=BLOCKS[args.arch]).eval()
    build_s = time.perf_counter() - t0
    x = torch.randn(*dims)
    times, cpu_times = [], []
    with torch.inference_mode():
        for i in range(args.repeat + 1):
            t, c = time.perf_counter(), time.process_time()
            net(x)
            if i > 0:
                times.append(time.perf_counter() - t)
                # user + system CPU time of all threads (less sensitive to other load than wall time)
                cpu_times.append(time.process_time() - c)
    print(json.dumps({"arch": args.arch, "input": dims, "threads": torch.get_num_threads(),
                      "median_s": statistics.median(times), "times_s": times,
                      "median_cpu_s": statistics.median(cpu_times), "cpu_times_s": cpu_times, "build_s": build_s,
                      "peak_rss_mib": peak_rss_mib(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
