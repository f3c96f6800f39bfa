#!/usr/bin/env python3
"""Golden fixtures for `ctgrade-eval` (evaluation/tests/fixtures/), computed with scikit-learn.

Run from the repository root with the project's Python oracle environment:

    /work/pyenv/bin/python tools/make_eval_fixtures.py

requirements: scikit-learn==1.9.1 scipy==1.17.1 numpy==2.4.6 statsmodels==0.15.0 (asserted below)

    python3 -m venv /tmp/evalenv
    /tmp/evalenv/bin/pip install scikit-learn==1.9.1 scipy==1.17.1 numpy==2.4.6 statsmodels==0.15.0

What it writes:
- golden.json: metric cases (ties, one class missing -> error, perfect and inverted classifiers,
  random sets) with scikit-learn's roc_auc_score and roc_curve (default drop_intermediate=True
  and False), numpy's Youden point and counts at 0.5; kappa cases with
  cohen_kappa_score(weights="quadratic", labels=[1..5]); DeLong cases from a direct numpy
  implementation of DeLong et al. (1988) checked against roc_auc_score; reference streams of the
  bootstrap generator; numpy percentiles. Floats whose exact value matters (scores, ROC points,
  thresholds) are also stored as IEEE-754 bit patterns ("*_bits") so that the Rust side reads
  them exactly.
- golden_calibration.json: calibration and operating-point cases (its own random stream, so
  golden.json is unchanged): scikit-learn's brier_score_loss and calibration_curve (10 bins,
  strategies "uniform" and "quantile", with the bin edges as bit patterns) and the expected
  calibration errors from them; calibration intercept (logit p as offset) and slope (logit p as
  the covariate) from statsmodels' unpenalised GLM Binomial, checked against scikit-learn's
  LogisticRegression(C=inf), unpenalised; sensitivity at specificity 0.90/0.95 (numpy.interp on
  roc_curve) and specificity at sensitivity 0.90/0.95 (numpy.interp on the roc_curve of the
  flipped problem), with the attainable threshold of each; positive and negative predictive
  values at the CO-RADS cut-offs (precision_score); decision-curve net benefit
  (confusion_matrix at each threshold probability).
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
import statsmodels
import statsmodels.api as sm
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, cohen_kappa_score, confusion_matrix, precision_score, roc_auc_score, roc_curve

assert sklearn.__version__ == "1.9.1", sklearn.__version__
assert scipy.__version__ == "1.17.1", scipy.__version__
assert np.__version__ == "2.4.6", np.__version__
assert statsmodels.__version__ == "0.15.0", statsmodels.__version__

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
# Calibration and operating points (golden_calibration.json, and the new keys of expected.json)

N_BINS = 10
# Probabilities are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before the logit (0 and 1 have none).
LOGIT_EPS = 1e-6
TARGETS = [90, 95]  # sensitivity / specificity targets, in percent
CO_RADS_CUTOFFS = [2, 3, 4, 5]  # CO-RADS >= k called positive
DCA_THRESHOLDS = [k / 100 for k in range(1, 100)]


def clipped_logit(p):
    p = np.clip(np.asarray(p, dtype=float), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p / (1 - p))


def calibration_bins(scores, labels, strategy):
    """sklearn's calibration_curve plus what it does not return: the edges and the counts of the
    non-empty bins (recomputed with the same searchsorted rule) and the ECE over them."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=N_BINS, strategy=strategy)
    if strategy == "quantile":
        edges = np.percentile(scores, np.linspace(0, 1, N_BINS + 1) * 100)
    else:
        edges = np.linspace(0.0, 1.0, N_BINS + 1)
    binids = np.searchsorted(edges[1:-1], scores)
    total = np.bincount(binids, minlength=N_BINS)
    nonzero = np.nonzero(total)[0]
    counts = total[nonzero]
    assert len(counts) == len(prob_true)
    ece = float(np.sum(counts / len(scores) * np.abs(prob_true - prob_pred)))
    return {
        "bin_edges_bits": [bits(v) for v in edges],
        "bin": [int(v) for v in nonzero],
        "counts": [int(v) for v in counts],
        "prob_true": [float(v) for v in prob_true],
        "prob_pred": [float(v) for v in prob_pred],
        "ece": ece,
    }


def separated(x, labels):
    """Whether the logit (quasi-)separates the classes: then the slope has no finite MLE."""
    labels = np.asarray(labels).astype(bool)
    xp, xn = x[labels], x[~labels]
    return not (xn.max() > xp.min() and xp.max() > xn.min())


