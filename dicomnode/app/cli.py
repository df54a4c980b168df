"""`nodestage` command line: a thin layer over the pipeline and node APIs.

Every command prints JSON (UTF-8, stable keys) or a one-line reason, never a traceback.
Exit codes: 0 done; 1 the thing checked failed (an echo, a study the demo could not stage);
2 unusable input, arguments or configuration; 3 an unexpected internal error (its traceback
is logged with --log-level DEBUG); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from dicomnode.app.logs import quiet_libraries
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_UNPROCESSABLE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")


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
    _print_json(stage_to_json(side, args.stations, args.edition))  # same keys whatever the edition
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.study import inspect_study

    _print_json(inspect_study(Path(args.study_dir)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Stage one study folder offline and write result.json and the DICOM outputs."""
    from pipeline.run import run_study
    from pipeline.settings import load_pipeline_settings

    # Everything that can be checked before minutes of work is checked first.
    study, out = Path(args.study_dir), Path(args.out)
    if not study.is_dir():
        raise UsageError(f"{study}: not a folder of DICOM files" if study.exists() else f"{study}: no such folder")
    _check_out_dir(out)
    settings = load_pipeline_settings(args.config)
    show = sys.stderr.isatty() or args.progress

    def progress(stage: str, state: str) -> None:
        if show:
            sys.stderr.write(f"[nodestage] {stage:<9} {state}\n")

    result = run_study(study, settings, out, progress=progress)
    _print_json({"n_tnm8": result.n_tnm8, "n_tnm9": result.n_tnm9, "stations": result.involved_stations,
                 "result": str(Path(args.out) / "result.json"), "warnings": result.warnings})
    return 0


class UsageError(Exception):
    """Arguments that cannot work (a file where a folder is needed, ...): one line, exit 2."""


def _check_out_dir(out: Path) -> None:
    """An output folder that exists or can be made, and can be written."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {parent} is not writable")


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a PACS (Orthanc) routes a study to the node, which sends its results back."""
    from dicomnode.app.commands import demo

    def progress(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()  # --viewer prints its address and waits: a pipe must see it now

    result = demo(args.study, args.case, args.out_dir, progress=progress, viewer=args.viewer)
    return 0 if result.get("state") == "DONE" else EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.app.commands import serve

    return serve(args.config)


def cmd_status(args: argparse.Namespace) -> int:
    from dicomnode.app.commands import status

    _print_json(status(args.config))
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.app.commands import echo

    result = echo(args.target, calling_aet=args.aet, config_path=args.config)
    _print_json(result)
    return 0 if result.get("ok") else EXIT_FAILED


def cmd_reprocess(args: argparse.Namespace) -> int:
    from dicomnode.app.commands import reprocess

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


def cmd_batch(args: argparse.Namespace) -> int:
    """Every study of an archive folder, each once, resumable: OUT/results/<study>/ and OUT/ledger.csv."""
    from dicomnode.app.batch import BatchOptions, run_batch
    from dicomnode.app.config import load_config

    _check_out_dir(Path(args.out))
    config = load_config(args.config, serving=False) if args.config else None
    settings_json = config.pipeline.model_dump_json() if config is not None else None
    celery = None
    max_deliveries = config.executor.celery.max_deliveries if config is not None else 3
    if args.executor == "celery":
        from dicomnode.run.celery_app import ENV_BROKER, CelerySettings

        env = CelerySettings.from_env()
        if config is not None:
            c = config.executor.celery
            broker = args.broker or os.environ.get(ENV_BROKER) or c.broker_url
            celery = CelerySettings(broker, c.backend_url or broker, c.task_time_limit_s, c.visibility_timeout_s)
        else:
            broker = args.broker or env.broker_url
            celery = CelerySettings(broker, broker if args.broker else env.backend_url, env.task_time_limit_s,
                                    env.visibility_timeout_s)
    timeout = args.timeout or (config.worker.timeout_seconds if config is not None else None)
    options = BatchOptions(args.executor, args.workers, timeout or 3600.0, settings_json, celery, max_deliveries,
                           "DEBUG" if args.log_level == "DEBUG" else "INFO")
    show = sys.stderr.isatty() or args.progress

    def progress(line: str) -> None:
        if show:
            sys.stderr.write(f"[nodestage] batch {line}\n")
            sys.stderr.flush()

    counts = run_batch(Path(args.archive_dir), Path(args.out), options, on_progress=progress)
    _print_json({**counts.to_dict(), "ledger": str(Path(args.out) / "ledger.csv"),
                 "results": str(Path(args.out) / "results"), "executor": args.executor})
    return 0 if counts.failed == 0 else EXIT_FAILED


def cmd_cohort(args: argparse.Namespace) -> int:
    """A synthetic cohort (phantom studies, not patients) with reference.csv and cohort.json, for evaluate."""
    from pipeline.evaluate.cohort import SUBGROUPS, generate_cohort

    if not args.anatomy:
        sys.stderr.write("nodestage cohort: no --anatomy: geometric phantom only\n")
    studies = generate_cohort(Path(args.out_dir), args.n, args.seed, Path(args.anatomy) if args.anatomy else None,
                              args.size)
    out = Path(args.out_dir)
    _print_json({"out_dir": str(out), "studies": len(studies), "cohort": str(out / "cohort.json"),
                 "references": {k: str(out / v) for k, v in SUBGROUPS.items() if (out / v).is_file()},
                 "near_threshold": sum(1 for s in studies if s.near_threshold),
                 "sources": {src: sum(1 for s in studies if s.plan.source == src)
                             for src in sorted({s.plan.source.value for s in studies})},
                 "next": "send studies/*/dicom to the node in silent mode, then nodestage evaluate --ledger "
                         "ledger.csv --reference <each reference CSV> --out REPORT_DIR"})
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """Each configured model backend: weights present or missing (exit 1 when one cannot run)."""
    from dicomnode.app.config import load_config
    from dicomnode.app.health import weights_checks

    checks = weights_checks(load_config(args.config, serving=False).pipeline)
    _print_json([c.to_dict() for c in checks])
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


SECRET_WORDS = ("password", "secret", "token", "passphrase")


def _mask_secrets(value):
    if isinstance(value, dict):
        return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) and v else _mask_secrets(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_secrets(v) for v in value]
    return value


