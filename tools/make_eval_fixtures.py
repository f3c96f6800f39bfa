#!/usr/bin/env python3
"""Golden fixtures for `ctgrade-eval` (evaluation/tests/fixtures/), computed with scikit-learn.

Run from the repository root with the project's Python oracle environment:

    /work/pyenv/bin/python tools/make_eval_fixtures.py

requirements: scikit-learn==1.9.1 scipy==1.17.1 numpy==2.4.6 (asserted below)

What it writes:
- golden.json: metric cases (ties, one class missing -> error, perfect and inverted classifiers,
  random sets) with scikit-learn's roc_auc_score and roc_curve (default drop_intermediate=True
  and False), numpy's Youden point and counts at 0.5; kappa cases with
  cohen_kappa_score(weights="quadratic", labels=[1..5]); DeLong cases from a direct numpy
  implementation of DeLong et al. (1988) checked against roc_auc_score; reference streams of the
  bootstrap generator; numpy percentiles. Floats whose exact value matters (scores, ROC points,
  thresholds) are also stored as IEEE-754 bit patterns ("*_bits") so that the Rust side reads
  them exactly.
- cases/<name>/: generic ground-truth CSVs and prediction CSVs (multi-scan patients, slice
  thickness, CO-RADS, a second predictor) with expected.json: the evaluator's aggregates
  recomputed here, the bootstrap re-implemented with the same xoshiro256++ generator and the
  same resampling rule, each resample evaluated by scikit-learn on explicitly repeated arrays.
- platform/: a grand-challenge evaluation input in the platform's format (predictions.json with
  /input/<pk>/output/ files and inline values; socket values keyed "socket" as today's platform
  writes them, and the same jobs keyed "interface" as older files are, in
  predictions-interface.json) and an iCTCF-style patient table, with expected.json, for the
  end-to-end test of the binary.
"""

import csv
import json
import math
import shutil
import struct
import uuid
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.stats
import sklearn
from sklearn.metrics import cohen_kappa_score, roc_auc_score, roc_curve

