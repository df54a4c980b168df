"""deploy/: the example configs load with the node's own loader, and the compose stack is wired consistently.

The compose file, Orthanc's config and Lua rule, OHIF's config, Prometheus and the Dockerfile
name the same AE titles, hosts, ports and paths in different files; these tests read every
one of them and check that they agree, so a change in one place cannot silently break routing.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from dicomnode.app.config import NodeConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIGS = {"silent": DEPLOY / "config.silent.yaml", "clinical": DEPLOY / "config.clinical.yaml"}
CONFIG_IN_IMAGE = "/etc/nodestage/config.yaml"
DATA_VOLUME = "/var/lib/nodestage"
WEIGHTS_VOLUME = "/opt/nodestage/weights"


def _dockerfile() -> dict:
    """The instructions the tests check, read from the Dockerfile (JSON forms where it uses them)."""
    text = (ROOT / "Dockerfile").read_text()
    out = {"expose": [int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()],
           "volumes": json.loads(re.search(r"^VOLUME (\[.+\])$", text, re.M).group(1)),
           "cmd": json.loads(re.search(r"^CMD (\[.+\])$", text, re.M).group(1)),
           "from": re.search(r"^FROM (\S+)", text, re.M).group(1),
           "healthcheck": re.search(r"^HEALTHCHECK (.+)$", text, re.M).group(1),
           "copies": re.findall(r"^COPY (\S+) (\S+)$", text, re.M),
           "env": dict(re.findall(r"(TOTALSEG_\w+)=(\S+)", text))}
    return out


def _load(path: Path) -> NodeConfig:
    return load_config(path, environ={})  # the file alone, no NODESTAGE__ overrides from this shell


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def orthanc_json() -> dict:
    return json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("container_healthcheck", ROOT / "scripts" / "container-healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ example configs

@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_example_config_loads_in_its_mode(mode):
    config = _load(CONFIGS[mode])
    assert config.mode == mode
    assert config.node.host == "0.0.0.0", "in a container the node listens on every interface"
    assert config.node.port in _dockerfile()["expose"], "the config's DICOM port is the one the image EXPOSEs"


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_example_config_keeps_state_on_the_data_volume(mode):
    config = _load(CONFIGS[mode])
    st = config.storage
    for key in ("spool_dir", "archive_dir", "work_dir", "database", "ledger"):
        path = getattr(st, key)
        assert path.is_absolute() and path.is_relative_to(DATA_VOLUME), f"storage.{key} = {path}"
    ts = config.pipeline.anatomy.totalseg
    assert ts.weights_path is not None and Path(ts.weights_path).is_relative_to(WEIGHTS_VOLUME)
    assert ts.home_dir is not None and Path(ts.home_dir).is_relative_to(DATA_VOLUME), \
        "TotalSegmentator writes config.json in its home: it must be on the writable volume"


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_health_check_uses_an_ae_the_config_accepts(mode, healthcheck):
    config = _load(CONFIGS[mode])
    aet = healthcheck.calling_aet(config)
    assert aet == healthcheck.HEALTHCHECK_AET
    assert config.security.allow_any_calling_aet or aet in config.security.allowed_calling_aets


def test_health_check_falls_back_to_an_allowed_ae(healthcheck, monkeypatch):
    """A hospital config that lists only its PACS: the check borrows that AE rather than being refused."""
    monkeypatch.delenv("NODESTAGE_HEALTHCHECK_AET", raising=False)
    config = load_config(CONFIGS["silent"], environ={"NODESTAGE__SECURITY__ALLOWED_CALLING_AETS": "[PACS_ROUTER]"})
    assert healthcheck.calling_aet(config) == "PACS_ROUTER"
    monkeypatch.setenv("NODESTAGE_HEALTHCHECK_AET", "MONITOR")
    assert healthcheck.calling_aet(config) == "MONITOR"


def test_silent_config_sends_nothing():
    config = _load(CONFIGS["silent"])
    assert config.all_destinations() == []
    assert config.storage.ledger.name == "ledger.csv"


def test_image_default_config_is_the_silent_example():
    copies = dict((dst, src) for src, dst in _dockerfile()["copies"])
    assert copies[CONFIG_IN_IMAGE] == "deploy/config.silent.yaml"


# ------------------------------------------------------------------ Dockerfile

def test_dockerfile_serves_the_mounted_config_with_volumes_and_a_health_check():
    d = _dockerfile()
    assert d["from"] == "debian:bookworm-slim"
    assert d["cmd"] == ["nodestage", "serve", "--config", CONFIG_IN_IMAGE]
    assert set(d["volumes"]) == {"/etc/nodestage", DATA_VOLUME, WEIGHTS_VOLUME}
    assert "nodestage-healthcheck" in d["healthcheck"]
    assert d["env"]["TOTALSEG_WEIGHTS_PATH"].startswith(WEIGHTS_VOLUME)
    assert d["env"]["TOTALSEG_HOME_DIR"].startswith(DATA_VOLUME)


def test_dockerfile_installs_with_the_makefile_pins():
    """One source of truth: torch and everything else come from constraints.txt, as in `make venv`."""
    text = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "-c constraints.txt torch" in text
    assert "-c constraints.txt -r requirements.txt" in text, "pyproject's dependencies, constrained by the lock file"
    assert "['project']['dependencies']" in text
    assert "['optional-dependencies']['celery']" in text, "the compose's worker runs this image's celery"
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"torch=={pinned}" in makefile, "the Makefile's torch pin and constraints.txt disagree"
    assert not re.search(r"torch==\d", text), "the Dockerfile must not repeat the torch version"


# ------------------------------------------------------------------ compose wiring

def _published(service: dict) -> dict[int, str]:
    """container port -> 'host_ip:host_port' for each published port."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(container)] = host
    return out


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source for each volume."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = re.match(r"^(\$\{[^}]*\}|[^:]+):([^:]+)", spec).groups()
        out[target] = source
    return out


