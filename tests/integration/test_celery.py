"""Scale-out on Celery 5 and a real Redis: real worker processes, real phantom studies, no mocks.

- two workers, one SIGKILLed (its whole process group) mid-study: every study completes once;
- a poison study whose worker is lost on every delivery fails after max_deliveries, the rest go on;
- a live study sent during a retro backfill finishes before the backfill does;
- `nodestage batch` killed mid-way and run again skips the studies it finished;
- the in-process runner loads its models once per worker process, and a pool process killed
  mid-study is replaced (loading them again) while its study runs once more.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dicomnode.app.batch import RESULTS_DIR, BatchOptions, find_studies, run_batch
from dicomnode.run.celery_app import CelerySettings
from dicomnode.run.celery_executor import CeleryExecutor
from dicomnode.run.executor import PipelineRun
from dicomnode.run.run_request import PARTIAL_SUFFIX, read_manifest
from dicomnode.send.ledger import read_ledger
from tests.node_fixtures import wait_for
from tests.redis_server import running_redis

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CELERY = PROJECT_ROOT / ".venv" / "bin" / "celery"
COHORT_CASES = ["n0_right_upper", "n1_right_hilar", "n2a_left_4l", "n2b_right_4r_7", "n2b_left_5_6",
                "n3_supraclavicular_1l"]
TASK_TIME_LIMIT_S = 60.0
VISIBILITY_TIMEOUT_S = 75.0  # > time limit + the lock margin (10 s): a killed worker's study comes back after it
STUDY_TIMEOUT_S = 45.0
WORKER_READY_S = 60.0
BATCH_DONE_S = 400.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """An archive folder of small phantom studies, one folder per study (DICOM under <case>/dicom)."""
    from pipeline import phantom

    root = tmp_path_factory.mktemp("archive")
    for case in COHORT_CASES:
        phantom.generate(root / case, case, "small", 0)
    return root


@pytest.fixture
def redis_url(tmp_path):
    with running_redis(tmp_path / "redis") as server:
        yield server.url
        gc.collect()  # Celery's result objects unsubscribe when collected: while their Redis is still up


def subset_of(archive: Path, cases: list[str], dest: Path) -> Path:
    """Some of the archive's studies in a folder of their own (hard links: no copy of the data)."""
    for case in cases:
        shutil.copytree(archive / case / "dicom", dest / case / "dicom", copy_function=os.link)
    return dest


def celery_settings(url: str) -> CelerySettings:
    return CelerySettings(url, url, TASK_TIME_LIMIT_S, VISIBILITY_TIMEOUT_S)


def start_worker(url: str, name: str, folder: Path, queues: str = "live,retro", runner: str = "subprocess",
                 preload: Path | None = None) -> subprocess.Popen:
    """A real `celery worker` subprocess (own process group), returned once it says it is ready.

    The tests that watch pipeline child processes use the ``subprocess`` runner; the
    in-process runner (the workers' default) has its own test."""
    env = dict(os.environ, NODESTAGE_CELERY_BROKER=url, NODESTAGE_CELERY_TASK_TIME_LIMIT_S=str(TASK_TIME_LIMIT_S),
               NODESTAGE_CELERY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S), PYTHONUNBUFFERED="1",
               NODESTAGE_CELERY_RUNNER=runner)
    if preload is not None:
        env["NODESTAGE_WORKER_PRELOAD"] = str(preload)
    log = folder / f"worker-{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(CELERY), "-A", "dicomnode.run.celery_app", "worker", "-Q", queues, "-c", "1",
                                 "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--loglevel", "INFO",
                                 "--without-mingle", "--without-gossip"],
                                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + WORKER_READY_S
    while b" ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc)
            raise AssertionError(f"worker {name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown of the main process
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the pool processes, whatever is left
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _ppid_and_cmdline(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1]), cmd


def pipeline_processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every running pipeline job."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _ppid_and_cmdline(int(entry.name))
            if info and "dicomnode.run.pipeline_job" in info[1]:
                found.append((int(entry.name), info[0], info[1]))
    return found


def parent_of(pid: int) -> int | None:
    info = _ppid_and_cmdline(pid)
    return info[0] if info else None