assert sklearn.__version__ == "1.9.1", sklearn.__version__
assert scipy.__version__ == "1.17.1", scipy.__version__
assert np.__version__ == "2.4.6", np.__version__

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "evaluation" / "tests" / "fixtures"
M64 = (1 << 64) - 1
CO_RADS = [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
# The evaluator's bootstrap generator: SplitMix64-seeded xoshiro256++ and Lemire's bounded draw.


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro256pp:
    def __init__(self, seed=None, state=None):
        if state is not None:
            self.s = list(state)
            return
        sm = seed & M64
        self.s = []
        for _ in range(4):
            sm = (sm + 0x9E3779B97F4A7C15) & M64
            z = sm
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next_u64(self):
        s = self.s
        result = (rotl((s[0] + s[3]) & M64, 23) + s[0]) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def below(self, n):
        m = self.next_u64() * n
        if (m & M64) < n:
            threshold = ((1 << 64) - n) % n
            while (m & M64) < threshold:
                m = self.next_u64() * n
        return m >> 64


# ---------------------------------------------------------------------------------------------
# Helpers


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def fnum(x):
    """A float for JSON: None for NaN, infinities as None too."""
    x = float(x)
    return x if math.isfinite(x) else None


def auc_or_none(labels, scores):
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def qwk_or_none(truth, pred):
    if len(truth) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = cohen_kappa_score(truth, pred, weights="quadratic", labels=CO_RADS)
    return None if np.isnan(k) else float(k)


def counts_at(scores, labels, thr):
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    pred = scores >= thr
    return {
        "tp": int(np.sum(pred & labels)),
        "fp": int(np.sum(pred & ~labels)),
        "tn": int(np.sum(~pred & ~labels)),
        "fn": int(np.sum(~pred & labels)),
    }


def youden_np(scores, labels):
    fpr, tpr, thr = roc_curve(labels, scores)
    k = int(np.argmax(tpr - fpr))
    return float(thr[k]), float(tpr[k] - fpr[k]), counts_at(scores, labels, thr[k])


def delong_reference(a, b, labels):
    """DeLong, DeLong & Clarke-Pearson (1988), directly from the psi matrices."""
    labels = np.asarray(labels).astype(bool)
    out = {}
    v10s, v01s, aucs = [], [], []
    for s in (np.asarray(a), np.asarray(b)):
        x, y = s[labels], s[~labels]
        psi = (x[:, None] > y[None, :]).astype(float) + 0.5 * (x[:, None] == y[None, :])
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = labels.sum(), (~labels).sum()
    s10 = np.cov(np.vstack(v10s))  # ddof = 1
    s01 = np.cov(np.vstack(v01s))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    for k, s in enumerate((a, b)):
        assert abs(aucs[k] - roc_auc_score(labels, s)) < 1e-12
    if var > 0:
        z = diff / math.sqrt(var)
        p = 2 * scipy.stats.norm.sf(abs(z))
    elif diff == 0:
        z, p = 0.0, 1.0
    else:
        z, p = None, 0.0
    out.update(auc_a=aucs[0], auc_b=aucs[1], difference=diff, variance=float(var), z=z, p_value=float(p))
    return out


def percentile_ci(values):
    if len(values) == 0:
        return None
    lo, hi = np.percentile(np.asarray(values), [2.5, 97.5])
    return [float(lo), float(hi)]


def p_values(deltas):
    if len(deltas) == 0:
        return None, None
    d = np.asarray(deltas)
    le = float(np.mean(d <= 0))
    ge = float(np.mean(d >= 0))
    return min(1.0, 2 * min(le, ge)), le


# ---------------------------------------------------------------------------------------------
# Golden metric cases


def roc_dict(scores, labels, drop):
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=drop)
    return {
        "fpr_bits": [bits(v) for v in fpr],
        "tpr_bits": [bits(v) for v in tpr],
        "thresholds_bits": [bits(v) for v in thr],
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
    }


def metric_case(name, scores, labels):
    scores = [float(s) for s in scores]
    labels = [int(v) for v in labels]
    case = {"name": name, "scores": scores, "scores_bits": [bits(s) for s in scores], "labels": labels}
    # scikit-learn 1.9 warns and returns NaN for a single class (older versions raised); the
    # evaluator makes it an error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auc = roc_auc_score(labels, scores)
    if np.isnan(auc):
        assert any("Only one class" in str(w.message) for w in caught), caught
        case["error"] = "one_class"
        return case
    case["auc"] = float(auc)
    case["roc"] = roc_dict(scores, labels, True)
    case["roc_full"] = roc_dict(scores, labels, False)
    thr, j, c = youden_np(scores, labels)
    case["youden"] = {"threshold_bits": bits(thr), "j": j, **c}
    case["at_0_5"] = counts_at(scores, labels, 0.5)
    return case


def metric_cases(rng):
    cases = [
        metric_case("sklearn_docstring", [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]),
        metric_case("three_cases", [0.2, 0.7, 0.7], [0, 1, 0]),
        metric_case("all_tied", [0.5] * 6, [0, 1, 0, 1, 1, 0]),
        metric_case("perfect", np.linspace(0.0, 1.0, 12), [0] * 6 + [1] * 6),
        metric_case("inverted", np.linspace(0.0, 1.0, 12), [1] * 6 + [0] * 6),
        metric_case("one_class_positive", [0.1, 0.5, 0.9], [1, 1, 1]),
        metric_case("one_class_negative", [0.1, 0.5, 0.9], [0, 0, 0]),
        metric_case("extremes_and_half", [0.0, 1.0, 0.5, 0.5, 0.49999999999999994, 1.0, 0.0], [0, 1, 1, 0, 1, 0, 0]),
    ]
    labels = rng.integers(0, 2, 60)
    cases.append(metric_case("ties_grid_0_1", np.round(rng.random(60) * 0.6 + 0.4 * labels, 1), labels))
    labels = rng.integers(0, 2, 500)
    cases.append(metric_case("ties_grid_0_01_n500", np.round(rng.beta(2, 3, 500) * 0.7 + 0.3 * labels, 2), labels))
    labels = (rng.random(200) < 0.3).astype(int)
    cases.append(metric_case("random_continuous_n200", 1 / (1 + np.exp(-(rng.normal(size=200) + 1.5 * labels))), labels))
    labels = (rng.random(37) < 0.5).astype(int)
    cases.append(metric_case("random_uninformative_n37", rng.random(37), labels))
    return cases