def cmd_config(args: argparse.Namespace) -> int:
    """`config check`: the node would start with this config; `config show`: the effective config."""
    from dicomnode.app.config import load_config

    config = load_config(args.config)  # serving checks included: what `serve` would refuse, this refuses
    if args.action == "check":
        _print_json({"ok": True, "config": args.config or os.environ.get("NODESTAGE_CONFIG") or "defaults",
                     "mode": config.mode, "port": config.node.port, "ae_title": config.node.ae_title})
    else:
        _print_json(_mask_secrets(config.model_dump(mode="json")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = argparse.ArgumentParser(prog="nodestage", description=__doc__.splitlines()[0],
                                     epilog="Exit codes: 0 done, 1 check failed, 2 unusable input or "
                                            "configuration, 3 internal error, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"nodestage {__version__}")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="log level on stderr (default: WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a synthetic PET/CT study with ground truth")
    p.add_argument("out_dir", nargs="?", help="folder to write the study (dicom/) and truth.json into")
    p.add_argument("--case", help="case name (see --list)")
    p.add_argument("--anatomy", metavar="DIR",
                   help="real-anatomy cases: a folder with cxr.nii.gz, mask.nii.gz and structures.csv "
                        "(e.g. ../shared/data/ct/lidc-idri-0001)")
    p.add_argument("--size", choices=["small", "full"], default=None,
                   help="small or full (default: small for geometric cases, full for real-anatomy ones)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--list", action="store_true", help="list the named cases")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("stage", help="N category from the primary's side and the positive stations")
    p.add_argument("--side", choices=["left", "right", "unknown"], required=True,
                   help="side of the primary tumour (decides ipsi- and contralateral)")
    p.add_argument("--stations", default="", help="comma-separated IASLC stations, e.g. 4R,7")
    p.add_argument("--edition", type=int, choices=[8, 9], default=8,
                   help="edition whose category is given as \"n\" (both are always given; default: 8)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("inspect", help="which series would be used, geometry, SUV factor, warnings")
    p.add_argument("study_dir", help="a folder of one study's DICOM files (searched recursively)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="stage one study folder offline: result.json and DICOM SEG/SR/SC")
    p.add_argument("study_dir", help="a folder of one study's DICOM files (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (result.json, summary.png, dicom/)")
    p.add_argument("--config", help="config.yaml whose pipeline: section sets the backends")
    p.add_argument("--progress", action="store_true", help="progress lines even when stderr is not a terminal")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the main job: Orthanc routes a study to the node and gets SEG/SR/SC back")
    p.add_argument("--study", help="a study folder to route (default: a generated phantom)")
    p.add_argument("--case", default="n2b_right_4r_7", help="phantom case when --study is not given")
    p.add_argument("--out-dir", help="where the demo keeps its PACS, node and results (default: a temp dir)")
    p.add_argument("--viewer", action="store_true",
                   help="keep Orthanc up and serve the study in OHIF until Ctrl-C (make viewer-packages)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="run the DICOM node in the foreground (SIGTERM stops it cleanly)")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="studies by state, the queue, failed sends, the last errors")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("echo", help="C-ECHO a peer: AE@HOST:PORT")
    p.add_argument("target", help="AE@HOST:PORT, e.g. NODESTAGE@127.0.0.1:11112")
    p.add_argument("--aet", help="calling AE title (default: the node's; for the node itself, the first AE on "
                                 "its allow-list)")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("reprocess", help="queue a study again (a new version; earlier outputs kept)")
    p.add_argument("study", help="StudyInstanceUID or the study number shown by status")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("weights", help="are the configured models' weights on disk? (never downloads)")
    p.add_argument("action", choices=["check"], help="check: list each configured model as present or missing")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("config", help="validate the configuration, or show the effective one")
    p.add_argument("action", choices=["check", "show"],
                   help="check: would the node start with it; show: the effective config (env overrides applied)")
    p.add_argument("--config", help="config.yaml (default: $NODESTAGE_CONFIG)")
    p.set_defaults(func=cmd_config)

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

    p = sub.add_parser("batch", help="run every study of an archive folder once (resumable); ledger.csv for evaluate",
                       description="Walk ARCHIVE_DIR (studies found by StudyInstanceUID), run each study not yet in "
                                   "OUT/ledger.csv, and write OUT/results/<study>/ and one OUT/ledger.csv row per "
                                   "study (the node's columns: `nodestage evaluate --ledger OUT/ledger.csv`). "
                                   "Rerun the same command after an interruption: finished studies are skipped.")
    p.add_argument("archive_dir", help="a folder of studies (an archive export, a PACS query result)")
    p.add_argument("--out", required=True, help="output folder: results/, ledger.csv (the batch's state)")
    p.add_argument("--executor", choices=["local", "celery"], default="local",
                   help="local: pipeline processes here; celery: Celery workers, queue retro (pip install "
                        "nodestage[celery]; results on storage the workers share) (default: local)")
    p.add_argument("--workers", type=int, default=None,
                   help="local: studies at once (default 1); celery: studies queued or running at once (default 64)")
    p.add_argument("--config", help="config.yaml: its pipeline: section, worker.timeout_seconds and executor.celery")
    p.add_argument("--broker", help="celery: broker URL (default $NODESTAGE_CELERY_BROKER, else the config's)")
    p.add_argument("--timeout", type=float, help="seconds one study may run (default: worker.timeout_seconds, 3600)")
    p.add_argument("--progress", action="store_true", help="progress lines even when stderr is not a terminal")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("cohort", help="a synthetic cohort of phantom studies with reference.csv (cN, pN) for evaluate")
    p.add_argument("out_dir", help="folder for studies/, reference.csv and cohort.json")
    p.add_argument("--n", type=int, required=True, help="number of studies")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (the same seed gives the same cohort)")
    p.add_argument("--anatomy", metavar="DIR",
                   help="also draw real-anatomy studies on this CT + label map (e.g. ../shared/data/ct/lidc-idri-0001)")
    p.add_argument("--size", choices=["small", "full"], default="small", help="phantom grid (default: small)")
    p.set_defaults(func=cmd_cohort)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries(str(args.log_level).upper())
    return _run_command(args)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _run_command(args: argparse.Namespace) -> int:
    """The one error handler: every failure is one line on stderr and a documented exit code."""
    from dicomnode.app.config import ConfigError

    def fail(message: object, code: int) -> int:
        sys.stderr.write(f"nodestage {args.command}: {_one_line(message)}\n")
        return code

    try:
        return args.func(args)
    except (PipelineError, ConfigError, UsageError, ValueError) as err:
        return fail(err, EXIT_UNPROCESSABLE)
    except FileNotFoundError as err:
        return fail(f"{err.filename or err}: not found", EXIT_UNPROCESSABLE)
    except PermissionError as err:
        return fail(f"{err.filename or err}: permission denied", EXIT_UNPROCESSABLE)
    except OSError as err:
        return fail(f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}", EXIT_UNPROCESSABLE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except Exception as err:  # a bug: one line here, the traceback in the log at DEBUG
        logger.debug("internal error in nodestage %s", args.command, exc_info=True)
        return fail(f"internal error: {type(err).__name__}: {err} (rerun with --log-level DEBUG for the "
                    "traceback)", EXIT_INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