def calibration_fit(scores, labels):
    """Calibration intercept (logit p as offset) and slope (logit p as covariate): unpenalised
    maximum likelihood by statsmodels' GLM Binomial, checked against scikit-learn."""
    y = np.asarray(labels, dtype=float)
    x = clipped_logit(scores)
    ones = np.ones((len(y), 1))
    r = sm.GLM(y, ones, family=sm.families.Binomial(), offset=x).fit(tol=1e-13, maxiter=500)
    assert r.converged
    intercept = float(r.params[0])
    slope = None
    slope_intercept = None
    if not separated(x, labels):
        r = sm.GLM(y, sm.add_constant(x, has_constant="add"), family=sm.families.Binomial()).fit(tol=1e-13, maxiter=500)
        assert r.converged
        slope_intercept, slope = float(r.params[0]), float(r.params[1])
        lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(x[:, None], y.astype(int))
        assert abs(lr.coef_[0][0] - slope) < 1e-5, (lr.coef_, slope)
    return intercept, slope, slope_intercept


def full_roc_counts(scores, labels):
    labels = np.asarray(labels).astype(int)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    return fpr, tpr, thr, np.rint(fpr * n_neg).astype(int), np.rint(tpr * n_pos).astype(int), n_pos, n_neg


def sens_at_spec_value(scores, labels, pct):
    """Sensitivity at specificity pct/100: numpy.interp on the ROC curve at fpr = 1 - pct/100
    (on a vertical step, the top: the highest sensitivity at that specificity)."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.interp((100 - pct) / 100, fpr, tpr))


def spec_at_sens_value(scores, labels, pct):
    """Specificity at sensitivity pct/100: the same interpolation on the ROC curve of the flipped
    problem (labels 1 - y, scores -p), whose tpr is the specificity and fpr 1 - sensitivity."""
    labels = np.asarray(labels).astype(int)
    fpr, tpr, _ = roc_curve(1 - labels, -np.asarray(scores, dtype=float), drop_intermediate=False)
    return float(np.interp((100 - pct) / 100, fpr, tpr))


def sens_at_spec_point(scores, labels, pct):
    """The attainable threshold: highest sensitivity with specificity >= pct/100 (ties: the
    highest threshold)."""
    fpr, tpr, thr, fp, tp, n_pos, n_neg = full_roc_counts(scores, labels)
    valid = fp * 100 <= (100 - pct) * n_neg
    last = int(np.nonzero(valid)[0].max())
    k = int(np.nonzero(tp == tp[last])[0].min())
    return thr[k]


def spec_at_sens_point(scores, labels, pct):
    """The attainable threshold: the highest with sensitivity >= pct/100."""
    fpr, tpr, thr, fp, tp, n_pos, n_neg = full_roc_counts(scores, labels)
    k = int(np.nonzero(tp * 100 >= pct * n_pos)[0].min())
    return thr[k]


def point_dict(scores, labels, thr):
    c = counts_at(scores, labels, thr)
    return {"threshold": fnum(thr),
            "sensitivity": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None,
            "specificity": c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else None, **c}


def operating_points(scores, labels):
    out = {}
    for pct in TARGETS:
        out[f"sensitivity_at_specificity_0_{pct}"] = {
            "target": pct / 100, "value": sens_at_spec_value(scores, labels, pct),
            "point": point_dict(scores, labels, sens_at_spec_point(scores, labels, pct))}
    for pct in TARGETS:
        out[f"specificity_at_sensitivity_0_{pct}"] = {
            "target": pct / 100, "value": spec_at_sens_value(scores, labels, pct),
            "point": point_dict(scores, labels, spec_at_sens_point(scores, labels, pct))}
    return out


def predictive_values(co_rads, labels):
    labels = np.asarray(labels).astype(int)
    out = []
    for k in CO_RADS_CUTOFFS:
        pred = (np.asarray(co_rads) >= k).astype(int)
        tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, pred, labels=[0, 1]).ravel())
        ppv = precision_score(labels, pred, zero_division=np.nan)
        npv = precision_score(1 - labels, 1 - pred, zero_division=np.nan)
        out.append({"cutoff": k, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "ppv": fnum(ppv), "npv": fnum(npv),
                    "sensitivity": tp / (tp + fn) if tp + fn else None,
                    "specificity": tn / (tn + fp) if tn + fp else None})
    return out


def decision_curve(scores, labels):
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    n = len(labels)
    prevalence = labels.sum() / n
    nb, nb_all = [], []
    for pt in DCA_THRESHOLDS:
        tn, fp, fn, tp = confusion_matrix(labels, (scores >= pt).astype(int), labels=[0, 1]).ravel()
        odds = pt / (1 - pt)
        nb.append(float(tp / n - fp / n * odds))
        nb_all.append(float(prevalence - (1 - prevalence) * odds))
    return {"thresholds": DCA_THRESHOLDS, "net_benefit": nb, "net_benefit_treat_all": nb_all}


def calibration_metrics(scores, labels):
    """The calibration keys of the evaluator's metrics."""
    intercept, slope, _ = calibration_fit(scores, labels)
    uni, qua = calibration_bins(scores, labels, "uniform"), calibration_bins(scores, labels, "quantile")
    return {
        "brier": float(brier_score_loss(labels, scores)),
        "ece_uniform_10": uni["ece"],
        "ece_quantile_10": qua["ece"],
        "calibration_intercept": intercept,
        "calibration_slope": slope,
        "calibration_curve_uniform_10": uni,
        "calibration_curve_quantile_10": qua,
    }


