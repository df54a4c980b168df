"""report.md, report.html (self-contained: plots inlined as base64 PNG) and metrics.json.

Both documents are rendered from one list of blocks, so they say the same
thing. The cohort and its exclusions come first, with the research-use notice,
because a reader must know who was scored before reading any figure.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from pipeline.evaluate import plots

DISCLAIMER = "Research use, not for diagnosis."
HTML_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
              "table{border-collapse:collapse;margin:0.5em 0 1.2em}td,th{border:1px solid #bbb;padding:3px 8px;"
              "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
              ".notice{background:#fff3cd;border:1px solid #e0c060;padding:0.6em;font-weight:bold}"
              "img{max-width:100%}")


def pct(p: dict | None) -> str:
    """'83.3 % (5/6; 95 % CI 43.6–97.0)' from a Proportion dict."""
    if not p or p.get("value") is None:
        return "n/a (0 studies)" if p else "n/a"
    return f"{100 * p['value']:.1f} % ({p['x']}/{p['n']}; 95 % CI {100 * p['low']:.1f}–{100 * p['high']:.1f})"


def kappa_text(c: dict) -> str:
    if c["kappa_linear"] is None:
        return "undefined (one category only)"
    text = f"{c['kappa_linear']:.3f}"
    ci = c["kappa_ci"]
    if ci:
        text += f" (bootstrap 95 % CI {ci['low']:.3f}–{ci['high']:.3f}, {ci['resamples_used']} resamples, seed {ci['seed']})"
    return text


def _blocks(m: dict, images: dict[str, str]) -> list[tuple]:
    cohort = m["cohort"]
    comps = m["comparisons"]
    b: list[tuple] = [("h1", f"nodestage evaluation — N category, TNM {m['edition']}"), ("notice", DISCLAIMER)]
    b.append(("h2", "Cohort and exclusions"))
    b.append(("table", ["", "count"], [
        ["Reference rows", cohort["reference_rows"]],
        ["Reference rows without study UID or accession (not scored)", len(cohort["reference_rows_without_id"])],
        ["Ledger rows read", cohort["ledger_rows"]],
        ["Ledger studies (each counted once, " + m["version_choice"] + " version)", cohort["ledger_studies"]],
        ["Studies recorded more than once", len(cohort["studies_processed_more_than_once"])],
        ["Matched studies (the cohort)", cohort["matched"]],
        ["Node failures among matched studies (counted, not missing)", len(cohort["node_failures"])],
        ["Reference rows with no ledger study", len(cohort["unmatched_reference"])],
        ["Reference rows repeating a matched study", len(cohort["duplicate_reference"])],
        ["Ledger studies with no reference row", len(cohort["unmatched_ledger"])],
        ["Unreadable ledger rows", len(cohort["ledger_unreadable_lines"])]]))
    b.append(("table", ["Comparison", "scored"] + [f"excluded: {r}" for r in m["exclusion_reasons"]],
              [[c["label"], c["n"]] + [c["exclusions"].get(r, 0) for r in m["exclusion_reasons"]]
               for c in comps.values()]))
    if not m["equivocal_available"]:
        b.append(("p", "The ledger has no equivocal columns (written before the equivocal tier): "
                       "equivocal stations cannot be scored as positive."))
    b.append(("h2", "Agreement, side by side"))
    b.append(("table", ["", *[c["label"] for c in comps.values()]], [
        ["Studies scored", *[c["n"] for c in comps.values()]],
        ["Accuracy", *[pct(c["accuracy"]) for c in comps.values()]],
        ["Accuracy, failures and NX counted as wrong",
         *[pct(c["accuracy_intention_to_diagnose"]) if c["accuracy_intention_to_diagnose"] else "—"
           for c in comps.values()]],
        ["Linearly weighted kappa", *[kappa_text(c) for c in comps.values()]]]))
    if "agreement" in images:
        b.append(("img", "agreement", "Agreement with 95 % intervals"))
    b.append(("h2", "N0–1 against N2–3 (the split that decides treatment)"))
    b.append(("table", ["", *[c["label"] for c in comps.values()]],
              [[name, *[pct(c["n01_vs_n23"][key]) for c in comps.values()]]
               for name, key in (("Sensitivity for N2–3", "sensitivity"), ("Specificity", "specificity"),
                                 ("PPV", "ppv"), ("NPV", "npv"))]
              + [["TP / FN / FP / TN", *["{tp} / {fn} / {fp} / {tn}".format(**c["n01_vs_n23"])
                                           for c in comps.values()]]]))
    b.append(("h2", "Confusion matrices and per-category sensitivity and specificity"))
    for key, c in comps.items():
        b.append(("h3", c["label"]))
        b.append(("table", [f"{m['readers'][c['reference']]} \\ {m['readers'][c['test']]}", *c["categories"]],
                  [[cat, *row] for cat, row in zip(c["categories"], c["confusion_matrix"])]))
        b.append(("table", ["Category", "sensitivity", "specificity"],
                  [[cat, pct(v["sensitivity"]), pct(v["specificity"])] for cat, v in c["per_category"].items()]))
        if key in images:
            b.append(("img", key, c["label"]))
    b.append(("h2", "Station level (pathologically involved stations)"))
    stations = m["stations"]
    if not stations or not any(stations.values()):
        b.append(("p", "No reference row names pathologically involved stations."))
    else:
        b.append(("p", "Stations pathology did not sample cannot be told from negative ones: a station "
                       "not listed counts as not involved."))
        for variant, s in stations.items():
            if not s:
                continue
            b.append(("h3", f"{variant.replace('_', ' ')} ({s['studies']} studies)"))
            b.append(("table", ["Station", "TP", "FN", "FP", "TN", "sensitivity", "specificity"],
                      [[name, v["tp"], v["fn"], v["fp"], v["tn"], pct(v["sensitivity"]), pct(v["specificity"])]
                       for name, v in [*s["stations"].items(), ("all stations", s["pooled"])]]))
    b.append(("h2", "Lists"))
    for title, rows, cols in (
            ("Node failures", cohort["node_failures"], ["study_instance_uid", "version", "reason"]),
            ("Reference rows with no ledger study", cohort["unmatched_reference"],
             ["line", "study_instance_uid", "accession_number", "why"]),
            ("Reference rows repeating a matched study", cohort["duplicate_reference"],
             ["line", "study_instance_uid", "why"]),
            ("Ledger studies with no reference row", cohort["unmatched_ledger"],
             ["study_instance_uid", "accession_number", "version", "failed"]),
            ("Reference rows with unreadable station names (those names ignored)",
             [{"line": r["line"], "tokens": " ".join(r["tokens"])} for r in cohort["unreadable_reference_stations"]],
             ["line", "tokens"]),
            ("Studies recorded more than once (versions seen)",
             [{"study_instance_uid": k, "versions": ", ".join(map(str, v))}
              for k, v in cohort["studies_processed_more_than_once"].items()], ["study_instance_uid", "versions"])):
        b.append(("h3", f"{title}: {len(rows)}"))
        if rows:
            b.append(("table", cols, [[r.get(c, "") for c in cols] for r in rows]))
    b.append(("p", f"Inputs: ledger {m['inputs']['ledger']}, reference {m['inputs']['reference']}. "
                   "Intervals: Wilson score for proportions; percentile bootstrap for kappa. " + DISCLAIMER))
    return b


def _md(blocks: list[tuple], files: dict[str, str]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "notice":
            out.append(f"> **{block[1]}**")
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(map(_md_cell, header)) + " |")
            out.append("|" + "---|" * len(header))
            out.extend("| " + " | ".join(map(_md_cell, row)) + " |" for row in rows)
        elif kind == "img":
            out.append(f"![{block[2]}]({files[block[1]]})")
        out.append("")
    return "\n".join(out)


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _html(blocks: list[tuple], images: dict[str, str]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>nodestage evaluation</title>", f"<style>{HTML_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "notice":
            out.append(f'<p class="notice">{e(block[1])}</p>')
        elif kind == "p":
            out.append(f"<p>{e(block[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in block[1]) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in block[2])
            out.append("</table>")
        elif kind == "img":
            out.append(f'<p><img alt="{e(block[2])}" src="data:image/png;base64,{images[block[1]]}"></p>')
    out.append("</body></html>")
    return "\n".join(out)


def write_report(metrics: dict, out_dir: Path) -> dict[str, Path]:
    """Write the PNGs, report.md, report.html and metrics.json into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    readers = metrics["readers"]
    for key, c in metrics["comparisons"].items():
        written[key] = plots.confusion_png(out_dir / f"confusion_{key}.png", c["confusion_matrix"], c["categories"],
                                           readers[c["test"]], readers[c["reference"]], c["label"])
    rows = [{"label": c["short_label"] or c["label"].replace(" vs ", "\nvs "),
             "accuracy": c["accuracy"]["value"], "accuracy_low": c["accuracy"]["low"],
             "accuracy_high": c["accuracy"]["high"], "kappa": c["kappa_linear"],
             "kappa_low": (c["kappa_ci"] or {}).get("low"), "kappa_high": (c["kappa_ci"] or {}).get("high")}
            for c in metrics["comparisons"].values()]
    written["agreement"] = plots.agreement_png(out_dir / "agreement.png", rows)
    images = {k: base64.b64encode(p.read_bytes()).decode("ascii") for k, p in written.items()}
    metrics["plots"] = {k: p.name for k, p in written.items()}
    blocks = _blocks(metrics, images)
    (out_dir / "report.md").write_text(_md(blocks, metrics["plots"]), encoding="utf-8")
    (out_dir / "report.html").write_text(_html(blocks, images), encoding="utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written.update({"report_md": out_dir / "report.md", "report_html": out_dir / "report.html",
                    "metrics_json": out_dir / "metrics.json"})
    return written