def qwk_cases(rng):
    out = []

    def add(name, t, p):
        out.append({"name": name, "truth": [int(v) for v in t], "pred": [int(v) for v in p], "qwk": qwk_or_none(t, p)})

    add("perfect", [1, 2, 3, 4, 5, 3], [1, 2, 3, 4, 5, 3])
    add("reversed", [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    add("one_class_both", [3, 3, 3], [3, 3, 3])
    add("two_classes_used", [2, 3, 3, 2, 3], [2, 2, 3, 3, 3])
    t = rng.integers(1, 6, 100)
    add("random_n100", t, np.clip(t + rng.integers(-1, 2, 100), 1, 5))
    add("independent_n50", rng.integers(1, 6, 50), rng.integers(1, 6, 50))
    return out


def delong_cases(rng):
    out = []
    for name, n, effect_b, rounding in [("correlated_n80", 80, 0.8, None), ("ties_n60", 60, 0.5, 1), ("n12", 12, 1.0, None)]:
        labels = (rng.random(n) < 0.45).astype(int)
        labels[:2] = [0, 1]
        labels[2:4] = [0, 1]
        base = rng.normal(size=n)
        a = 1 / (1 + np.exp(-(base + 1.2 * labels)))
        b = 1 / (1 + np.exp(-(0.6 * base + rng.normal(size=n) * 0.8 + effect_b * labels)))
        if rounding is not None:
            a, b = np.round(a, rounding), np.round(b, rounding)
        out.append({
            "name": name,
            "labels": [int(v) for v in labels],
            "scores_a_bits": [bits(v) for v in a],
            "scores_b_bits": [bits(v) for v in b],
            **delong_reference(a, b, labels),
        })
    same = np.round(rng.random(10), 2)
    out.append({
        "name": "identical",
        "labels": [0, 1] * 5,
        "scores_a_bits": [bits(v) for v in same],
        "scores_b_bits": [bits(v) for v in same],
        **delong_reference(same, same, [0, 1] * 5),
    })
    return out


def rng_reference():
    r = Xoshiro256pp(state=[1, 2, 3, 4])
    ref = [r.next_u64() for _ in range(4)]
    # Published test vector of xoshiro256++ from state {1, 2, 3, 4}.
    assert ref == [41943041, 58720359, 3588806011781223, 3591011842654386], ref
    out = {"state_1234": ref, "seeded": []}
    for seed in [0, 2021, M64]:
        r = Xoshiro256pp(seed=seed)
        stream = [r.next_u64() for _ in range(5)]
        below = {str(n): [r.below(n) for _ in range(8)] for n in [1, 7, 1000, (1 << 63) + 12345]}
        out["seeded"].append({"seed": seed, "next_u64": stream, "below": below})
    return out


def percentile_reference(rng):
    out = []
    for n in [1, 2, 5, 40, 999, 1000]:
        v = rng.random(n)
        out.append({"values": [float(x) for x in v], "q": [2.5, 50.0, 97.5],
                    "expected": [float(x) for x in np.percentile(v, [2.5, 50.0, 97.5])]})
    return out


# ---------------------------------------------------------------------------------------------
# The evaluator's aggregates, recomputed (used for cases/ and platform/)


def make_clusters(patients):
    if any(p is not None for p in patients):
        order, members = {}, []
        for k, p in enumerate(patients):
            if p is None:
                members.append([k])
                continue
            if p not in order:
                order[p] = len(members)
                members.append([])
            members[order[p]].append(k)
        return members, "patient"
    return [[k] for k in range(len(patients))], "case"


def bootstrap(rows, iterations, seed, other=None):
    """rows: dicts with probability, label, co_rads_pred, co_rads_true, patient."""
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["probability"] for r in rows])
    members, unit = make_clusters([r["patient"] for r in rows])
    rng = Xoshiro256pp(seed=seed)
    pairs = [k for k, r in enumerate(rows) if r["co_rads_true"] is not None and r["co_rads_pred"] is not None]
    res = {k: [] for k in ["auc", "qwk", "auc_other", "qwk_other", "auc_diff", "qwk_diff"]}
    rejected = qwk_undefined = 0
    for _ in range(iterations):
        while True:
            w = np.zeros(len(rows), dtype=int)
            for _ in range(len(members)):
                for k in members[rng.below(len(members))]:
                    w[k] += 1
            drawn = labels[w > 0]
            if drawn.min() != drawn.max():
                break
            rejected += 1
        idx = np.repeat(np.arange(len(rows)), w)
        a = roc_auc_score(labels[idx], scores[idx])
        res["auc"].append(a)
        q = None
        if pairs:
            pidx = np.repeat(np.array(pairs), w[pairs])
            q = qwk_or_none([rows[k]["co_rads_true"] for k in pidx], [rows[k]["co_rads_pred"] for k in pidx])
            if q is None:
                qwk_undefined += 1
            else:
                res["qwk"].append(q)
        if other is not None:
            oscores = np.array([o["probability"] for o in other])
            ao = roc_auc_score(labels[idx], oscores[idx])
            res["auc_other"].append(ao)
            # sklearn's trapezoidal AUC can sit one rounding away from the exact rational; equal
            # AUCs must give a difference of exactly 0 (it decides the sign count of p-values).
            res["auc_diff"].append(round(a, 12) - round(ao, 12))
            opairs = [k for k, r in enumerate(rows) if r["co_rads_true"] is not None and other[k]["co_rads_pred"] is not None]
            if opairs:
                pidx = np.repeat(np.array(opairs), w[opairs])
                qo = qwk_or_none([rows[k]["co_rads_true"] for k in pidx], [other[k]["co_rads_pred"] for k in pidx])
                if qo is not None:
                    res["qwk_other"].append(qo)
                    if q is not None:
                        res["qwk_diff"].append(round(q, 12) - round(qo, 12))
    return res, rejected, qwk_undefined, unit, len(members)


