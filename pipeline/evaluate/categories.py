"""N categories and IASLC station names as a reference CSV spells them.

Hospitals write cN2, N2, pN2a, ypN2, "2a" or x; the evaluation needs one
ordinal scale per TNM edition so that weighted kappa and the N0–1/N2–3 split
are defined. Pure functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

CATEGORIES = {8: ("N0", "N1", "N2", "N3"), 9: ("N0", "N1", "N2a", "N2b", "N3")}
EDITIONS = tuple(CATEGORIES)
# the split that decides treatment: N2 and N3 are "positive" (mediastinal or worse)
ADVANCED = frozenset({"N2", "N2a", "N2b", "N3"})

NX = "NX"
_N_VALUE = re.compile(r"^(?:Y?[CP])?N?(?P<digit>[0-3X])(?P<sub>[AB])?$")
_PARENTHESES = re.compile(r"\([^)]*\)")
_STATION = re.compile(r"^(?:STATION)?(?P<num>1[0-4]|[1-9])(?P<side>[RLAP])?$")
_STATION_SPLIT = re.compile(r"[;,/|\s]+")
NO_STATIONS = frozenset({"NONE", "-", "0", "NIL"})
# IASLC order for tables: 1R 1L 2R 2L 3A 3P 4R 4L 5 6 7 8R ...
_STATION_ORDER_RE = re.compile(r"^(?P<num>\d+)(?P<rest>.*)$")


class Reading(StrEnum):
    """What one N cell says."""

    CATEGORY = "category"  # a usable category for the edition
    MISSING = "missing"  # empty cell: not given
    NX = "nx"  # NX / pNX: cannot be assessed; excluded and counted
    UNSUBDIVIDED_N2 = "unsubdivided_n2"  # N2 without a/b under TNM 9: excluded and counted
    UNREADABLE = "unreadable"  # not an N category at all


@dataclass(frozen=True)
class NValue:
    reading: Reading
    category: str | None = None  # the edition's category when reading is CATEGORY
    raw: str = ""


def parse_n(text: str | None, edition: int) -> NValue:
    """One N cell (cN2, pN2a, N2a, 2, x, ...) as a category of `edition`.

    Under TNM 8, N2a/N2b fold into N2; under TNM 9 a bare N2 cannot be placed
    in N2a or N2b and is reported as such rather than guessed.
    """
    raw = (text or "").strip()
    cleaned = _PARENTHESES.sub("", raw).replace(" ", "").replace("_", "").upper()
    if not cleaned:
        return NValue(Reading.MISSING, None, raw)
    m = _N_VALUE.match(cleaned)
    if not m:
        return NValue(Reading.UNREADABLE, None, raw)
    digit, sub = m["digit"], m["sub"] or ""
    if digit == "X":
        return NValue(Reading.NX if not sub else Reading.UNREADABLE, None, raw)
    if sub and digit != "2":
        return NValue(Reading.UNREADABLE, None, raw)
    if digit == "2":
        if edition == 8:
            return NValue(Reading.CATEGORY, "N2", raw)
        if not sub:
            return NValue(Reading.UNSUBDIVIDED_N2, None, raw)
        return NValue(Reading.CATEGORY, "N2" + sub.lower(), raw)
    return NValue(Reading.CATEGORY, "N" + digit, raw)


def is_advanced(category: str) -> bool:
    """N2 or N3: the side of the N0–1 / N2–3 split that changes treatment."""
    return category in ADVANCED


def parse_stations(text: str | None) -> tuple[frozenset[str] | None, list[str]]:
    """'4R;7', '4r, 7', 'station 10L' -> ({'4R', '7'}, unreadable tokens).

    An empty cell returns None (not given); 'none' or '-' returns an empty set.
    """
    raw = (text or "").strip().upper()
    if not raw:
        return None, []
    if raw in NO_STATIONS:
        return frozenset(), []
    stations, bad = set(), []
    for token in _STATION_SPLIT.split(raw.replace("STATION ", "STATION")):
        if not token:
            continue
        m = _STATION.match(token)
        if m:
            side = m["side"] or ""
            stations.add(m["num"] + (side.lower() if side in ("A", "P") else side))  # the node writes 3a, 3p
        else:
            bad.append(token)
    return frozenset(stations), bad


def station_sort_key(station: str) -> tuple[int, str]:
    m = _STATION_ORDER_RE.match(station)
    if not m:
        return (99, station)
    rest = m["rest"]
    return (int(m["num"]), {"R": "0", "L": "1", "a": "0", "p": "1"}.get(rest, rest))
