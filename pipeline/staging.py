"""N staging: primary side + positive IASLC stations -> N category (TNM 8 and 9).

Pure rules from DESIGN §4, no I/O, so the category and every reason behind it
can be checked on plain strings before any image is involved. Each positive
station gets its own category and a sentence saying why, because a reader of
the SR must be able to disagree with one station without re-deriving the rest.

When the primary's side is unknown we stage both hypothetical sides: if they
agree the answer does not depend on the side and is reported (with a reason
saying so); if they differ the edition's category is NX, with the two
alternatives named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

logger = logging.getLogger(__name__)

Side = Literal["left", "right"]

# IASLC 2009 map order: this order is used for sorting and for reports.
STATIONS: tuple[str, ...] = (
    "1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7",
    "8R", "8L", "9R", "9L", "10R", "10L", "11R", "11L",
    "12R", "12L", "13R", "13L", "14R", "14L",
)
_ORDER = {s: i for i, s in enumerate(STATIONS)}

# Station number -> descriptive name (side word is added for R/L stations).
STATION_NAMES = {  # by station number, as in the IASLC map
    "1": "low cervical, supraclavicular and sternal notch",
    "2": "upper paratracheal",
    "3a": "prevascular",
    "3p": "retrotracheal",
    "4": "lower paratracheal",
    "5": "subaortic (AP window)",
    "6": "para-aortic",
    "7": "subcarinal",
    "8": "paraesophageal",
    "9": "pulmonary ligament",
    "10": "hilar",
    "11": "interlobar",
    "12": "lobar",
    "13": "segmental",
    "14": "subsegmental",
}

# Severity order of the categories, lowest first.
_RANK = {"N0": 0, "N1": 1, "N2": 2, "N3": 3}
_SIDES = ("left", "right")


@dataclass(frozen=True)
class StationFinding:
    """One positive station, its category and why.

    `category` is N1, N2 or N3; it is NX only when the primary's side is
    unknown and this station's category depends on it.
    """

    station: str
    category: str
    reason: str

    def to_dict(self) -> dict:
        return {"station": self.station, "category": self.category, "reason": self.reason}


@dataclass(frozen=True)
class StagingResult:
    """N category under TNM 8 and TNM 9, with per-station and overall reasons.

    Tuples rather than lists so the result is immutable and hashable;
    `to_dict` gives JSON-ready lists.
    """

    n_tnm8: str
    n_tnm9: str
    stations: tuple[str, ...]
    station_findings: tuple[StationFinding, ...]
    reasons: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "n_tnm8": self.n_tnm8,
            "n_tnm9": self.n_tnm9,
            "stations": list(self.stations),
            "reasons": list(self.reasons),
            "station_findings": [f.to_dict() for f in self.station_findings],
        }


def normalize_station(station: str) -> str:
    """Canonical station name ("3A" -> "3a", " 4r " -> "4R").

    Labels come from people, CLIs and other tools with inconsistent case and
    spacing; an unknown name is an error, never silently dropped, because a
    dropped station could under-stage a patient.
    """
    if not isinstance(station, str):
        raise ValueError(f"unknown IASLC station {station!r}: expected a name such as '4R'")
    key = "".join(station.split()).upper()
    if key in ("3A", "3P"):
        key = key.lower()
    if key not in _ORDER:
        raise ValueError(
            f"unknown IASLC station {station!r}: expected one of {', '.join(STATIONS)}"
        )
    return key


def station_side(station: str) -> Side | None:
    """Anatomical side of a station: 'left', 'right', or None for midline 3a, 3p, 7.

    Stations 5 and 6 lie along the aorta, on the left, so they count as left.
    """
    s = normalize_station(station)
    if s.endswith("R"):
        return "right"
    if s.endswith("L") or s in ("5", "6"):
        return "left"
    return None


def _number(station: str) -> str:
    return station.rstrip("RL")


def _label(station: str) -> str:
    """'4R' -> '4R: right lower paratracheal'."""
    side = station_side(station)
    name = STATION_NAMES[_number(station)]
    if station.endswith(("R", "L")):
        name = f"{side} {name}"
    return f"{station}: {name}"


def _normalize_side(primary_side: str | None) -> Side | None:
    if primary_side is None:
        return None
    if isinstance(primary_side, str):
        side = primary_side.strip().lower()
        if side in _SIDES:
            return side  # type: ignore[return-value]
    raise ValueError(f"primary side must be 'left', 'right' or None, not {primary_side!r}")


def _categorise(station: str, side: Side) -> tuple[str, str]:
    """(category, reason) for one normalised station with a known primary side."""
    label = _label(station)
    num = _number(station)
    st_side = station_side(station)
    if num == "1":
        return "N3", f"{label} → N3 (station 1 is N3 on either side)"
    if st_side is None:  # 3a, 3p, 7
        if num == "7":
            return "N2", f"{label} → N2 (N2 for a primary on either side)"
        return "N2", f"{label}, midline, counted ipsilateral → N2"
    ipsi = st_side == side
    relation = f"{'ipsilateral' if ipsi else 'contralateral'} to a {side} primary"
    if num in ("5", "6"):
        return ("N2" if ipsi else "N3"), f"{label}, left-sided, {relation} → {'N2' if ipsi else 'N3'}"
    if num in ("2", "4", "8", "9"):
        cat = "N2" if ipsi else "N3"
        split = " (split at the left tracheal border)" if num in ("2", "4") else ""
        return cat, f"{label}, {relation} → {cat}{split}"
    # 10-14: hilar and intrapulmonary
    cat = "N1" if ipsi else "N3"
    return cat, f"{label}, {relation} → {cat}"


@dataclass(frozen=True)
class _Combined:
    n8: str
    n9: str
    reasons: tuple[str, ...]
    drivers: tuple[str, ...]  # stations with the highest category


def _combine(cats: dict[str, str]) -> _Combined:
    """Overall N from per-station categories (all known); highest category wins."""
    if not cats:
        return _Combined("N0", "N0", ("no positive regional node → N0",), ())
    top = max(cats.values(), key=_RANK.__getitem__)
    drivers = tuple(s for s in cats if cats[s] == top)
    n2 = [s for s in cats if cats[s] == "N2"]
    n1 = [s for s in cats if cats[s] == "N1"]
    reasons = [f"highest category {top} from {', '.join(drivers)} → TNM 8 {top}"]
    if top == "N3":
        n9 = "N3"
        if n2:
            noun = "station" if len(n2) == 1 else "stations"
            reasons.append(f"TNM 9: N3 overrides the N2 count ({len(n2)} N2 {noun}) → N3")
        else:
            reasons.append("TNM 9: N3")
    elif top == "N2":
        n9 = "N2a" if len(n2) == 1 else "N2b"
        count = "a single N2 station" if len(n2) == 1 else f"{len(n2)} N2 stations"
        reasons.append(f"TNM 9: {count} ({', '.join(n2)}) → {n9}")
        if n1:
            reasons.append(f"TNM 9: N1 involvement ({', '.join(n1)}) does not change the N2a/N2b split")
    else:
        n9 = "N1"
        reasons.append("TNM 9: N1")
    return _Combined(top, n9, tuple(reasons), drivers)


def _parse_stations(positive_stations: Iterable[str] | str) -> tuple[str, ...]:
    """Normalised, de-duplicated stations in map order.

    A bare string is taken as a comma-separated list, so "4R" is one station
    and not the characters '4' and 'R'.
    """
    if isinstance(positive_stations, str):
        items = [p for p in positive_stations.split(",") if p.strip()]
    else:
        items = list(positive_stations)
    return tuple(sorted({normalize_station(s) for s in items}, key=_ORDER.__getitem__))


def stage(primary_side: Side | None, positive_stations: Iterable[str]) -> StagingResult:
    """Stage N under TNM 8 and TNM 9 from the primary's side and the positive stations.

    `primary_side` is 'left', 'right' or None (unknown). With an unknown side
    the result is NX only for an edition whose category differs between a left
    and a right primary; otherwise the shared answer is given.
    """
    side = _normalize_side(primary_side)
    stations = _parse_stations(positive_stations)

    if side is not None:
        per = {s: _categorise(s, side) for s in stations}
        comb = _combine({s: c for s, (c, _) in per.items()})
        findings = tuple(StationFinding(s, c, r) for s, (c, r) in per.items())
        result = StagingResult(
            comb.n8, comb.n9, stations, findings,
            tuple(f.reason for f in findings) + comb.reasons,
        )
        logger.debug("staged %s primary, stations %s → %s / %s", side, stations, comb.n8, comb.n9)
        return result

    # Unknown side: stage both hypotheses and keep what they agree on.
    per_side = {sd: {s: _categorise(s, sd) for s in stations} for sd in _SIDES}
    comb = {sd: _combine({s: c for s, (c, _) in per_side[sd].items()}) for sd in _SIDES}
    dependent = tuple(s for s in stations if per_side["left"][s][0] != per_side["right"][s][0])

    findings = []
    for s in stations:
        if s in dependent:
            cl, cr = per_side["left"][s][0], per_side["right"][s][0]
            findings.append(StationFinding(
                s, "NX",
                f"{_label(s)}; primary side unknown → {cr} for a right primary, "
                f"{cl} for a left primary",
            ))
        else:
            cat, reason = per_side["left"][s]
            findings.append(StationFinding(s, cat, reason))
    findings_t = tuple(findings)

    left, right = comb["left"], comb["right"]
    n8 = left.n8 if left.n8 == right.n8 else "NX"
    n9 = left.n9 if left.n9 == right.n9 else "NX"

    reasons = [f.reason for f in findings_t]
    if not dependent:
        # No station depends on the side: both hypotheses give identical reasons.
        reasons.extend(left.reasons)
        why = "no positive node" if not stations else "no positive station's category depends on it"
        reasons.append(f"primary side unknown, but irrelevant: {why}")
    elif n8 != "NX" and n9 != "NX":
        reasons.append(
            f"primary side unknown, but irrelevant: TNM 8 {n8} / TNM 9 {n9} for a left primary "
            f"({left.n8} from {', '.join(left.drivers)}) and for a right primary "
            f"({right.n8} from {', '.join(right.drivers)})"
        )
    else:
        for label, ed, a, b in (("TNM 8", n8, left.n8, right.n8), ("TNM 9", n9, left.n9, right.n9)):
            if ed == "NX":
                reasons.append(
                    f"{label} NX: primary side unknown and the category depends on it "
                    f"({', '.join(dependent)}): {a} for a left primary, {b} for a right primary"
                )
            else:
                reasons.append(f"{label} {ed}: same for a left and a right primary")
    logger.debug("staged unknown-side primary, stations %s → %s / %s", stations, n8, n9)
    return StagingResult(n8, n9, stations, findings_t, tuple(reasons))


@dataclass(frozen=True)
class BoundaryReading:
    """The stage if one positive node lay in a neighbouring station: its peak is within a few mm
    of that station's region, closer than a CT-drawn border and a PET peak can be trusted."""

    node: str  # the node's tracking id, "Node 2 (1R)"
    station: str
    alternative: str
    distance_mm: float
    n_tnm8: str
    n_tnm9: str
    alt_n_tnm8: str
    alt_n_tnm9: str

    @property
    def text(self) -> str:
        """'Node 2 (1R) lies 3 mm from station 2R: N2a (TNM 9), N2 (TNM 8) if it is 2R'."""
        return (f"{self.node} lies {self.distance_mm:.0f} mm from station {self.alternative}: "
                f"{self.alt_n_tnm9} (TNM 9), {self.alt_n_tnm8} (TNM 8) if it is {self.alternative}")

    def to_dict(self) -> dict:
        return {"node": self.node, "station": self.station, "alternative": self.alternative,
                "distance_mm": self.distance_mm, "n_tnm8": self.alt_n_tnm8, "n_tnm9": self.alt_n_tnm9,
                "text": self.text}