def calibration_case(name, scores, labels, co_rads=None):
    scores = [float(s) for s in scores]
    labels = [int(v) for v in labels]
    intercept, slope, slope_intercept = calibration_fit(scores, labels)
    case = {"name": name, "scores_bits": [bits(s) for s in scores], "labels": labels,
            "brier": float(brier_score_loss(labels, scores)),
            "uniform": calibration_bins(scores, labels, "uniform"),
            "quantile": calibration_bins(scores, labels, "quantile"),
            "calibration_intercept": intercept, "calibration_slope": slope,
            "calibration_slope_model_intercept": slope_intercept,
            "operating_points": operating_points(scores, labels),
            "youden_threshold_bits": bits(youden_np(scores, labels)[0]),
            "decision_curve": decision_curve(scores, labels)}
    if co_rads is not None:
        case["co_rads"] = [int(v) for v in co_rads]
        case["predictive_values"] = predictive_values(co_rads, labels)
    return case


def calibration_cases(rng):
    cases = [
        # scikit-learn's calibration_curve docstring example.
        calibration_case("sklearn_docstring", [0.1, 0.2, 0.3, 0.4, 0.65, 0.7, 0.8, 0.9, 1.0], [0, 0, 0, 0, 1, 1, 1, 1, 1]),
        # Scores on the uniform bin edges (searchsorted's left side), 0 and 1 (clipped logits).
        calibration_case("on_edges", [0.0, 0.1, 0.2, 0.30000000000000004, 0.3, 0.5, 0.7, 0.9, 1.0, 0.6, 0.4, 0.8],
                         [0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0], co_rads=[1, 1, 2, 2, 2, 3, 4, 5, 5, 3, 3, 4]),
        calibration_case("three_values", [0.2, 0.2, 0.2, 0.5, 0.5, 0.8, 0.8, 0.8], [0, 0, 1, 0, 1, 1, 1, 0]),
        calibration_case("separated", np.linspace(0.05, 0.95, 12), [0] * 6 + [1] * 6, co_rads=[1] * 4 + [3] * 4 + [5] * 4),
        calibration_case("all_tied", [0.5] * 6, [0, 1, 0, 1, 1, 0]),
    ]
    labels = rng.integers(0, 2, 60)
    cases.append(calibration_case("ties_grid_0_1", np.round(rng.random(60) * 0.6 + 0.4 * labels, 1), labels))
    labels = (rng.random(200) < 0.3).astype(int)
    x = rng.normal(size=200) + 1.5 * labels
    p = 1 / (1 + np.exp(-(0.8 * x - 0.7)))
    cases.append(calibration_case("random_n200", p, labels, co_rads=np.clip(np.rint(1 + 4 * p), 1, 5)))
    labels = rng.integers(0, 2, 500)
    p = np.round(rng.beta(2, 3, 500) * 0.7 + 0.3 * labels, 2)
    cases.append(calibration_case("ties_grid_0_01_n500", p, labels, co_rads=np.clip(np.rint(1 + 4 * p), 1, 5)))
    labels = (rng.random(37) < 0.5).astype(int)
    cases.append(calibration_case("uninformative_n37", rng.random(37), labels))
    labels = (rng.random(150) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-(2.5 * (rng.normal(size=150) + 1.2 * labels) - 1.0)))  # overconfident
    cases.append(calibration_case("overconfident_n150", p, labels))
    return cases