class BatchThread(threading.Thread):
    """run_batch in a thread, keeping its result or its exception."""

    def __init__(self, archive: Path, out: Path, options: BatchOptions):
        super().__init__(daemon=True)
        self.args = (archive, out, options)
        self.counts = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            self.counts = run_batch(*self.args)
        except BaseException as err:  # noqa: BLE001  (reported by the test)
            self.error = err
        self.finished_at = time.monotonic()

    def result(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), f"the batch did not finish within {timeout:g} s"
        if self.error is not None:
            raise self.error
        return self.counts


def assert_each_once(out: Path, archive: Path, expected_failed: int = 0) -> list[dict]:
    rows = read_ledger(out / "ledger.csv")
    uids = [r["study_instance_uid"] for r in rows]
    studies = find_studies(archive)
    assert sorted(uids) == sorted(s.study_uid for s in studies), "one ledger row per study, none twice"
    results = sorted(p.name for p in (out / RESULTS_DIR).iterdir())
    assert results == sorted(s.key for s in studies), "one result folder per study"
    assert not [p for p in (out / RESULTS_DIR).iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert sum(r["status"] == "failed" for r in rows) == expected_failed
    return rows


def test_killed_worker_every_study_completes_exactly_once(archive, redis_url, tmp_path):
    out = tmp_path / "out"
    workers = {name: start_worker(redis_url, name, tmp_path) for name in ("w1", "w2")}
    replacement = None
    try:
        batch = BatchThread(archive, out, BatchOptions("celery", None, STUDY_TIMEOUT_S,
                                                       celery=celery_settings(redis_url), max_deliveries=3))
        batch.start()

        def running_under_w1():
            w1 = workers["w1"].pid
            return next(((pid, cmd) for pid, ppid, cmd in pipeline_processes() if parent_of(ppid) == w1), None)

        child, cmd = wait_for(running_under_w1, 120, what="a study running on worker w1")
        time.sleep(2.0)  # mid-study
        assert parent_of(child) is not None, "the study ended before the kill: too fast to test"
        killed_study = next(s for s in find_studies(archive) if str(s.folder) in cmd)
        os.killpg(workers["w1"].pid, signal.SIGKILL)  # the worker and its pool process, as a lost machine
        killed_at = time.monotonic()
        workers["w1"].wait()
        wait_for(lambda: _ppid_and_cmdline(child) is None, 10, what="the orphaned pipeline child to die with its worker")
        # systemd would restart the worker; Redis hands its unacknowledged study out after visibility_timeout
        time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_S + 2 - time.monotonic()))
        replacement = start_worker(redis_url, "w1b", tmp_path)
        counts = batch.result(BATCH_DONE_S)
    finally:
        for proc in [*workers.values(), *([replacement] if replacement else [])]:
            stop_worker(proc)
    assert counts.done == len(COHORT_CASES) and counts.failed == 0
    rows = assert_each_once(out, archive)
    assert all(r["status"] == "done" and r["n_tnm8"] for r in rows)
    manifest = read_manifest(out / RESULTS_DIR / killed_study.key)
    assert manifest is not None and manifest.ok
    assert manifest.deliveries == 2, "the killed study ran again exactly once, on its second delivery"
    others = [read_manifest(out / RESULTS_DIR / s.key) for s in find_studies(archive) if s != killed_study]
    assert all(m is not None and m.deliveries == 1 for m in others)


def test_poison_study_fails_after_max_deliveries_and_the_rest_go_on(archive, redis_url, tmp_path):
    """A study whose worker process is killed on every delivery (an OOM killer's victim): FAILED, with why."""
    subset = subset_of(archive, COHORT_CASES[:3], tmp_path / "archive")
    studies = find_studies(subset)
    poison = studies[1]
    out = tmp_path / "out"
    worker = start_worker(redis_url, "w1", tmp_path)
    kills: list[int] = []
    stop = threading.Event()

    def oom_killer() -> None:
        while not stop.is_set():
            for pid, ppid, cmd in pipeline_processes():
                if str(poison.folder) in cmd and ppid not in kills and parent_of(ppid) == worker.pid:
                    os.kill(ppid, signal.SIGKILL)  # the worker process running it, not the pipeline child
                    kills.append(ppid)
            time.sleep(0.1)

    killer = threading.Thread(target=oom_killer, daemon=True)
    killer.start()
    try:
        counts = run_batch(subset, out, BatchOptions("celery", None, STUDY_TIMEOUT_S,
                                                     celery=celery_settings(redis_url), max_deliveries=2))
    finally:
        stop.set()
        killer.join(5)
        stop_worker(worker)
    assert len(kills) == 2, f"the poison study ran on {len(kills)} deliveries, not max_deliveries (2)"
    assert counts.done == 2 and counts.failed == 1
    rows = assert_each_once(out, subset, expected_failed=1)
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["study_instance_uid"] == poison.study_uid
    assert "poison study: delivered 3 times, more than max_deliveries 2" in failed["failure_reason"]
    manifest = read_manifest(out / RESULTS_DIR / poison.key)
    assert manifest is not None and manifest.deliveries == 3 and not manifest.ok


