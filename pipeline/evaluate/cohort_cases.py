"""The synthetic cohort's random parts, as pure functions: which phantom each study is, how it varies, cN.

A study is one of the named phantom cases (geometric `pipeline.phantom.CASES` or
real-anatomy `pipeline.phantom_real_cases.REAL_CASES`) with its parameters
redrawn: positive node sizes around the partial-volume and 10 mm limits (so
their SUVmax falls near the PERCIST liver threshold), distractor sizes, and
the physiologic traps (myocardium, esophagus, brown fat, neck muscle, liver
noise). Cases are modified with `dataclasses.replace`, never edited.

cN is what a reader would have said: the truth (pN) moved by one category in
a drawn share of studies, at the published rate of cN–pN disagreement.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from pipeline.phantom import CASES, PRIMARY_SITES, Case
from pipeline.phantom_real_cases import PRIMARY_LOBES, REAL_CASES, RealCase
from pipeline.staging import stage

# Clinical (cN) and pathological (pN) N disagree in 38 % of resected NSCLC: "clinical staging ...
# misclassified nodal disease in 38 %" (NSCLC Meta-analysis Collaborative Group, Navani N et al., The
# accuracy of clinical staging of stage I-IIIa non-small cell lung cancer: an analysis based on individual
# participant data, Chest 2019;155(3):502-509, doi:10.1016/j.chest.2018.10.020; 698 patients, surgery alone).
CN_PN_DISAGREEMENT = 0.38
# Of the stage disagreements in the same study, 34 % of patients were clinically understaged and 14 %
# overstaged: understaging is 34/48 of the disagreements. We apply that split to N (the paper gives no
# N-only split), moving cN one category below pN when both directions are possible.
CN_UNDERSTAGED_SHARE = 34.0 / 48.0
N_SCALE = ("N0", "N1", "N2", "N3")  # TNM 8: cN is drawn on this scale

REAL_SHARE = 0.3  # of the studies, when a real-anatomy CT is given
# Each study's truth N is drawn first, N0 to N3 equally (then a named case with that N), so that both
# sides of the N0-1 / N2-3 split are tested; a surgical series would be mostly pN0, the named cases
# mostly N2-N3.
N_CATEGORY_WEIGHTS = {"N0": 0.25, "N1": 0.25, "N2": 0.25, "N3": 0.25}
NEAR_NODE_SHARE = 0.2  # each positive node is drawn near the threshold with this probability
# Geometric phantom (intrinsic SUV 10, 6 mm FWHM, `small` grid): radius 3.0 mm gives SUVmax ~3.9, 4.5 mm
# ~7 (short axis 9 mm); 2.5 mm (2.75 mm at 9R) fails the phantom's own positivity check. The liver
# threshold is ~3.4-3.5 (1.5 x 2.2 + 2 SD). Clear nodes keep a short axis of at least 12 mm.
GEOMETRIC_NEAR_RADIUS_MM = (3.0, 4.5)
GEOMETRIC_CLEAR_RADIUS_MM = (6.0, 7.5)
GEOMETRIC_ENLARGED_RADIUS_MM = (5.0, 8.0)  # short axis 10-16 mm around the CT size criterion
GEOMETRIC_SMALL_RADIUS_MM = (3.0, 4.5)
MYOCARDIUM_SUV = (1.5, 10.0)
# Real-anatomy phantom: positive nodes keep a short axis >= 10 mm (the phantom refuses less); near the
# 10 mm limit the rule switches between SUVpeak and SUVmax.
REAL_NEAR_RADIUS_MM = (5.0, 5.6)
REAL_CLEAR_RADIUS_MM = (6.5, 8.5)
REAL_LIVER_CV = (0.08, 0.30)
REAL_ESOPHAGUS = ("normal", "linear", "focal", "linear_focal")
REAL_TRAP_PROBABILITY = 0.3  # brown fat, neck muscle: each present with this probability
SEED_STRIDE = 100_003  # per-study phantom seeds: cohort seed * stride + index (distinct UIDs per study)
# near-threshold flag (cohort.json, the separate near-threshold report)
GEOMETRIC_NOISE_GAIN, GEOMETRIC_NOISE_FLOOR = 0.03, 0.02
PERCIST_LIVER_FACTOR, PERCIST_SD_FACTOR = 1.5, 2.0
NEAR_SUV_FRACTION = 0.20  # a node's SUVmax within +-20 % of the liver threshold
# an FDG-avid (truly involved) node with a short axis up to 10 + 1.5 mm: at or under the size where the
# rule stops trusting SUVpeak (partial volume), or just above it
SIZE_LIMIT_MM, NEAR_SIZE_MM = 10.0, 1.5


class Source(StrEnum):
    GEOMETRIC = "geometric"
    REAL_ANATOMY = "real_anatomy"


@dataclass(frozen=True)
class StudyPlan:
    """One study of the cohort before it is written: its phantom, seed and the parameters drawn."""

    index: int
    source: Source
    case: str  # the named case it varies
    phantom_seed: int
    parameters: dict  # JSON-able: what was drawn (cohort.json lists it)


def _round(x: float) -> float:
    return round(float(x), 2)


def _sources(n: int, with_real: bool, rng: np.random.Generator) -> list[Source]:
    """A fixed share of real-anatomy studies (at least one when n >= 2), in random positions."""
    n_real = 0
    if with_real and n >= 1:
        n_real = max(1 if n >= 2 else 0, int(round(n * REAL_SHARE)))
    sources = [Source.REAL_ANATOMY] * n_real + [Source.GEOMETRIC] * (n - n_real)
    rng.shuffle(sources)
    return sources


def _geometric_parameters(case: Case, rng: np.random.Generator) -> dict:
    radii, near = {}, []
    for node in case.nodes:
        if node.role != "positive" or node.site is not None:  # the pretracheal 4R keeps its hand-placed size
            continue
        is_near = bool(rng.random() < NEAR_NODE_SHARE)
        lo, hi = GEOMETRIC_NEAR_RADIUS_MM if is_near else GEOMETRIC_CLEAR_RADIUS_MM
        radii[node.station] = _round(rng.uniform(lo, hi))
        if is_near:
            near.append(node.station)
    return {"positive_radius_mm": radii, "drawn_near_threshold": near,
            "enlarged_radius_mm": _round(rng.uniform(*GEOMETRIC_ENLARGED_RADIUS_MM)),
            "small_radius_mm": _round(rng.uniform(*GEOMETRIC_SMALL_RADIUS_MM)),
            "myocardium_suv": _round(rng.uniform(*MYOCARDIUM_SUV))}


def _real_parameters(case: RealCase, rng: np.random.Generator) -> dict:
    radii, near = {}, []
    for node in case.nodes:
        if node.role != "positive":
            continue
        is_near = bool(rng.random() < NEAR_NODE_SHARE)
        lo, hi = REAL_NEAR_RADIUS_MM if is_near else REAL_CLEAR_RADIUS_MM
        radii[node.station] = _round(rng.uniform(lo, hi))
        if is_near:
            near.append(node.station)
    return {"positive_radius_mm": radii, "drawn_near_threshold": near,
            "traps": {"myocardium_suv": _round(rng.uniform(*MYOCARDIUM_SUV)),
                      "liver_cv": round(float(rng.uniform(*REAL_LIVER_CV)), 3),
                      "esophagus": str(rng.choice(REAL_ESOPHAGUS)),
                      "brown_fat": bool(rng.random() < REAL_TRAP_PROBABILITY),
                      "neck_muscle": bool(rng.random() < REAL_TRAP_PROBABILITY)}}


def case_n(case: Case | RealCase) -> str:
    """The named case's truth N (TNM 8) from its primary's side and its positive stations."""
    side = PRIMARY_SITES[case.primary][0] if isinstance(case, Case) else PRIMARY_LOBES[case.primary][0]
    return stage(side, [n.station for n in case.nodes if n.role == "positive"]).n_tnm8


def _pick_case(cases: dict, rng: np.random.Generator) -> str:
    """A truth N by N_CATEGORY_WEIGHTS (among those the cases have), then one of its cases."""
    by_n: dict[str, list[str]] = {}
    for name, case in cases.items():
        by_n.setdefault(case_n(case), []).append(name)
    categories = [c for c in N_CATEGORY_WEIGHTS if c in by_n]
    weights = np.array([N_CATEGORY_WEIGHTS[c] for c in categories])
    category = categories[int(rng.choice(len(categories), p=weights / weights.sum()))]
    return str(rng.choice(by_n[category]))


def plan_cohort(n: int, seed: int, with_real: bool) -> list[StudyPlan]:
    """N studies drawn with a seeded RNG: the same (n, seed, with_real) gives the same plans."""
    if n < 1:
        raise ValueError(f"a cohort needs at least one study, got --n {n}")
    rng = np.random.default_rng([seed, 1])
    plans = []
    for i, source in enumerate(_sources(n, with_real, rng)):
        if source == Source.GEOMETRIC:
            name = _pick_case(CASES, rng)
            params = _geometric_parameters(CASES[name], rng)
        else:
            name = _pick_case(REAL_CASES, rng)
            params = _real_parameters(REAL_CASES[name], rng)
        plans.append(StudyPlan(i, source, name, seed * SEED_STRIDE + i, params))
    return plans


def geometric_variant(plan: StudyPlan) -> Case:
    """The named geometric case with the plan's node sizes and myocardium."""
    base, p = CASES[plan.case], plan.parameters
    radius = {"enlarged_nonavid": p["enlarged_radius_mm"], "small_subthreshold": p["small_radius_mm"]}
    nodes = tuple(dataclasses.replace(n, radius_mm=p["positive_radius_mm"].get(n.station, n.radius_mm))
                  if n.role == "positive" else dataclasses.replace(n, radius_mm=radius[n.role])
                  for n in base.nodes)
    return dataclasses.replace(base, name=f"{base.name}~{plan.index}", nodes=nodes,
                               myocardium_suv=p["myocardium_suv"])


