"""Reading a nodal focus: positive, equivocal or negative (DESIGN.md §4), as a pure function.

The default rule, configurable in `PositivitySettings`:

- **References.** Mediastinal blood pool (descending aorta) and the PERCIST liver
  (3 cm sphere, right lobe), each mean and SD (`pipeline.lesions.references`).
- **Negative**: SUVmax at or below the blood-pool mean — the visual "not more
  avid than the mediastinum" criterion of nodal staging reads, and the
  mediastinal reference of the Deauville scale (score ≤ 2; Barrington et al.,
  J Clin Oncol 2014;32:3048).
  A negative node with a CT short axis ≥ 10 mm is `enlarged_non_avid`: reported
  (the CT size criterion; Glazer et al., AJR 1985;144:261), never counted for N.
- **Positive**: SUVmax above the blood pool AND SUVpeak above the PERCIST liver
  threshold, 1.5 × liver mean + 2 SD (Wahl et al., J Nucl Med 2009;50:122S). The
  second criterion is noise-aware (a 1 cm³ mean instead of one voxel, and a
  threshold that grows with the liver's SD) and relative to the patient's own
  liver, so it holds for delayed scans and other scanners where an absolute
  cut-off (SUVmax ≥ 2.5; nodal SUVmax vs pathology: Bryant et al., Ann Thorac
  Surg 2006;82:417) shifts with uptake time and reconstruction. The
  absolute cut-off is available as `second_criterion: suvmax_cutoff`, and is the
  fallback when there is no liver reference and the uptake time is standard.
- **Small nodes** (short axis < `min_reliable_short_axis_mm`, 10 mm, about 2 × the
  PET's resolution): the 1 cm³ SUVpeak sphere is larger than the node, so partial
  volume dilutes it (Soret et al., J Nucl Med 2007;48:932); the second criterion
  is then read on SUVmax against the same liver threshold. Partial volume only
  lowers uptake, so a small node that clears it is positive.
- **Equivocal**: above the blood pool without the second criterion; for a small
  node the reason says it is too small for its SUV to be trusted (a negative
  reading could be partial volume).
- **Uptake time** outside 45–75 min (EANM: 60 ± 10 min, Boellaard et al., EJNMMI
  2015;42:328; PERCIST: 50–70 min):
  the reason says so, and the decision rests on the reference ratios only (no
  absolute cut-off).

N is built from the positive stations; the equivocal ones give the "if
equivocal were positive" category.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.lesions.references import ReferenceRegion
from pipeline.settings import PositivitySettings
from pipeline.study_result import NodeStatus


@dataclass(frozen=True)
class NodeMeasures:
    suvmax: float
    suvpeak: float
    short_axis_mm: float
    avid: bool = True  # False for CT-only (enlarged soft tissue found without uptake)


@dataclass(frozen=True)
class References:
    blood_pool: ReferenceRegion
    liver: ReferenceRegion
    uptake_min: float | None = None  # minutes from injection to scan, when known

    def uptake_standard(self, window: tuple[float, float]) -> bool:
        return self.uptake_min is None or window[0] <= self.uptake_min <= window[1]


def describe_rule(s: PositivitySettings) -> str:
    second = ("SUVpeak > PERCIST liver threshold (1.5 x liver mean + 2 SD)" if s.second_criterion ==
              "percist_liver_suvpeak" else f"SUVmax >= {s.min_suvmax:g}")
    return (f"positive: SUVmax > blood-pool mean (descending aorta) and {second}; equivocal: above blood pool "
            f"without the second criterion (below {s.min_reliable_short_axis_mm:g} mm short axis, too small for its "
            f"SUVpeak to be trusted, SUVmax is compared instead); negative: SUVmax <= blood-pool mean "
            f"(enlarged_non_avid when the short axis is >= {s.enlarged_short_axis_mm:g} mm, never counted); "
            f"uptake time outside {s.uptake_window_min[0]:g}-{s.uptake_window_min[1]:g} min: reference ratios only")


def read_node(m: NodeMeasures, refs: References, s: PositivitySettings) -> tuple[NodeStatus, str]:
    """The status of one nodal focus and the reason, with its numbers."""
    standard_time = refs.uptake_standard(s.uptake_window_min)
    numbers = f"SUVmax {m.suvmax:.2f}, SUVpeak {m.suvpeak:.2f}, short axis {m.short_axis_mm:.1f} mm"
    time_note = "" if standard_time else f"; uptake {refs.uptake_min:.0f} min: reference ratios only"
    bp = refs.blood_pool.suvmean
    if bp is not None:
        above_bp = m.avid and m.suvmax > bp
        bp_text = f"blood pool {bp:.2f} (ratio {m.suvmax / bp:.1f})" if bp > 0 else f"blood pool {bp:.2f}"
    elif standard_time:
        above_bp = m.avid and m.suvmax >= s.min_suvmax
        bp_text = f"no blood pool; SUVmax cut-off {s.min_suvmax:g} instead"
    else:
        above_bp = m.avid
        bp_text = "no blood pool"
    if not above_bp:
        if m.short_axis_mm >= s.enlarged_short_axis_mm:
            return NodeStatus.ENLARGED_NON_AVID, (f"enlarged, not FDG-avid: {numbers}; not above {bp_text}; "
                                                  f"short axis >= {s.enlarged_short_axis_mm:g} mm{time_note}")
        return NodeStatus.NEGATIVE, f"negative: {numbers}; not above {bp_text}{time_note}"
    second, second_text = _second_criterion(m, refs, s, standard_time)
    small = m.short_axis_mm < s.min_reliable_short_axis_mm
    if second is True:
        return NodeStatus.POSITIVE, f"positive: {numbers}; above {bp_text}; {second_text}{time_note}"
    if small:
        return NodeStatus.EQUIVOCAL, (f"equivocal: {numbers}; above {bp_text}; {second_text}; short axis < "
                                      f"{s.min_reliable_short_axis_mm:g} mm, too small for its SUV to be "
                                      f"trusted{time_note}")
    return NodeStatus.EQUIVOCAL, f"equivocal: {numbers}; above {bp_text}; {second_text}{time_note}"


def equivocal_reason(m: NodeMeasures, refs: References, s: PositivitySettings) -> str:
    """Why a node read equivocal is not positive, in a phrase for the findings list."""
    if m.short_axis_mm < s.min_reliable_short_axis_mm:
        return f"under {s.min_reliable_short_axis_mm:g} mm: too small for its SUV to be trusted"
    _, text = _second_criterion(m, refs, s, refs.uptake_standard(s.uptake_window_min))
    return text


def _second_criterion(m: NodeMeasures, refs: References, s: PositivitySettings,
                      standard_time: bool) -> tuple[bool | None, str]:
    liver_t = refs.liver.percist_threshold
    use_liver = s.second_criterion == "percist_liver_suvpeak" or not standard_time
    if use_liver and liver_t is not None:
        if m.short_axis_mm < s.min_reliable_short_axis_mm:
            # The 1 cm³ sphere is larger than the node: its SUVpeak is diluted by partial volume. The hottest
            # voxel stands in, against the same noise-aware threshold.
            ok = m.suvmax > liver_t
            return ok, (f"small node: SUVmax {'>' if ok else '<='} PERCIST liver threshold {liver_t:.2f} "
                        "(SUVpeak is diluted by partial volume)")
        ok = m.suvpeak > liver_t
        return ok, f"SUVpeak {'>' if ok else '<='} PERCIST liver threshold {liver_t:.2f}"
    if standard_time:
        ok = m.suvmax >= s.min_suvmax
        why = "" if s.second_criterion == "suvmax_cutoff" else " (no liver reference)"
        return ok, f"SUVmax {'>=' if ok else '<'} {s.min_suvmax:g}{why}"
    return None, "no liver reference and a non-standard uptake time: no second criterion can be applied"


def cap_outside_station(status: NodeStatus, why: str, distance_mm: float) -> tuple[NodeStatus, str]:
    """Station hygiene: a focus whose peak lies outside (though near) a station's region is equivocal at most."""
    if distance_mm > 0 and status == NodeStatus.POSITIVE:
        return NodeStatus.EQUIVOCAL, why.replace("positive:", f"equivocal (would be positive, but its peak lies "
                                                 f"{distance_mm:.0f} mm outside the station's region):", 1)
    return status, why


STATUS_ORDER = (NodeStatus.POSITIVE, NodeStatus.EQUIVOCAL, NodeStatus.ENLARGED_NON_AVID, NodeStatus.NEGATIVE)


def station_status(pairs: list[tuple[str, NodeStatus]]) -> dict[str, str]:
    """Each station's status: that of its most suspicious node (positive > equivocal > enlarged > negative)."""
    out: dict[str, NodeStatus] = {}
    for station, status in pairs:
        if status not in STATUS_ORDER:
            continue
        if station not in out or STATUS_ORDER.index(status) < STATUS_ORDER.index(out[station]):
            out[station] = status
    return {k: str(v) for k, v in sorted(out.items())}
