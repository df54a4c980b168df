"""Agreement statistics, as pure functions over lists of category labels.

Confusion matrices have the reference in rows and the test in columns. Kappa
is Cohen's with linear weights (w_ij = 1 - |i-j| / (k-1)), the usual choice
for an ordinal scale such as N0 < N1 < N2 < N3. Proportions carry 95 %
Wilson score intervals (good near 0 and 1 and for small n, unlike Wald); kappa
carries a percentile bootstrap interval with a fixed seed, so a report can be
reproduced to the digit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
DEFAULT_BOOTSTRAP = 2000
DEFAULT_SEED = 0
CI_LEVEL = 0.95


@dataclass(frozen=True)
class Proportion:
    """x of n, with its 95 % Wilson interval (None everywhere when n is 0)."""

    x: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for x successes in n trials (Wilson 1927; Newcombe 1998, method 3)."""
    if n <= 0:
        return None
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(x: int, n: int) -> Proportion:
    ci = wilson(x, n)
    if ci is None:
        return Proportion(x, n, None, None, None)
    return Proportion(x, n, x / n, ci[0], ci[1])


def confusion_matrix(reference: Sequence[str], test: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """counts[i, j]: reference category i, test category j."""
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(categories), len(categories)), dtype=int)
    for r, t in zip(reference, test, strict=True):
        counts[index[r], index[t]] += 1
    return counts


def weighted_kappa(counts: np.ndarray) -> float | None:
    """Linearly weighted Cohen's kappa from a k x k table; None when chance agreement is total."""
    k = counts.shape[0]
    n = counts.sum()
    if n == 0 or k < 2:
        return None
    i, j = np.indices((k, k))
    weights = 1.0 - np.abs(i - j) / (k - 1)
    observed = (weights * counts).sum() / n
    expected = (weights * np.outer(counts.sum(axis=1), counts.sum(axis=0))).sum() / (n * n)
    if math.isclose(expected, 1.0):
        return None
    return float((observed - expected) / (1.0 - expected))


def bootstrap_kappa(reference: Sequence[str], test: Sequence[str], categories: Sequence[str],
                    n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED
                    ) -> tuple[float, float, int] | None:
    """Percentile 95 % interval of weighted kappa over paired resamples: (low, high, resamples used).

    Resamples where kappa is undefined (all one category) are dropped and the
    count used is returned, so the report can say so.
    """
    n = len(reference)
    if n < 2 or n_resamples < 1:
        return None
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    r = np.array([index[c] for c in reference])
    t = np.array([index[c] for c in test])
    rng = np.random.default_rng(seed)
    kappas = []
    for _ in range(n_resamples):
        pick = rng.integers(0, n, n)
        counts = np.bincount(r[pick] * k + t[pick], minlength=k * k).reshape(k, k)
        value = weighted_kappa(counts)
        if value is not None:
            kappas.append(value)
    if not kappas:
        return None
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(kappas, [tail, 100 - tail])
    return float(low), float(high), len(kappas)


def per_category(counts: np.ndarray, categories: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Each category against the rest: sensitivity and specificity with Wilson intervals."""
    total = counts.sum()
    out = {}
    for i, c in enumerate(categories):
        tp = int(counts[i, i])
        fn = int(counts[i].sum() - tp)
        fp = int(counts[:, i].sum() - tp)
        tn = int(total - tp - fn - fp)
        out[c] = {"sensitivity": proportion(tp, tp + fn).to_dict(),
                  "specificity": proportion(tn, tn + fp).to_dict(),
                  "tp": tp, "fn": fn, "fp": fp, "tn": tn}
    return out


def binary(reference: Sequence[bool], test: Sequence[bool]) -> dict:
    """Sensitivity, specificity, PPV, NPV (Wilson intervals) and the 2x2 counts; True is the positive class."""
    tp = sum(1 for r, t in zip(reference, test, strict=True) if r and t)
    fn = sum(1 for r, t in zip(reference, test) if r and not t)
    fp = sum(1 for r, t in zip(reference, test) if not r and t)
    tn = sum(1 for r, t in zip(reference, test) if not r and not t)
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn,
            "sensitivity": proportion(tp, tp + fn).to_dict(), "specificity": proportion(tn, tn + fp).to_dict(),
            "ppv": proportion(tp, tp + fp).to_dict(), "npv": proportion(tn, tn + fn).to_dict(),
            "accuracy": proportion(tp + tn, tp + tn + fp + fn).to_dict()}