def real_variant(plan: StudyPlan) -> RealCase:
    """The named real-anatomy case with the plan's positive node sizes and traps."""
    base, p = REAL_CASES[plan.case], plan.parameters
    nodes = tuple(dataclasses.replace(n, radius_mm=p["positive_radius_mm"][n.station]) if n.role == "positive"
                  else n for n in base.nodes)
    traps = dataclasses.replace(base.traps, **p["traps"])
    return dataclasses.replace(base, name=f"{base.name}~{plan.index}", nodes=nodes, traps=traps)


def draw_cn(pn: str, rng: np.random.Generator) -> str:
    """A reader's cN for a study whose pN (TNM 8 category, or TNM 9 N2a/N2b) is known.

    With probability CN_PN_DISAGREEMENT cN is one category off: below pN with
    probability CN_UNDERSTAGED_SHARE when both directions exist, else the only
    direction there is (pN0 can only be overstaged, pN3 only understaged).
    Agreeing readers write pN's own spelling (N2a stays N2a).
    """
    category = "N2" if pn in ("N2a", "N2b") else pn
    if category not in N_SCALE:
        raise ValueError(f"pN {pn!r} is not an N category")
    if rng.random() >= CN_PN_DISAGREEMENT:
        return pn
    k = N_SCALE.index(category)
    if k == 0:
        step = 1
    elif k == len(N_SCALE) - 1:
        step = -1
    else:
        step = -1 if rng.random() < CN_UNDERSTAGED_SHARE else 1
    return N_SCALE[k + step]