def test_live_study_is_not_starved_by_a_backfill(archive, redis_url, tmp_path):
    backfill = subset_of(archive, COHORT_CASES[:5], tmp_path / "archive")
    live_study = archive / COHORT_CASES[5] / "dicom"
    out = tmp_path / "out"
    worker = start_worker(redis_url, "w1", tmp_path)
    try:
        batch = BatchThread(backfill, out, BatchOptions("celery", None, STUDY_TIMEOUT_S,
                                                        celery=celery_settings(redis_url)))
        batch.start()
        wait_for(lambda: [p for p in pipeline_processes() if parent_of(p[1]) == worker.pid], 120,
                 what="the backfill's first study to start")
        settings = tmp_path / "settings.json"
        from pipeline.settings import PipelineSettings

        settings.write_text(PipelineSettings().model_dump_json())
        live_out = tmp_path / "live" / "v1"
        executor = CeleryExecutor(celery_settings(redis_url), max_deliveries=3, queue_wait_s=300)
        run = PipelineRun(4242, live_study, live_out, settings, live_out / "pipeline.log", STUDY_TIMEOUT_S)
        outcome = executor.execute(run)
        live_done_at = time.monotonic()
        remaining_then = 5 - len(read_ledger(out / "ledger.csv")) if (out / "ledger.csv").is_file() else 5
        counts = batch.result(BATCH_DONE_S)
    finally:
        stop_worker(worker)
    assert outcome.returncode == 0 and not outcome.timed_out
    assert json.loads((live_out / "result.json").read_text())["study_instance_uid"]
    assert counts.done == 5
    assert live_done_at < batch.finished_at
    assert remaining_then >= 2, f"the live study waited behind the backfill ({remaining_then} retro studies left)"


def test_batch_killed_midway_resumes_without_redoing_finished_studies(archive, tmp_path):
    subset = subset_of(archive, COHORT_CASES[:3], tmp_path / "archive")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dicomnode.app.cli", "batch", str(subset), "--out", str(out), "--workers", "1",
           "--timeout", str(STUDY_TIMEOUT_S)]
    first = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    ledger = out / "ledger.csv"
    try:
        wait_for(lambda: ledger.is_file() and len(read_ledger(ledger)) >= 1, 120, what="the first study's ledger row")
        wait_for(lambda: any(p.name.endswith(PARTIAL_SUFFIX) for p in (out / RESULTS_DIR).iterdir()), 60,
                 what="the second study to start")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the batch and its pipeline child
        first.communicate()
    rows_before = read_ledger(ledger)
    assert 1 <= len(rows_before) < 3
    finished = {r["study_instance_uid"]: r for r in rows_before}
    studies = {s.study_uid: s for s in find_studies(subset)}
    mtimes = {uid: (out / RESULTS_DIR / studies[uid].key / "result.json").stat().st_mtime_ns for uid in finished}

    second = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout)
    assert summary["skipped"] == len(rows_before) and summary["done"] == 3 - len(rows_before)
    rows = assert_each_once(out, subset)
    for uid, row in finished.items():  # untouched: the same row, the same result file
        assert next(r for r in rows if r["study_instance_uid"] == uid) == row
        assert (out / RESULTS_DIR / studies[uid].key / "result.json").stat().st_mtime_ns == mtimes[uid]
    from pipeline.evaluate.ledger import read_ledger as evaluate_reads

    assert len(evaluate_reads(ledger).entries) == 3  # what `nodestage evaluate` reads


