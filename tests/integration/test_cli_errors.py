"""Issue 15's rough edges of the command line, each as a new user met it: the exact command, its
one-line error and its exit code. Never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.node_fixtures import make_config, running_node, small_study, write_config  # noqa: F401

EXIT_FAILED, EXIT_UNPROCESSABLE = 1, 2


def nodestage(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_run_with_out_naming_a_file_fails_before_any_work(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    study = tmp_path  # checked before the study is read: no study needed
    proc = nodestage("run", str(study), "--out", str(notes))
    one_line_error(proc, EXIT_UNPROCESSABLE, "nodestage run: --out", "exists and is not a folder")
    assert notes.read_text() == "keep me"


def test_run_with_a_missing_study_folder(tmp_path):
    proc = nodestage("run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    one_line_error(proc, EXIT_UNPROCESSABLE, "no such folder")


@pytest.mark.parametrize("command", [["run", ".", "--out", "OUT"], ["status"], ["serve"], ["reprocess", "1"]])
def test_a_missing_config_file_is_one_line(tmp_path, command):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    proc = nodestage(*args, "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    one_line_error(proc, EXIT_UNPROCESSABLE, "missing.yaml: config file not found")


def test_a_bad_pipeline_value_in_run_config_names_the_key(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"lesions": {"min_pet_voxels": "lots"}}}))
    study = tmp_path  # the config is read before the study
    proc = nodestage("run", str(study), "--out", str(tmp_path / "out"), "--config", str(config))
    one_line_error(proc, EXIT_UNPROCESSABLE, "invalid pipeline settings", "pipeline.lesions.min_pet_voxels",
                   "[got 'lots']")


def test_status_without_a_config_needs_no_allow_list_and_says_the_node_is_not_running(tmp_path):
    proc = nodestage("status", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["node"]["running"] is False and "not running" in report["node"]["note"]


def test_echo_to_the_node_itself_uses_an_allowed_calling_ae(tmp_path):
    path = write_config(tmp_path)
    from dicomnode.app.config import load_config

    cfg = load_config(path, environ={})
    with running_node(cfg) as node:
        proc = nodestage("echo", f"{cfg.node.ae_title}@127.0.0.1:{node.port}", "--config", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = json.loads(proc.stdout)
        assert out["ok"] and out["calling_aet"] in cfg.security.allowed_calling_aets
        refused = nodestage("echo", f"{cfg.node.ae_title}@127.0.0.1:{node.port}", "--aet", "STRANGER")
        assert refused.returncode == EXIT_FAILED and "--aet" in json.loads(refused.stdout)["hint"]


def test_version_help_and_readable_json():
    proc = nodestage("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("nodestage ")
    helptext = nodestage("run", "--help").stdout
    assert "study_dir" in helptext and "a folder of one study" in helptext
    staged = nodestage("stage", "--side", "right", "--stations", "4R,7")
    assert "→" in staged.stdout and "\\u2192" not in staged.stdout
    for edition in ("8", "9"):  # the same keys whatever the edition
        out = json.loads(nodestage("stage", "--side", "left", "--stations", "4L", "--edition", edition).stdout)
        assert set(out) == {"n_tnm8", "n_tnm9", "stations", "reasons", "edition", "n"}


def test_every_subcommand_and_argument_has_help():
    from dicomnode.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert sub._choices_actions and any(c.dest == name and c.help for c in sub._choices_actions), name
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest}"


def test_the_venv_hides_no_dcmtk_tool():
    """pynetdicom's bundled storescu/echoscu/... are removed from the venv (Makefile): dcmtk's are meant."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    apps = next(line for line in makefile.splitlines() if line.startswith("PYNETDICOM_APPS")).split(":=")[1].split()
    assert "storescu" in apps
    bindir = Path(sys.executable).parent
    assert not [name for name in apps if (bindir / name).exists()]


def test_weights_check_on_fake_weights_and_an_empty_folder(tmp_path):
    """The configured nnU-Net model: an empty folder is missing (exit 1); a complete (fake) one is present."""
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"lesions": {"backend": "nnunet", "nnunet": {
        "model_dir": str(empty)}}}}))
    proc = nodestage("weights", "check", "--config", str(config))
    assert proc.returncode == EXIT_FAILED, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert not checks["lesions: nnunet"]["ok"] and "dataset.json" in checks["lesions: nnunet"]["detail"]
    assert checks["anatomy: classical"]["ok"]

    from tests.nnunet_fake import write_fake_model  # a tiny randomly initialised nnU-Net v2 model folder

    model = write_fake_model(tmp_path / "results", 901, "FakeLesions", {"background": 0, "lesion": 1}, ["CT", "PET"])
    config.write_text(yaml.safe_dump({"pipeline": {"lesions": {"backend": "nnunet", "nnunet": {
        "model_dir": str(model)}}}}))
    proc = nodestage("weights", "check", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(c["ok"] for c in json.loads(proc.stdout))


def test_config_check_and_show(tmp_path):
    path = write_config(tmp_path)
    proc = nodestage("config", "check", "--config", str(path))
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"]
    shown = json.loads(nodestage("config", "show", "--config", str(path)).stdout)
    assert shown["node"]["ae_title"] == "NODESTAGE" and "pipeline" in shown
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"node": {"port": 70000}, "security": {"allowed_calling_aets": ["PACS"]}}))
    one_line_error(nodestage("config", "check", "--config", str(bad)), EXIT_UNPROCESSABLE, "node.port")


def test_run_reports_progress_within_the_long_stages(tmp_path, small_study):
    proc = nodestage("run", str(small_study.out_dir / "dicom"), "--out", str(tmp_path / "out"), "--progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[nodestage]")]
    assert any("lesions" in line and "candidate foci" in line for line in lines)
    assert any("outputs" in line and "SR written" in line for line in lines)
    quiet = nodestage("run", str(small_study.out_dir / "dicom"), "--out", str(tmp_path / "out2"))
    assert "[nodestage]" not in quiet.stderr  # not a terminal, no --progress: no progress lines