def liver_threshold(truth: dict) -> float:
    """The PERCIST liver threshold (1.5 x liver mean + 2 SD) the phantom was built for.

    The real-anatomy truth gives the measured liver CV; the geometric phantom's
    noise is SUV x (1 + 0.03 n) + 0.02 n (pipeline.phantom.generate), so SD = 0.03 x liver + 0.02.
    """
    suv = truth["suv"]
    liver = float(suv["liver_suv"])
    sd = float(suv["liver_cv"]) * liver if "liver_cv" in suv else GEOMETRIC_NOISE_GAIN * liver + GEOMETRIC_NOISE_FLOOR
    return PERCIST_LIVER_FACTOR * liver + PERCIST_SD_FACTOR * sd


def near_threshold_nodes(truth: dict) -> list[dict]:
    """The nodes a reader could call either way: SUVmax near the liver threshold, or an avid node <= ~10 mm.

    SUVmax is the phantom's noise-free maximum over the node's PET voxels (truth.json
    has no SUVpeak; for nodes under 10 mm the rule reads SUVmax anyway).
    """
    threshold = liver_threshold(truth)
    out = []
    for les in truth["lesions"]:
        if les["kind"] != "node":
            continue
        reasons = []
        if abs(les["suvmax"] - threshold) <= NEAR_SUV_FRACTION * threshold:
            reasons.append(f"SUVmax {les['suvmax']:.2f} within {NEAR_SUV_FRACTION:.0%} of the liver threshold "
                           f"{threshold:.2f}")
        if les["role"] == "positive" and les["short_axis_mm"] <= SIZE_LIMIT_MM + NEAR_SIZE_MM:
            reasons.append(f"short axis {les['short_axis_mm']:.1f} mm: at or near the {SIZE_LIMIT_MM:g} mm "
                           "partial-volume limit")
        if reasons:
            out.append({"station": les["station"], "role": les["role"], "suvmax": round(les["suvmax"], 3),
                        "short_axis_mm": round(les["short_axis_mm"], 2), "why": "; ".join(reasons)})
    return out
