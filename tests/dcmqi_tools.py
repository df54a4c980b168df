"""dcmqi as the validator of our SEG and SR: run its tools, read back masks and TID 1500 (shared by tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"
LYMPH_NODE_SR = "seg-sr/tid1500-lymph-nodes/qin-headneck-01-0139-primary-and-10-nodes.dcm"


def _tool(name: str) -> str:
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path is None:
        pytest.fail(f"dcmqi's {name} not found (pip install dcmqi)")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    for line in sorted(set((proc.stdout + proc.stderr).splitlines())):
        if "warning" in line.lower() or "error" in line.lower():
            print(f"{Path(cmd[0]).name}: {line}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def read_tid1500(path: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{path.stem}.json"
    _run([_tool("tid1500reader"), "--inputDICOM", str(path), "--outputMetadata", str(out)])
    return json.loads(out.read_text())


def _voxels_on_grid(mask_img: sitk.Image, grid: sitk.Image) -> set[tuple[int, int, int]]:
    """CT-grid (i, j, k) indices of a mask's voxels, mapped through physical space (must land on voxels)."""
    ijk = np.argwhere(sitk.GetArrayViewFromImage(mask_img) > 0)[:, ::-1].astype(float)
    d = np.array(mask_img.GetDirection()).reshape(3, 3)
    phys = np.array(mask_img.GetOrigin()) + (ijk * np.array(mask_img.GetSpacing())) @ d.T
    gd = np.array(grid.GetDirection()).reshape(3, 3)
    cont = ((phys - np.array(grid.GetOrigin())) @ gd) / np.array(grid.GetSpacing())
    idx = np.rint(cont)
    assert np.abs(cont - idx).max() < 1e-3, "SEG voxels fall between CT voxels"
    return {tuple(int(v) for v in row) for row in idx}


def dcmqi_masks_match(seg_path: Path, labels: sitk.Image, planned, out_dir: Path) -> dict[int, float]:
    """Dice per segment between dcmqi's reading of the SEG and our label map."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _run([_tool("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir),
          "--outputType", "nrrd"])
    meta = json.loads((out_dir / "meta.json").read_text())
    attrs = {a["labelID"]: a for group in meta["segmentAttributes"] for a in group}
    ours = sitk.GetArrayViewFromImage(labels)
    dice = {}
    for p in planned:
        assert attrs[p.number]["TrackingUniqueIdentifier"] == p.lesion.tracking_uid
        mask = sitk.ReadImage(str(out_dir / f"{p.number}.nrrd"))
        theirs = _voxels_on_grid(mask, labels)
        mine = {(int(i), int(j), int(k)) for k, j, i in np.argwhere(ours == p.lesion.label_value)}
        dice[p.number] = 2 * len(theirs & mine) / (len(theirs) + len(mine))
    return dice