# Intrapulmonary stations are bounded by segmental and subsegmental bronchi, which PET/CT cannot
# place a node against: never the "other" station of a border reading.
NO_BORDER_ALTERNATIVE = frozenset({"12", "13", "14"})


def boundary_readings(primary_side: Side | None, positive_nodes: Iterable[tuple[str, str, Mapping[str, float]]],
                      ) -> list[BoundaryReading]:
    """For each positive node (tracking id, station, {nearby station: mm}), the N categories with
    that node moved to a nearby station, where a category changes: one reading per node and
    changed category, naming the nearest such station.

    The station keeps its place when another positive node is in it too (the move does not
    empty it). Nearby stations come from the lesion reading (`stations_near`)."""
    nodes = [(tid, normalize_station(st), dict(near)) for tid, st, near in positive_nodes]
    base_stations = [st for _, st, _ in nodes]
    base = stage(primary_side, base_stations)
    out = []
    for i, (tid, station, near) in enumerate(nodes):
        others = base_stations[:i] + base_stations[i + 1:]
        seen: set[tuple[str, str]] = set()
        for alternative, mm in sorted(near.items(), key=lambda kv: (kv[1], kv[0])):
            try:
                alt_station = normalize_station(alternative)
            except ValueError:
                continue
            if _number(alt_station) in NO_BORDER_ALTERNATIVE:
                continue
            moved = stage(primary_side, others + [alt_station])
            changed = (moved.n_tnm8, moved.n_tnm9)
            if changed != (base.n_tnm8, base.n_tnm9) and changed not in seen:
                seen.add(changed)
                out.append(BoundaryReading(tid, station, alt_station, float(mm), base.n_tnm8, base.n_tnm9,
                                           moved.n_tnm8, moved.n_tnm9))
    return out


def stage_to_json(
    primary_side: Side | None,
    stations: Iterable[str] | str,
    edition: int | None = None,
) -> dict:
    """JSON-ready dict for `nodestage stage`: both editions always; "n" for the chosen one.

    `stations` may be a comma-separated string as typed on the command line.
    """
    if edition is not None and (isinstance(edition, bool) or edition not in (8, 9)):
        raise ValueError(f"TNM edition must be 8 or 9, not {edition!r}")
    result = stage(primary_side, stations)
    out = {
        "n_tnm8": result.n_tnm8,
        "n_tnm9": result.n_tnm9,
        "stations": list(result.stations),
        "reasons": list(result.reasons),
    }
    if edition is not None:
        out["edition"] = edition
        out["n"] = result.n_tnm8 if edition == 8 else result.n_tnm9
    return out
