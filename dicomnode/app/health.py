"""Is the node alive, is it ready, can its configured backends run: /healthz, /readyz, `weights check`.

Liveness only says the process answers. Readiness says a study sent now would be received,
processed and recorded: the index opens, the spool's disk is above the watermark that would
make the node refuse instances (0xA700), the worker runs, and the configured backends have their
weights on disk (the node never downloads any).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.settings import PipelineSettings

if TYPE_CHECKING:
    from dicomnode.app.node import Node


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_checks(settings: PipelineSettings) -> list[Check]:
    """One check per configured model backend: its weights present, or why they are not."""
    checks = []
    anatomy = settings.anatomy
    if anatomy.backend == "totalsegmentator":
        from pipeline.anatomy.totalseg import check_weights

        try:
            folder, models = check_weights(anatomy.totalseg)
            checks.append(Check("anatomy: totalsegmentator", True,
                                f"{len(models)} model folder(s) complete in {folder}"))
        except PipelineError as err:
            checks.append(Check("anatomy: totalsegmentator", False, str(err)))
    elif anatomy.backend == "labelmap":
        path = anatomy.labelmap.path if anatomy.labelmap else None
        checks.append(Check("anatomy: labelmap", path is not None and Path(path).is_file(),
                            f"label map {path}" if path else "anatomy.labelmap.path is not set"))
    else:
        checks.append(Check("anatomy: classical", True, "embedded: needs no weights"))
    lesions = settings.lesions
    if lesions.backend == "nnunet":
        from pipeline.lesions.nnunet import check_model_folder

        try:
            folder, roles = check_model_folder(lesions.nnunet)
            checks.append(Check("lesions: nnunet", True, f"model folder {folder} (channels {', '.join(roles)})"))
        except PipelineError as err:
            checks.append(Check("lesions: nnunet", False, str(err)))
    else:
        checks.append(Check(f"lesions: {lesions.backend}", True, "embedded: needs no weights"))
    return checks


def readiness(node: Node) -> list[Check]:
    """What /readyz reports; the node is ready when every check is ok."""
    cfg = node.config
    checks = []
    try:
        assert node.storage is not None
        node.storage.index.ping()
        checks.append(Check("database", True, str(cfg.storage.database)))
    except Exception as err:  # any failure of the index means not ready
        checks.append(Check("database", False, f"{type(err).__name__}: {err}"))
    free_mb = shutil.disk_usage(cfg.storage.spool_dir).free / 2 ** 20
    checks.append(Check("disk", free_mb >= cfg.storage.min_free_mb,
                        f"{free_mb:.0f} MB free for the spool (watermark {cfg.storage.min_free_mb:g} MB)"))
    worker_ok = node.worker is not None and node.worker.alive()
    checks.append(Check("worker", worker_ok or cfg.worker.concurrency == 0,
                        "running" if worker_ok else "stopped" if cfg.worker.concurrency else "disabled (concurrency 0)"))
    checks += weights_checks(cfg.pipeline)
    return checks