def celery_node_config(tmp_path: Path, redis_url: str, orthanc, **celery):
    """A clinical-mode node with one worker thread, sending to `orthanc`, its jobs on Celery."""
    from tests.node_fixtures import make_config

    return make_config(tmp_path / "node", {
        "worker": {"concurrency": 1, "timeout_seconds": STUDY_TIMEOUT_S},
        "studies": {"scan_interval_seconds": 0.5},
        "mode": "clinical",
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        "executor": {"kind": "celery", "celery": {
            "broker_url": redis_url, "task_time_limit_s": TASK_TIME_LIMIT_S,
            "visibility_timeout_s": VISIBILITY_TIMEOUT_S, **celery}}})


def test_node_on_celery_sends_once_after_its_worker_is_killed(archive, redis_url, orthanc, tmp_path):
    """The node's jobs on Celery (queue live): a worker lost mid-study, the study redelivered, sent once."""
    from dicomnode.index.studies import DONE
    from tests.node_fixtures import orthanc_instances, running_node, storescu, study_row

    study_dir = archive / COHORT_CASES[3] / "dicom"
    uid = find_studies(study_dir)[0].study_uid
    cfg = celery_node_config(tmp_path, redis_url, orthanc, max_deliveries=3, queue_wait_s=3 * VISIBILITY_TIMEOUT_S)
    worker = start_worker(redis_url, "w1", tmp_path)
    replacement = None
    try:
        with running_node(cfg) as node:
            sent = storescu(study_dir, node.port)
            assert sent.returncode == 0, sent.stderr[-2000:]
            child = wait_for(lambda: next((pid for pid, ppid, _ in pipeline_processes()
                                           if parent_of(ppid) == worker.pid), None), 120, what="the study on worker w1")
            time.sleep(2.0)
            assert parent_of(child) is not None, "the study ended before the kill: too fast to test"
            os.killpg(worker.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            worker.wait()
            time.sleep(max(0.0, killed_at + VISIBILITY_TIMEOUT_S + 2 - time.monotonic()))
            replacement = start_worker(redis_url, "w1b", tmp_path)
            row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] in (DONE, "FAILED") and r, 240,
                           what="the study to finish")
            assert row["state"] == DONE, row["reason"]
            out_dir = cfg.storage.archive_dir / find_studies(study_dir)[0].key / "v1"
            manifest = read_manifest(out_dir)
            outputs = wait_for(lambda: [t for t in orthanc_instances(orthanc) if t["StudyInstanceUID"] == uid] or None,
                               60, what="the outputs in Orthanc")
            time.sleep(3.0)  # a duplicate send would arrive now
            outputs = [t for t in orthanc_instances(orthanc) if t["StudyInstanceUID"] == uid]
    finally:
        stop_worker(worker)
        if replacement is not None:
            stop_worker(replacement)
    assert manifest is not None and manifest.ok and manifest.deliveries == 2
    from pipeline.job_result import JobResult

    sop_uids = [t["SOPInstanceUID"] for t in outputs]
    expected = JobResult.read(out_dir / "result.json").outputs.dicom_files()
    assert len(expected) >= 3 and len(sop_uids) == len(set(sop_uids)) == len(expected), "each output sent once"