def test_compose_has_node_pacs_viewer_and_optional_prometheus(compose):
    services = compose["services"]
    assert {"nodestage", "orthanc", "ohif", "prometheus"} <= set(services)
    assert services["prometheus"].get("profiles") == ["monitoring"]
    for name in ("nodestage", "orthanc", "ohif"):
        assert not services[name].get("profiles"), f"{name} must start by default"
    for name, service in services.items():
        for port, host in _published(service).items():
            assert host.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_node_mounts_the_image_volumes(compose):
    node = compose["services"]["nodestage"]
    mounts = _mounts(node)
    assert set(_dockerfile()["volumes"]) - {"/etc/nodestage"} <= set(mounts)
    assert CONFIG_IN_IMAGE in mounts
    default_config = re.fullmatch(r"\$\{NODESTAGE_CONFIG_FILE:-(.+)\}", mounts[CONFIG_IN_IMAGE]).group(1)
    assert (DEPLOY / default_config).resolve() == CONFIGS["clinical"].resolve()
    assert node["build"]["context"] == ".." and (DEPLOY / node["build"]["context"] / node["build"]["dockerfile"]).is_file()
    assert node.get("shm_size"), "nnU-Net needs a larger /dev/shm"
    for service in compose["services"].values():
        for target, source in _mounts(service).items():
            if source.startswith("./") and source != "./weights":  # ./weights: the operator's, see WEIGHTS.md
                assert (DEPLOY / source).exists(), f"{source} (mounted at {target}) is missing"


def test_orthanc_routes_to_the_node_that_accepts_it(compose, orthanc_json):
    services = compose["services"]
    for mode, path in CONFIGS.items():
        config = _load(path)
        modality = orthanc_json["DicomModalities"]["nodestage"]
        assert modality["AET"] == config.node.ae_title, mode
        assert modality["Port"] == config.node.port, mode
        assert modality["Host"] in services, "Orthanc reaches the node by its compose service name"
        assert orthanc_json["DicomAet"] in config.security.allowed_calling_aets, mode
    assert _published(services["nodestage"]).keys() == {_load(CONFIGS["silent"]).node.port}
    lua = (DEPLOY / "orthanc" / "route-petct.lua").read_text()
    assert re.search(r"TARGET = 'nodestage'", lua)
    assert "/etc/orthanc/route-petct.lua" in orthanc_json["LuaScripts"]
    assert _mounts(services["orthanc"])["/etc/orthanc/route-petct.lua"] == "./orthanc/route-petct.lua"
    marker = re.search(r"ROUTED = '(\w+)'", lua).group(1)
    assert marker in orthanc_json["UserMetadata"], "the Lua rule's series marker must be declared"


def test_clinical_results_go_back_to_that_orthanc(compose, orthanc_json):
    config = _load(CONFIGS["clinical"])
    (dest, role), = config.all_destinations()
    assert role == "clinical"
    assert (dest.ae_title, dest.host, dest.port) == (orthanc_json["DicomAet"], "orthanc", orthanc_json["DicomPort"])
    assert config.calling_ae_title == orthanc_json["DicomModalities"]["nodestage"]["AET"]
    assert orthanc_json["DicomPort"] in _published(compose["services"]["orthanc"])


