"""Reading a CSV a hospital exported: any of UTF-8, UTF-8 with BOM or Latin-1, comma or semicolon.

Spreadsheets in Europe write ';' and Windows-1252; a BOM would otherwise glue
itself to the first column name. Errors are `EvaluationError` with one line.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

DELIMITERS = ",;\t"
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


class EvaluationError(ValueError):
    """An input the evaluation cannot use; the message is one line naming the file and the fix."""


def normalise_header(name: str) -> str:
    """'Study Instance UID' / 'study_instance_uid' / '\\ufeffcN' -> 'studyinstanceuid' / 'cn'."""
    return _NOT_ALNUM.sub("", name.replace("\ufeff", "").strip().lower())


def decode(data: bytes, path: Path) -> str:
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding != "utf-8-sig":
            logger.info("%s is not UTF-8; read as %s", path.name, encoding)
        return text
    raise EvaluationError(f"{path}: cannot decode the file as text")  # latin-1 never fails; kept for clarity


def read_rows(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header as written, rows keyed by normalised header). Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{what} {path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise EvaluationError(f"{what} {path}: cannot read ({err.strerror or err})") from None
    text = decode(data, path)
    if not text.strip():
        raise EvaluationError(f"{what} {path}: the file is empty")
    first_line = text.lstrip("\ufeff").splitlines()[0]
    delimiter = max(DELIMITERS, key=first_line.count)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        lines = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise EvaluationError(f"{what} {path}: not a readable CSV ({err})") from None
    header, body = lines[0], lines[1:]
    keys = [normalise_header(h) for h in header]
    rows = []
    for cells in body:
        cells = cells + [""] * (len(keys) - len(cells))
        rows.append({k: cells[i].strip() for i, k in enumerate(keys) if k})
    return header, rows


def describe_header(header: list[str], limit: int = 200) -> str:
    """The header as one printable line for an error message (a binary file yields garbage, not new lines)."""
    text = ", ".join(h.replace("\ufeff", "").strip() for h in header)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "…"


def find_column(keys: list[str], aliases: tuple[str, ...]) -> str | None:
    """The first normalised header among `aliases` (already normalised)."""
    return next((a for a in aliases if a in keys), None)
