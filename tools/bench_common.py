"""Helpers shared by tools/bench_nnunet.py (nnU-Net v2) and tools/bench_nnunet_v1.py (nnU-Net v1),
which run in different pinned environments: standard library only."""

import os
import resource
import sys


def case_name(path):
    """The case name of an image file: its name without the image extension."""
    name = os.path.basename(path)
    for ext in (".nii.gz", ".mha", ".mhd", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def max_rss_mib(who):
    """The peak RSS of `who` (resource.RUSAGE_SELF or RUSAGE_CHILDREN) in MiB."""
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(who).ru_maxrss / 1024.0


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
