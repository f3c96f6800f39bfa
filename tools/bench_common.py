"""Helpers shared by tools/bench_nnunet.py (nnU-Net v2) and tools/bench_nnunet_v1.py (nnU-Net v1),
which run in different pinned environments: standard library only."""

import argparse
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(doc, predictor):
    """The two benchmark scripts' command line: `make-model DIR [--ct CT] [--threads N]` and
    `predict --model M --input CT --output DIR [--threads N]` (`predictor` names what predict
    runs). The thread count goes into OMP_NUM_THREADS and MKL_NUM_THREADS at once: torch's OpenMP
    pool reads them once, when it loads, so this runs before torch is imported."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-model", help="write the benchmark model folder")
    mk.add_argument("dir")
    mk.add_argument("--ct", default=os.path.join(ROOT, "tests", "data", "real_ct", "lung1.mha"))
    mk.add_argument("--threads", type=int, default=2)
    pr = sub.add_parser("predict", help=f"run {predictor} on one CT, timed")
    pr.add_argument("--model", required=True)
    pr.add_argument("--input", required=True)
    pr.add_argument("--output", required=True)
    pr.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    return args


def case_name(path):
    """The case name of an image file: its name without the image extension."""
    name = os.path.basename(path)
    for ext in (".nii.gz", ".mha", ".mhd", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def peak_rss():
    """The peak RSS in MiB of this process (`rss_self_mib`) and of its waited-for children
    (`rss_children_mib`), and the larger (`peak_rss_mib`), as /usr/bin/time reports it."""
    # ru_maxrss is in KiB on Linux.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"peak_rss_mib": max(own, children), "rss_self_mib": own, "rss_children_mib": children}


def folds_found(model, checkpoint):
    """The folds with a `checkpoint` file, as `ctgrade segment` finds them by default."""
    folds = sorted(
        int(d[len("fold_") :])
        for d in os.listdir(model)
        if d.startswith("fold_")
        and d[len("fold_") :].isdigit()
        and os.path.exists(os.path.join(model, d, checkpoint))
    )
    if not folds:
        sys.exit(f"{model}: no fold_N/{checkpoint}")
    return tuple(folds)