def test_ohif_reads_orthanc_dicomweb_through_its_proxy(compose, orthanc_json):
    app_config = (DEPLOY / "ohif" / "app-config.js").read_text()
    nginx = (DEPLOY / "ohif" / "default.conf.template").read_text()
    root = orthanc_json["DicomWeb"]["Root"].rstrip("/")
    assert orthanc_json["DicomWeb"]["Enable"] is True
    assert f"qidoRoot: '{root}'" in app_config and f"wadoRoot: '{root}'" in app_config
    assert f"proxy_pass http://orthanc:{orthanc_json['HttpPort']}{root}/;" in nginx
    assert f"wadoUriRoot: '{orthanc_json['DicomWeb']['WadoRoot']}'" in app_config
    assert compose["services"]["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert "${PORT}" in nginx and compose["services"]["ohif"]["environment"]["PORT"] == "80"


def test_prometheus_scrapes_the_node_metrics_port(compose):
    node_env = compose["services"]["nodestage"]["environment"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"nodestage:{node_env['NODESTAGE__METRICS__PORT']}"]
    config = load_config(CONFIGS["clinical"], environ={k: str(v) for k, v in node_env.items()})
    assert config.metrics.port == int(node_env["NODESTAGE__METRICS__PORT"]) and config.metrics.host == "0.0.0.0"


# ------------------------------------------------------------------ scale-out (Celery on Redis)

def _celery_app_module(command: list[str] | str) -> str:
    words = command.split() if isinstance(command, str) else command
    return words[words.index("-A") + 1]


def test_compose_scale_out_adds_redis_and_a_gpu_worker_on_the_node_volume(compose):
    services = compose["services"]
    worker, redis = services["worker-gpu0"], services["redis"]
    for service in (worker, redis):
        assert service.get("profiles") == ["scale-out"], "a single node must not need Redis or a GPU"
        assert not service.get("ports"), "the broker and the worker publish nothing"
    assert worker["image"] == services["nodestage"]["image"], "the worker runs the node's image"
    command = worker["command"]
    assert command[0].endswith("/celery") and command[command.index("-c") + 1] == "1"
    assert set(command[command.index("-Q") + 1].split(",")) == {"live", "retro"}
    module = _celery_app_module(command)
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    assert worker["environment"]["NODESTAGE_CELERY_BROKER"].startswith("redis://redis:")
    # messages carry paths: the worker must see the node's spool at the same path
    node_data = {t: s for t, s in _mounts(services["nodestage"]).items() if t == "/var/lib/nodestage"}
    assert node_data and _mounts(worker)["/var/lib/nodestage"] == node_data["/var/lib/nodestage"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in device["capabilities"] and device["device_ids"] == [worker["environment"]["CUDA_VISIBLE_DEVICES"]]
    _assert_models_stay_loaded(worker["environment"], _mounts(worker))


def _assert_models_stay_loaded(env: dict, mounts: dict | None = None) -> None:
    """A GPU worker runs studies in process and preloads the pipeline config it is given."""
    from dicomnode.run.celery_app import ENV_PRELOAD, ENV_RUNNER, RUNNER_IN_PROCESS

    assert env[ENV_RUNNER] == RUNNER_IN_PROCESS
    if mounts is not None:
        assert env[ENV_PRELOAD] in mounts, "the preloaded config is mounted into the worker"
    else:
        assert env[ENV_PRELOAD].startswith("/")


def test_worker_systemd_template_pins_one_gpu_per_instance():
    unit = (DEPLOY / "nodestage-worker@.service").read_text()
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in unit
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)
    module = _celery_app_module(exec_start)
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    assert " -c 1 " in exec_start and "%%h" in exec_start, "one study at a time; %h escaped for systemd"
    env = dict(m.split("=", 1) for m in re.findall(r"^Environment=(\S+)$", unit, re.M))
    _assert_models_stay_loaded(env)


def test_compose_ohif_is_the_version_the_viewer_tests_exercise(compose):
    tested = re.search(r"^OHIF_VERSION=(\S+)$", (ROOT / "scripts/ensure-viewer.sh").read_text(), re.M).group(1)
    assert compose["services"]["ohif"]["image"] == f"ohif/app:v{tested}"