def calibration_golden():
    rng = np.random.default_rng(20260413)
    return {
        "versions": {"scikit-learn": sklearn.__version__, "scipy": scipy.__version__, "numpy": np.__version__,
                     "statsmodels": statsmodels.__version__},
        "n_bins": N_BINS, "logit_eps": LOGIT_EPS,
        "cases": calibration_cases(rng),
    }


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
    res = {k: [] for k in ["auc", "qwk", "auc_other", "qwk_other", "auc_diff", "qwk_diff", "brier", "brier_other",
                           "brier_diff", "youden_threshold"]
           + [f"sens_{pct}" for pct in TARGETS] + [f"spec_{pct}" for pct in TARGETS]}
    res["youden_undefined"] = 0
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
        b = brier_score_loss(labels[idx], scores[idx])
        res["brier"].append(b)
        for pct in TARGETS:
            res[f"sens_{pct}"].append(sens_at_spec_value(scores[idx], labels[idx], pct))
            res[f"spec_{pct}"].append(spec_at_sens_value(scores[idx], labels[idx], pct))
        yt = youden_np(scores[idx], labels[idx])[0]
        if math.isfinite(yt):
            res["youden_threshold"].append(yt)
        else:
            res["youden_undefined"] += 1
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
            bo = brier_score_loss(labels[idx], oscores[idx])
            res["brier_other"].append(bo)
            res["brier_diff"].append(b - bo)
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
    m.update(calibration_metrics(scores, labels))
    m.update(operating_points(scores, labels))
    with_co_rads = [r for r in rows if r["co_rads_pred"] is not None]
    m["predictive_values_co_rads"] = predictive_values(
        [r["co_rads_pred"] for r in with_co_rads], [r["label"] for r in with_co_rads]) if with_co_rads else None
    m["decision_curve"] = decision_curve(scores, labels)
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
                          "rejected_resamples": rejected, "qwk_undefined_resamples": undefined,
                          "youden_threshold_undefined_resamples": res["youden_undefined"]}
        m["brier_95ci"] = percentile_ci(res["brier"])
        m["youden_threshold_95ci"] = percentile_ci(res["youden_threshold"])
        for pct in TARGETS:
            m[f"sensitivity_at_specificity_0_{pct}"]["value_95ci"] = percentile_ci(res[f"sens_{pct}"])
            m[f"specificity_at_sensitivity_0_{pct}"]["value_95ci"] = percentile_ci(res[f"spec_{pct}"])
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
            brier_other = float(brier_score_loss(olabels, oscores))
            bp, bp1 = p_values([-d for d in res["brier_diff"]])
            m["compare"].update({
                "brier_other": brier_other,
                "brier_other_95ci": percentile_ci(res["brier_other"]),
                "brier_difference": m["brier"] - brier_other,
                "brier_difference_95ci": percentile_ci(res["brier_diff"]),
                # Lower is better: the one-sided alternative is "this Brier is smaller".
                "brier_p_value": bp,
                "brier_p_value_one_sided": bp1,
            })
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


# ---------------------------------------------------------------------------------------------
# Strata by any column (--strata): its own random stream, so no other fixture changes.

STRATA_MIN_CASES = 10


def delong_single(scores, labels):
    """DeLong's variance of one AUC from the psi matrix (ddof = 1), checked against sklearn."""
    s, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    x, y = s[labels], s[~labels]
    if len(x) < 2 or len(y) < 2:
        return None
    psi = (x[:, None] > y[None, :]).astype(float) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    assert abs(psi.mean() - roc_auc_score(labels, s)) < 1e-12
    return float(np.var(v10, ddof=1) / len(x) + np.var(v01, ddof=1) / len(y))