def metrics_of(rows, iterations, seed, other=None):
    labels = [r["label"] for r in rows]
    scores = [r["probability"] for r in rows]
    pairs = [r for r in rows if r["co_rads_true"] is not None and r["co_rads_pred"] is not None]
    thr, j, yc = youden_np(scores, labels)
    half = counts_at(scores, labels, 0.5)
    m = {
        "n_cases": len(rows),
        "n_positive": int(sum(labels)),
        "n_negative": int(len(labels) - sum(labels)),
        "auc": float(roc_auc_score(labels, scores)),
        "qwk": qwk_or_none([r["co_rads_true"] for r in pairs], [r["co_rads_pred"] for r in pairs]) if pairs else None,
        "qwk_n_cases": len(pairs),
        "sensitivity": half["tp"] / (half["tp"] + half["fn"]),
        "specificity": half["tn"] / (half["tn"] + half["fp"]),
        "at_threshold_0_5": half,
        "youden": {"threshold": fnum(thr), "j": j, **yc},
        "roc": {k: [fnum(v) for v in arr] for k, arr in zip(["fpr", "tpr", "thresholds"], roc_curve(labels, scores))},
    }
    if pairs:
        cm = np.zeros((5, 5), dtype=int)
        for r in pairs:
            cm[r["co_rads_true"] - 1, r["co_rads_pred"] - 1] += 1
        m["co_rads_confusion"] = cm.tolist()
    if iterations:
        res, rejected, undefined, unit, n_units = bootstrap(rows, iterations, seed, other)
        m["auc_95ci"] = percentile_ci(res["auc"])
        m["qwk_95ci"] = percentile_ci(res["qwk"])
        m["bootstrap"] = {"iterations": iterations, "seed": seed, "unit": unit, "n_units": n_units,
                          "rejected_resamples": rejected, "qwk_undefined_resamples": undefined}
        if other is not None:
            olabels = labels
            oscores = [o["probability"] for o in other]
            opairs = [(r, o) for r, o in zip(rows, other) if r["co_rads_true"] is not None and o["co_rads_pred"] is not None]
            qo = qwk_or_none([r["co_rads_true"] for r, _ in opairs], [o["co_rads_pred"] for _, o in opairs]) if opairs else None
            ap, ap1 = p_values(res["auc_diff"])
            qp, qp1 = p_values(res["qwk_diff"])
            m["compare"] = {
                "auc_other": float(roc_auc_score(olabels, oscores)),
                "auc_other_95ci": percentile_ci(res["auc_other"]),
                "auc_difference": m["auc"] - float(roc_auc_score(olabels, oscores)),
                "auc_difference_95ci": percentile_ci(res["auc_diff"]),
                "auc_p_value": ap,
                "auc_p_value_one_sided": ap1,
                "delong": delong_reference(scores, oscores, labels),
                "qwk_other": qo,
                "qwk_other_95ci": percentile_ci(res["qwk_other"]),
                "qwk_difference": None if m["qwk"] is None or qo is None else m["qwk"] - qo,
                "qwk_difference_95ci": percentile_ci(res["qwk_diff"]),
                "qwk_p_value": qp,
                "qwk_p_value_one_sided": qp1,
            }
    return m


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in r])


