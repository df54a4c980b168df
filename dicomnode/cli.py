"""`nodestage` command line: a thin layer over the pipeline and node APIs.

Every command prints JSON or a one-line reason; a study that cannot be processed
exits non-zero with that reason, never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

EXIT_UNPROCESSABLE = 2


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_phantom(args: argparse.Namespace) -> int:
    """A geometric phantom, or with --anatomy DIR a real-anatomy one (real CT, synthesised PET)."""
    from pipeline import phantom, phantom_real

    if args.list:
        _print_json(phantom.list_cases() + phantom_real.list_cases())
        return 0
    if not args.out_dir or not args.case:
        sys.stderr.write("nodestage phantom: OUT_DIR and --case are required (or --list)\n")
        return EXIT_UNPROCESSABLE
    real = args.case in phantom_real.REAL_CASES
    if real != bool(args.anatomy):
        why = (f"case {args.case} needs --anatomy DIR (a CT with its label map)" if real
               else f"--anatomy is for the real-anatomy cases ({', '.join(phantom_real.REAL_CASES)})")
        sys.stderr.write(f"nodestage phantom: {why}\n")
        return EXIT_UNPROCESSABLE
    if real:
        anatomy = Path(args.anatomy)
        missing = [n for n in ("cxr.nii.gz", "mask.nii.gz", "structures.csv") if not (anatomy / n).is_file()]
        if missing:
            sys.stderr.write(f"nodestage phantom: {anatomy} lacks {', '.join(missing)}\n")
            return EXIT_UNPROCESSABLE
        study = phantom_real.generate(args.out_dir, args.case, anatomy, args.size or "full", args.seed)
    else:
        study = phantom.generate(args.out_dir, args.case, args.size or "small", args.seed)
    _print_json({"out_dir": str(study.out_dir), "truth": str(study.out_dir / "truth.json"),
                 "expected": study.truth["expected"]})
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.staging import stage_to_json

    side = None if args.side == "unknown" else args.side
    _print_json(stage_to_json(side, args.stations, args.edition))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.study import inspect_study

    _print_json(inspect_study(Path(args.study_dir)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Stage one study folder offline and write result.json and the DICOM outputs."""
    from pipeline.run import run_study
    from pipeline.settings import load_pipeline_settings

    settings = load_pipeline_settings(args.config)
    show = sys.stderr.isatty() or args.progress

    def progress(stage: str, state: str) -> None:
        if show:
            sys.stderr.write(f"[nodestage] {stage:<9} {state}\n")

    result = run_study(Path(args.study_dir), settings, Path(args.out), progress=progress)
    _print_json({"n_tnm8": result.n_tnm8, "n_tnm9": result.n_tnm9, "stations": result.involved_stations,
                 "result": str(Path(args.out) / "result.json"), "warnings": result.warnings})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a PACS (Orthanc) routes a study to the node, which sends its results back."""
    from dicomnode.commands import demo

    result = demo(args.study, args.case, args.out_dir, progress=lambda line: sys.stdout.write(line + "\n"))
    return 0 if result.get("state") == "DONE" else EXIT_UNPROCESSABLE


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.commands import serve

    return serve(args.config)


def cmd_status(args: argparse.Namespace) -> int:
    from dicomnode.commands import status

    _print_json(status(args.config))
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.commands import echo

    result = echo(args.target, calling_aet=args.aet, config_path=args.config)
    _print_json(result)
    return 0 if result.get("ok") else 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    from dicomnode.commands import reprocess

    _print_json(reprocess(args.config, args.study))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the silent-mode ledger against clinical and pathological N: report.html/.md, metrics.json, PNGs."""
    from pipeline.evaluate import EvaluationError, evaluate

    try:
        metrics, written = evaluate(Path(args.ledger), Path(args.reference), Path(args.out), args.edition,
                                    args.study_version, args.bootstrap, args.seed)
    except EvaluationError as err:
        sys.stderr.write(f"nodestage evaluate: {err}\n")
        return EXIT_UNPROCESSABLE
    except OSError as err:
        sys.stderr.write(f"nodestage evaluate: cannot write {err.filename or args.out}: {err.strerror or err}\n")
        return EXIT_UNPROCESSABLE
    _print_json({"report": str(written["report_html"]), "metrics": str(written["metrics_json"]),
                 "matched": metrics["cohort"]["matched"], "node_failures": len(metrics["cohort"]["node_failures"]),
                 "accuracy": {k: c["accuracy"]["value"] for k, c in metrics["comparisons"].items()},
                 "note": metrics["disclaimer"]})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodestage", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic PET/CT study with ground truth")
    p.add_argument("out_dir", nargs="?")
    p.add_argument("--case")
    p.add_argument("--anatomy", metavar="DIR",
                   help="real-anatomy cases: a folder with cxr.nii.gz, mask.nii.gz and structures.csv "
                        "(e.g. ../shared/data/ct/lidc-idri-0001)")
    p.add_argument("--size", choices=["small", "full"], default=None,
                   help="small or full (default: small for geometric cases, full for real-anatomy ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the named cases")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("stage", help="N category from the primary's side and the positive stations")
    p.add_argument("--side", choices=["left", "right", "unknown"], required=True)
    p.add_argument("--stations", default="", help="comma-separated IASLC stations, e.g. 4R,7")
    p.add_argument("--edition", type=int, choices=[8, 9])
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("inspect", help="which series would be used, geometry, SUV factor, warnings")
    p.add_argument("study_dir")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="stage one study folder offline: result.json and DICOM SEG/SR/SC")
    p.add_argument("study_dir")
    p.add_argument("--out", required=True, help="output folder (result.json, summary.png, dicom/)")
    p.add_argument("--config", help="config.yaml whose pipeline: section sets the backends")
    p.add_argument("--progress", action="store_true", help="progress lines even when stderr is not a terminal")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the main job: Orthanc routes a study to the node and gets SEG/SR/SC back")
    p.add_argument("--study", help="a study folder to route (default: a generated phantom)")
    p.add_argument("--case", default="n2b_right_4r_7", help="phantom case when --study is not given")
    p.add_argument("--out-dir", help="where the demo keeps its PACS, node and results (default: a temp dir)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="run the DICOM node in the foreground (SIGTERM stops it cleanly)")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="studies by state, the queue, failed sends, the last errors")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("echo", help="C-ECHO a peer: AE@HOST:PORT")
    p.add_argument("target")
    p.add_argument("--aet", help="calling AE title (default: the node's)")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("reprocess", help="queue a study again (a new version; earlier outputs kept)")
    p.add_argument("study", help="StudyInstanceUID or the study number shown by status")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("evaluate", help="score ledger.csv against clinical (cN) and pathological (pN) N")
    p.add_argument("--ledger", required=True, help="the node's ledger.csv")
    p.add_argument("--reference", required=True, help="reference CSV: study UID or accession, cN, pN (README)")
    p.add_argument("--out", required=True, help="report folder: report.html, report.md, metrics.json, PNGs")
    p.add_argument("--edition", type=int, choices=[8, 9], default=8, help="TNM edition (9: N2a/N2b)")
    p.add_argument("--study-version", choices=["latest", "first"], default="latest",
                   help="which version of a study processed more than once counts (default: latest)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the kappa interval")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PipelineError as err:
        sys.stderr.write(f"nodestage {args.command}: {err}\n")
        return EXIT_UNPROCESSABLE
    except ValueError as err:
        sys.stderr.write(f"nodestage {args.command}: {err}\n")
        return EXIT_UNPROCESSABLE


if __name__ == "__main__":
    sys.exit(main())
