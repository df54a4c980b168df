"""Paths that modules compute from their own file still point at the repository after a move."""

from dicomnode.app.viewer import APP_CONFIG
from dicomnode.run.executor import PROJECT_ROOT


def test_the_viewer_config_is_the_deploy_one():
    assert APP_CONFIG.is_file() and APP_CONFIG.parts[-3:] == ("deploy", "ohif", "app-config.js")


def test_the_pipeline_child_imports_from_the_repository_root():
    assert (PROJECT_ROOT / "dicomnode" / "cli.py").is_file() and (PROJECT_ROOT / "pipeline" / "run.py").is_file()