def test_node_collects_on_a_tick_so_one_worker_thread_keeps_two_studies_in_flight(archive, redis_url, orthanc,
                                                                                    tmp_path):
    """worker.concurrency 1 and two Celery workers: the node submits both studies without waiting on
    the first, they run at once, and the collect tick sends each one's outputs once."""
    from dicomnode.index.studies import DONE
    from tests.node_fixtures import orthanc_instances, running_node, storescu, study_row

    study_dirs = [archive / case / "dicom" for case in COHORT_CASES[4:6]]
    uids = [find_studies(d)[0].study_uid for d in study_dirs]
    cfg = celery_node_config(tmp_path, redis_url, orthanc, max_in_flight=4, queue_wait_s=300, collect_interval_s=0.5)
    workers = [start_worker(redis_url, name, tmp_path) for name in ("w1", "w2")]
    try:
        with running_node(cfg) as node:
            for d in study_dirs:
                sent = storescu(d, node.port)
                assert sent.returncode == 0, sent.stderr[-2000:]
            pids = {w.pid for w in workers}
            both = wait_for(lambda: len({parent_of(ppid) for _, ppid, _ in pipeline_processes()} & pids) == 2,
                            180, what="both studies running at once, one on each worker")
            assert both
            rows = [wait_for(lambda u=u: (r := study_row(node, u)) and r["state"] in (DONE, "FAILED") and r, 240,
                             what="the study to finish") for u in uids]
            assert [r["state"] for r in rows] == [DONE, DONE], [r["reason"] for r in rows]
            outputs = wait_for(lambda: len({t["StudyInstanceUID"] for t in orthanc_instances(orthanc)} & set(uids))
                               == 2 and orthanc_instances(orthanc), 60, what="both studies' outputs in Orthanc")
            time.sleep(2.0)  # a duplicate send would arrive now
            outputs = [t for t in orthanc_instances(orthanc) if t["StudyInstanceUID"] in uids]
    finally:
        for w in workers:
            stop_worker(w)
    sop_uids = [t["SOPInstanceUID"] for t in outputs]
    assert len(sop_uids) == len(set(sop_uids)) >= 6, "each study's SEG, SR and SC, each sent once"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def test_in_process_worker_loads_its_models_once_and_survives_a_killed_pool_process(archive, redis_url, tmp_path):
    """Runner ``in-process`` with a (tiny, random) nnU-Net lesion model preloaded at worker_process_init:
    the studies run in the pool process itself and take the model from its cache; a pool process
    SIGKILLed mid-study is replaced, loads the model once more, and the study runs again, once."""
    from pipeline.settings import PipelineSettings
    from tests.nnunet_fake import write_fake_model

    model = write_fake_model(tmp_path / "model", 905, "NoLesions", {"background": 0, "lesion": 1}, ["CT", "PET"],
                             patch_size=(32, 32, 32), constant_label=0)
    settings = tmp_path / "settings.json"
    settings.write_text(PipelineSettings.model_validate(
        {"lesions": {"backend": "nnunet", "nnunet": {"model_dir": str(model)}}}).model_dump_json())
    subset = subset_of(archive, COHORT_CASES[:3], tmp_path / "archive")
    studies = find_studies(subset)
    victim = studies[1]
    out = tmp_path / "out"
    worker = start_worker(redis_url, "w1", tmp_path, runner="in-process", preload=settings)
    log = tmp_path / "worker-w1.log"
    killed: list[int] = []
    stop = threading.Event()

    def kill_once() -> None:  # the pool process, once the victim's run has begun logging
        started = out / RESULTS_DIR / (victim.key + PARTIAL_SUFFIX) / "pipeline.log"
        while not stop.is_set() and not killed:
            pool = children_of(worker.pid)
            if started.is_file() and started.stat().st_size > 0 and len(pool) == 1:
                os.kill(pool[0], signal.SIGKILL)
                killed.append(pool[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once, daemon=True)
    killer.start()
    try:
        counts = run_batch(subset, out, BatchOptions("celery", None, STUDY_TIMEOUT_S, settings.read_text(),
                                                     celery=celery_settings(redis_url), max_deliveries=3))
    finally:
        stop.set()
        killer.join(5)
        stop_worker(worker)
    assert killed, "the victim study ended before its pool process could be killed"
    assert counts.done == 3 and counts.failed == 0
    rows = assert_each_once(out, subset)
    assert all(r["n_tnm8"] == "N0" for r in rows), "a model that finds no lesion stages every study N0"
    manifests = {s.key: read_manifest(out / RESULTS_DIR / s.key) for s in studies}
    assert all(m is not None and m.ok and m.runner == "InProcessExecutor" for m in manifests.values())
    assert manifests[victim.key].deliveries == 2, "the killed study ran again exactly once"
    assert manifests[victim.key].pid not in (None, killed[0]), "the victim ran again in the replacement process"
    assert all(parent_of(m.pid) is None for m in manifests.values()), "the studies ran in the pool processes"
    text = log.read_text()
    preloads = text.count("models loaded in")
    loads = text.count("model cache: loaded")
    assert preloads == 2, f"one preload per pool process (the first and its replacement), not {preloads}"
    assert loads == 2, f"the lesion model was loaded {loads} times: only at each pool process's start"
