"""Shared fixtures: the read-only public test data, phantom studies, and real DICOM peers."""

import os
from pathlib import Path

import pytest

from tests.peers import OrthancPeer, start_orthanc, stop_orthanc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The public test data: ../shared/data beside the project, or wherever NODESTAGE_TEST_DATA points
# (scripts/fetch-test-data fetches and verifies it; tests/data/manifest.csv lists every file).
SHARED_DATA = Path(os.environ.get("NODESTAGE_TEST_DATA") or PROJECT_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, read-only. Missing data is a failure, not a skip."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data not found at {SHARED_DATA}: see README, 'Test data' (scripts/fetch-test-data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_studies(tmp_path_factory) -> dict:
    """Every named phantom case at size small, seed 0, generated once per session."""
    from pipeline import phantom

    root = tmp_path_factory.mktemp("phantoms")
    return {name: phantom.generate(root / name, name, "small", 0) for name in phantom.CASES}


@pytest.fixture
def orthanc(tmp_path) -> OrthancPeer:
    """A real Orthanc PACS on free loopback ports, stopped after the test."""
    peer = start_orthanc(tmp_path / "orthanc")
    yield peer
    stop_orthanc(peer)