def strata_fixture(iterations=200, seed=2021):
    rng = np.random.default_rng(5150)
    d = OUT / "strata"
    rows, truth_rows, pred_rows, strata_rows = [], [], [], []
    for p in range(70):
        pid = f"S{p:03d}"
        site = str(rng.choice(["A", "B", "C"], p=[0.45, 0.4, 0.15]))
        vendor = str(rng.choice(["philips", "siemens"]))
        tiny = "small" if p < 3 else "big"
        label = int(rng.random() < 0.4)
        for k in range(int(rng.integers(1, 3))):
            case = f"strata_{pid}_s{k}"
            prob = round(float(np.clip(0.3 * label + rng.beta(2, 3), 0, 1)), 3)
            ct = int(np.clip(round(1 + 4 * prob + rng.normal(0, 0.8)), 1, 5)) if label else int(rng.integers(1, 4))
            cp = int(np.clip(ct + rng.integers(-1, 2), 1, 5))
            rows.append(dict(case=case, probability=prob, label=label, co_rads_true=ct, co_rads_pred=cp,
                             patient=pid, site=site, vendor=vendor, sex="F", tiny=tiny))
            truth_rows.append([case, label, ct, pid])
            pred_rows.append([case, prob, cp])
    for k, r in enumerate(rows):
        if k % 31 == 5:
            r["no_row"] = True  # no row in the strata file
            continue
        site = "" if k % 29 == 7 else r["site"]
        if site == "":
            r["site_missing"] = True
        strata_rows.append([r["case"], site, r["vendor"], r["sex"], r["tiny"]])
    strata_rows.insert(4, ["ghost_1", "A", "philips", "F", "big"])
    strata_rows.append(["ghost_2", "B", "siemens", "F", "big"])
    columns = ["site", "vendor", "sex", "tiny"]
    write_csv(d / "ground_truth.csv", ["case", "label", "co_rads", "patient"], truth_rows)
    write_csv(d / "predictions.csv", ["case", "probability", "co_rads"], pred_rows)
    write_csv(d / "strata.csv", ["case"] + columns, strata_rows)
    expected = {"iterations": iterations, "seed": seed, "min_cases": STRATA_MIN_CASES,
                "unknown_cases": ["ghost_1", "ghost_2"],
                "n_cases_without_row": sum(1 for r in rows if r.get("no_row")), "columns": []}
    for i, col in enumerate(columns):
        def value(r):
            if r.get("no_row") or (col == "site" and r.get("site_missing")):
                return None
            return r[col]
        values = sorted({value(r) for r in rows if value(r) is not None})
        entry = {"column": col, "n_missing": sum(1 for r in rows if value(r) is None), "strata": []}
        if len(values) < 2:
            entry["skipped"] = True
            entry["difference_test"] = None
            expected["columns"].append(entry)
            continue
        comparable = []
        for j, v in enumerate(values):
            sub = [r for r in rows if value(r) == v]
            labels = [r["label"] for r in sub]
            scores = [r["probability"] for r in sub]
            npos = sum(labels)
            st = {"value": v, "n_cases": len(sub), "n_positive": npos, "n_negative": len(sub) - npos,
                  "n_patients": len({r["patient"] for r in sub})}
            if npos == 0 or npos == len(sub) or len(sub) < STRATA_MIN_CASES:
                st.update(scored=False, auc=None, auc_95ci=None, auc_variance_delong=None, qwk=None, qwk_95ci=None)
            else:
                s_seed = seed + 1000 * (i + 1) + j
                res, _, _, _, _ = bootstrap(sub, iterations, s_seed)
                var = delong_single(scores, labels)
                st.update(scored=True, auc=float(roc_auc_score(labels, scores)), auc_variance_delong=var,
                          qwk=qwk_or_none([r["co_rads_true"] for r in sub], [r["co_rads_pred"] for r in sub]),
                          auc_95ci=percentile_ci(res["auc"]), qwk_95ci=percentile_ci(res["qwk"]),
                          bootstrap_seed=s_seed)
                if var is not None:
                    comparable.append((v, st["auc"], var))
            entry["strata"].append(st)
        if len(comparable) >= 2 and all(c[2] > 0 for c in comparable):
            w = np.array([1 / c[2] for c in comparable])
            a = np.array([c[1] for c in comparable])
            mean = float(np.sum(w * a) / np.sum(w))
            chi2 = float(np.sum(w * (a - mean) ** 2))
            df = len(comparable) - 1
            test = {"strata": [c[0] for c in comparable], "chi2": chi2, "df": df,
                    "p_value": float(scipy.stats.chi2.sf(chi2, df)), "z": None}
            if df == 1:
                z = (a[0] - a[1]) / math.sqrt(comparable[0][2] + comparable[1][2])
                assert abs(z * z - chi2) < 1e-9
                test["z"] = float(z)
            entry["difference_test"] = test
        else:
            entry["difference_test"] = None
        expected["columns"].append(entry)
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
    with open(OUT / "golden_calibration.json", "w") as f:
        json.dump(calibration_golden(), f)
        f.write("\n")
    generic_case("multiscan", rng, 45, 3, 0.4, True, True, True, 300, 7)
    generic_case("scans", rng, 70, 1, 0.35, False, False, False, 300, 2021)
    generic_case("rare", rng, 14, 2, 0.12, True, False, True, 200, 3)
    platform_fixture(rng, 200, 11)
    strata_fixture()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote fixtures under {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--strata-only"]:
        strata_fixture()  # the strata fixture alone; every other fixture stays as committed
    else:
        main()