def generic_case(name, rng, n_patients, scans_per_patient, prevalence, with_patient, with_thickness,
                 with_co_rads, iterations, seed):
    rows, other = [], []
    for p in range(n_patients):
        # The first two patients fix both classes; the rest follow the prevalence.
        label = 1 if p == 0 else 0 if p == 1 else int(rng.random() < prevalence)
        for s in range(int(rng.integers(1, scans_per_patient + 1))):
            case = f"{name}_p{p:03d}_s{s}"
            x = rng.normal() + 1.3 * label
            prob = round(float(1 / (1 + math.exp(-x))), 3)  # rounding makes ties
            oprob = round(float(1 / (1 + math.exp(-(0.7 * x + rng.normal() * 0.9)))), 3)
            cr_true = int(np.clip(round(1 + 4 * (0.25 + 0.5 * label + rng.normal() * 0.2)), 1, 5)) if with_co_rads else None
            cr_pred = int(np.clip(round(1 + 4 * prob), 1, 5)) if with_co_rads else None
            cr_other = int(np.clip(round(1 + 4 * oprob), 1, 5)) if with_co_rads else None
            thick = float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 5.0])) if with_thickness else None
            rows.append({"case": case, "probability": prob, "label": label, "co_rads_pred": cr_pred,
                         "co_rads_true": cr_true, "patient": f"P{p:03d}" if with_patient else None,
                         "slice_thickness_mm": thick})
            other.append({"case": case, "probability": oprob, "co_rads_pred": cr_other})
    if with_thickness:
        rows[0]["slice_thickness_mm"] = None  # one case in neither stratum
    d = OUT / "cases" / name
    if d.exists():
        shutil.rmtree(d)
    header = ["case", "label"] + (["co_rads"] if with_co_rads else []) + (["patient"] if with_patient else []) \
        + (["slice_thickness_mm"] if with_thickness else [])
    write_csv(d / "ground_truth.csv", header, [
        [r["case"], r["label"]] + ([r["co_rads_true"]] if with_co_rads else []) + ([r["patient"]] if with_patient else [])
        + ([r["slice_thickness_mm"]] if with_thickness else []) for r in rows])
    # Predictions in shuffled order with image-file names: matching must not depend on order.
    perm = rng.permutation(len(rows))
    write_csv(d / "predictions.csv", ["case", "probability"] + (["co_rads"] if with_co_rads else []),
              [[rows[k]["case"] + ".mha", rows[k]["probability"]] + ([rows[k]["co_rads_pred"]] if with_co_rads else []) for k in perm])
    write_csv(d / "other.csv", ["case", "probability"] + (["co_rads"] if with_co_rads else []),
              [[other[k]["case"], other[k]["probability"]] + ([other[k]["co_rads_pred"]] if with_co_rads else []) for k in perm])
    expected = {"iterations": iterations, "seed": seed, "all": metrics_of(rows, iterations, seed, other)}
    if with_thickness:
        known = [r for r in rows if r["slice_thickness_mm"] is not None]
        for key, sel, off in [("le", lambda t: t <= 1.5, 1), ("gt", lambda t: t > 1.5, 2)]:
            sub = [r for r in known if sel(r["slice_thickness_mm"])]
            expected[key] = metrics_of(sub, iterations, (seed + off) & M64)
        expected["n_unknown_slice_thickness"] = len(rows) - len(known)
    with open(d / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Platform fixture: predictions.json + /input/<pk>/output/ files + iCTCF patient table

ICTCF_HEADER = ["Patient ID", "Hospital", "Age", "Gender", "Body temperature", "Underlying diseases",
                "SARS-CoV-2 nucleic acids", "Computed tomography (CT)", "Morbidity outcome", "Mortality outcome"]


def with_interface_key(job):
    """A job with each socket value's "socket" key renamed "interface", in place (key order kept)."""
    def rename(sv):
        return {("interface" if k == "socket" else k): v for k, v in sv.items()}
    return {k: ([rename(sv) for sv in v] if k in ("inputs", "outputs") else v) for k, v in job.items()}


def platform_fixture(rng, iterations, seed):
    d = OUT / "platform"
    if d.exists():
        shutil.rmtree(d)
    outcomes = ["Control", "Control (Community-acquired pneumonia)", "Mild", "Regular", "Severe",
                "Critically ill", "Control", "Mild", "Control", "Regular", "Control (Community-acquired pneumonia)",
                "Suspected", "Suspected (COVID-19-confirmed later)", "Control", "Severe", "Control"]
    positive = {"Mild", "Regular", "Severe", "Critically ill"}
    table, jobs, rows = [], [], []
    for k, outcome in enumerate(outcomes):
        pid = f"Patient {k + 1}"
        nucleic = "Positive" if outcome in positive else ("Negative; Positive (Confirmed later)" if "later" in outcome else "Negative")
        table.append([pid, "Union Hospital", int(rng.integers(20, 90)), ["Male", "Female"][k % 2],
                      "37.2", "None", nucleic, "Positive" if outcome in positive else "Negative", outcome, "Cured"])
        if k == 12:
            continue  # an excluded (suspected) patient without a job: fine
        label = outcome in positive
        prob = float(np.round(1 / (1 + np.exp(-(rng.normal() + 1.4 * label))), 4))
        if k == 3:
            prob = 0.5  # exactly at the operating threshold
        co_rads = int(np.clip(round(1 + 4 * prob), 1, 5))
        pk = str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | k, version=4))
        image_name = f"patient_{k + 1}.mha"  # matched to "Patient k" by the normalised key
        inline = k % 3 == 0  # some values inline, the rest as files only
        image_pk = str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 32 | k, version=4))

        def socket(title, slug, kind, super_kind, rel):
            return {"title": title, "description": "", "slug": slug, "kind": kind, "pk": 100 + len(slug),
                    "default_value": None, "super_kind": super_kind, "relative_path": rel,
                    "overlay_segments": [], "look_up_table": None}

        job = {
            "pk": pk,
            "url": f"https://grand-challenge.org/api/v1/algorithms/jobs/{pk}/",
            "inputs": [{
                "pk": 5000 + k,
                "file": None,
                "image": {"pk": image_pk, "name": image_name},
                "value": None,
                "socket": socket("CT Image", "ct-image", "Image", "Image", "images/ct"),
            }],
            "outputs": [
                {"pk": 6000 + k, "file": None, "image": None, "value": prob if inline else None,
                 "socket": socket("Probability COVID-19", "probability-covid-19", "Float", "Value",
                                  "probability-covid-19.json")},
                {"pk": 7000 + k, "file": None, "image": None, "value": co_rads if inline else None,
                 "socket": socket("CO-RADS score", "co-rads-score", "Integer", "Value", "co-rads-score.json")},
            ],
            "status": "Succeeded",
            "rendered_result_text": "",
            "algorithm_title": "ctgrade",
            "started_at": "2021-10-08T12:00:00.000000+00:00",
            "completed_at": "2021-10-08T12:03:00.000000+00:00",
        }
        jobs.append(job)
        out_dir = d / "input" / pk / "output"
        out_dir.mkdir(parents=True)
        if not inline or k % 2 == 0:  # inline jobs sometimes also have the files, as the platform mounts them
            (out_dir / "probability-covid-19.json").write_text(json.dumps(prob))
            (out_dir / "co-rads-score.json").write_text(json.dumps(co_rads))
        if outcome.startswith("Suspected"):
            continue
        rows.append({"case": pid, "probability": prob, "label": int(label), "co_rads_pred": co_rads,
                     "co_rads_true": None, "patient": pid})
    order = rng.permutation(len(jobs))
    (d / "input").mkdir(parents=True, exist_ok=True)
    with open(d / "input" / "predictions.json", "w") as f:
        json.dump([jobs[k] for k in order], f, indent=2)
        f.write("\n")
    # The same jobs as older platform versions wrote them: the socket object keyed "interface".
    with open(d / "input" / "predictions-interface.json", "w") as f:
        json.dump([with_interface_key(jobs[k]) for k in order], f, indent=2)
        f.write("\n")
    write_csv(d / "ground_truth" / "ictcf_patients.csv", ICTCF_HEADER, table)
    m = metrics_of(rows, iterations, seed)
    by_label = np.zeros((2, 5), dtype=int)
    for r in rows:
        by_label[r["label"], r["co_rads_pred"] - 1] += 1
    m["co_rads_by_label"] = by_label.tolist()
    expected = {"iterations": iterations, "seed": seed, "all": m, "n_excluded": 2,
                "excluded": {"Suspected": 1, "Suspected (COVID-19-confirmed later)": 1}}
    with open(d / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def main():
    rng = np.random.default_rng(20211008)
    golden = {
        "versions": {"scikit-learn": sklearn.__version__, "scipy": scipy.__version__, "numpy": np.__version__},
        "rng": rng_reference(),
        "percentile": percentile_reference(rng),
        "metric_cases": metric_cases(rng),
        "qwk_cases": qwk_cases(rng),
        "delong_cases": delong_cases(rng),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "golden.json", "w") as f:
        json.dump(golden, f)
        f.write("\n")
    generic_case("multiscan", rng, 45, 3, 0.4, True, True, True, 300, 7)
    generic_case("scans", rng, 70, 1, 0.35, False, False, False, 300, 2021)
    generic_case("rare", rng, 14, 2, 0.12, True, False, True, 200, 3)
    platform_fixture(rng, 200, 11)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote fixtures under {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
