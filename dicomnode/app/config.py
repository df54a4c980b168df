"""The node's configuration: pydantic models of `config.yaml`, with environment overrides.

Every section is a model with documented defaults and `Literal` choices; unknown
keys are refused. A bad value fails at start-up with a `ConfigError` that names
the key (``node.port: ...``) and, when it came from the environment, the variable.

Environment overrides
---------------------
``NODESTAGE__<SECTION>__<KEY>[__<KEY>...]=value`` overrides one key, after the
file is read. Keys are case-insensitive; ``__`` separates levels; a number picks
a list item. Examples::

    NODESTAGE__NODE__PORT=11113
    NODESTAGE__MODE=silent
    NODESTAGE__SECURITY__ALLOWED_CALLING_AETS='[PACS1, PACS2]'
    NODESTAGE__DESTINATIONS__0__HOST=10.0.0.5
    NODESTAGE__PIPELINE__LESIONS__BACKEND=nnunet

A value starting with ``[`` or ``{`` is parsed as YAML (lists, mappings); any
other value is passed as a string and converted by the model (``"11113"`` -> 11113,
``"true"`` -> True). ``NODESTAGE_CONFIG`` (one underscore) names the config file
when no path is given.

Relative paths in the file are resolved against the file's folder; without a
file, against the working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from pipeline.settings import PipelineSettings

ENV_PREFIX = "NODESTAGE__"
ENV_CONFIG_FILE = "NODESTAGE_CONFIG"
CELERY_LOCK_MARGIN_S = 10.0  # dicomnode.run.celery_app.LOCK_MARGIN_S (not imported: Celery is optional)
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash, 1-16 chars


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not AE_TITLE.match(value):
        raise ValueError("an AE title is 1-16 printable ASCII characters, no backslash")
    return value


class NodeSettings(_Section):
    """The listening DICOM application entity."""

    ae_title: str = Field(default="NODESTAGE", description="our AE title (called AE of incoming associations)")
    host: str = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(default=11112, ge=0, le=65535, description="DICOM port; 0 picks a free port (tests)")
    engine: Literal["native", "pynetdicom"] = Field(
        default="native", description="receive engine: native (dicomnode.receive.ul_server, fast) or pynetdicom (fallback)")
    require_called_aet: bool = Field(default=False, description="refuse associations whose called AE is not ae_title")
    max_associations: int = Field(default=16, ge=1, description="concurrent incoming associations")
    max_pdu: int = Field(default=131072, ge=0, description="maximum PDU we accept, bytes; 0 = unlimited")
    max_dataset_mb: float = Field(default=2048, gt=0, description="largest data set (one instance) we accept, MiB")
    max_negotiating: int = Field(default=32, ge=1, description="connections still negotiating (native engine)")
    tcp_nodelay: bool = Field(default=True, description="disable Nagle's algorithm on every socket (see ENVIRONMENT.md)")
    acse_timeout_s: float = Field(default=30, gt=0, description="accept -> whole association request (deadline)")
    pdu_timeout_s: float = Field(default=30, gt=0, description="first byte of a PDU -> its last (deadline)")
    dimse_timeout_s: float = Field(default=60, gt=0, description="first PDU of a DIMSE message -> all of it")
    network_timeout_s: float = Field(default=60, gt=0, description="idle time allowed between PDUs")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)


class TLSSettings(_Section):
    """Optional TLS on the listening port (and for destinations that ask for it)."""

    enabled: bool = False
    certificate: Path | None = Field(default=None, description="PEM certificate of this node")
    private_key: Path | None = Field(default=None, description="PEM private key of this node")
    ca_certificate: Path | None = Field(default=None, description="PEM CA bundle to verify peers")
    require_client_certificate: bool = Field(default=True, description="mutual TLS for incoming associations")

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> TLSSettings:
        if self.enabled:
            for key in ("certificate", "private_key"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key} is required when TLS is enabled")
            if self.require_client_certificate and self.ca_certificate is None:
                raise ValueError("ca_certificate is required when require_client_certificate is true")
        return self


class SecuritySettings(_Section):
    """Who may send to the node."""

    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="calling AE titles accepted; others are rejected at association")
    allow_any_calling_aet: bool = Field(default=False, description="accept any calling AE (testing only)")
    allowed_peer_addresses: list[str] = Field(
        default_factory=list, description="peer IP addresses or networks (CIDR) accepted; empty = any address")
    tls: TLSSettings = Field(default_factory=TLSSettings)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("allowed_peer_addresses")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=False)  # ValueError names the bad entry
        return values


class RetentionSettings(_Section):
    spool_days: float | None = Field(
        default=7, gt=0, description="delete received instances of finished studies after this many days; null = keep")
    archive_days: float | None = Field(
        default=None, gt=0, description="delete outputs after this many days; null = keep")
    cleanup_interval_s: float = Field(default=3600, gt=0)


class StorageSettings(_Section):
    spool_dir: Path = Field(default=Path("var/spool"), description="received instances: <study>/<series>/<sop>.dcm")
    archive_dir: Path = Field(default=Path("var/archive"), description="outputs: <study>/v<version>/")
    work_dir: Path = Field(default=Path("var/work"), description="per-job input snapshots (hard links), removed after")
    database: Path = Field(default=Path("var/nodestage.sqlite"), description="SQLite index (WAL)")
    ledger: Path = Field(default=Path("var/ledger.csv"), description="silent-mode predictions, one row per study version")
    min_free_mb: float = Field(
        default=1024, ge=0, description="refuse instances (0xA700) when the spool's disk has less free space")
    fsync: bool = Field(default=True, description="fsync each instance (and its folder) before answering 0x0000")
    retention: RetentionSettings = Field(default_factory=RetentionSettings)


class StudySettings(_Section):
    """When is a study complete (DESIGN.md §2)."""

    stability_seconds: float = Field(default=60, ge=0, description="quiet period after the last instance")
    guard_seconds: float = Field(
        default=5, ge=0, description="shorter quiet period once every expected instance is in "
                                     "(PET NumberOfSlices, CT ImagesInAcquisition)")
    max_wait_seconds: float = Field(
        default=3600, gt=0, description="after this long since the first instance: process if usable, else INCOMPLETE")
    scan_interval_seconds: float = Field(default=2, gt=0, description="how often the stability scan runs")
    on_resend: Literal["ignore", "new_version"] = Field(
        default="ignore", description="an already-processed study sent again unchanged: ignore it, "
                                      "or process it again as a new version (new instances always re-open)")

    @model_validator(mode="after")
    def _order(self) -> StudySettings:
        if self.guard_seconds > self.stability_seconds:
            raise ValueError("guard_seconds must not exceed stability_seconds")
        return self


class WorkerSettings(_Section):
    concurrency: int = Field(default=1, ge=0, description="pipeline jobs at once (GPU memory); 0 = receive only")
    timeout_seconds: float = Field(default=3600, gt=0, description="a job running longer is killed and FAILED")
    max_restarts: int = Field(
        default=3, ge=0, description="a job interrupted by a node restart this often more is FAILED instead of re-run")
    python: Path | None = Field(default=None, description="interpreter for the pipeline subprocess; default: ours")


class CeleryExecutorSettings(_Section):
    """Where `executor.kind: celery` sends pipeline runs (dicomnode.run.celery_app; pip install nodestage[celery])."""

    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis of the Celery workers")
    backend_url: str | None = Field(default=None, description="result backend; null = the broker")
    max_deliveries: int = Field(default=3, ge=1, description="a study handed out more often (its worker lost each "
                                                             "time) is FAILED as a poison study")
    task_time_limit_s: float = Field(default=3600, gt=0, description="hard limit of one study on a worker")
    visibility_timeout_s: float = Field(
        default=7200, gt=0, description="Redis redelivers an unacknowledged study after this; > task_time_limit_s")
    queue_wait_s: float = Field(default=3600, ge=0, description="how long a live study may wait in the queue")
    max_in_flight: int = Field(default=16, ge=1, description="studies sent to the workers and not yet collected "
                                                             "(worker.concurrency does not apply to Celery)")
    collect_interval_s: float = Field(default=1.0, gt=0, description="how often the node collects finished studies")

    @model_validator(mode="after")
    def _visibility(self) -> CeleryExecutorSettings:
        if self.visibility_timeout_s <= self.task_time_limit_s + CELERY_LOCK_MARGIN_S:
            raise ValueError(f"visibility_timeout_s must exceed task_time_limit_s by more than "
                             f"{CELERY_LOCK_MARGIN_S:g} s (else Redis hands a running study to a second worker)")
        return self


class ExecutorSettings(_Section):
    """Where the pipeline runs: a local subprocess (the default), or Celery workers on other machines."""

    kind: Literal["local", "celery"] = Field(default="local", description="local subprocess or Celery workers")
    celery: CeleryExecutorSettings = Field(default_factory=CeleryExecutorSettings)


class Destination(_Section):
    name: str = Field(description="short name used in the outbox and status")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(default=False, description="use the node's TLS certificate and CA for this peer")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)


class RetrySettings(_Section):
    """Outbox retries: delay = min(max_delay, initial_delay * backoff_factor ** (attempt - 1))."""

    max_attempts: int = Field(default=8, ge=1, description="then FAILED_SEND, shown by `nodestage status`")
    initial_delay_seconds: float = Field(default=30, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    max_delay_seconds: float = Field(default=3600, ge=0)
    scan_interval_seconds: float = Field(default=5, gt=0, description="how often the outbox is checked")


class SendSettings(_Section):
    calling_ae_title: str | None = Field(default=None, description="our AE when sending; default node.ae_title")
    connection_timeout_s: float = Field(default=10, gt=0)
    acse_timeout_s: float = Field(default=30, gt=0)
    dimse_timeout_s: float = Field(default=120, gt=0)
    network_timeout_s: float = Field(default=60, gt=0)
    echo_at_startup: bool = Field(default=True, description="C-ECHO every destination at start-up and log the result")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="INFO carries no PHI and no UIDs; DEBUG adds study UIDs and accession numbers")
    format: Literal["text", "json"] = Field(default="text", description="text lines, or one JSON object per line")


class MetricsSettings(_Section):
    port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics port; null = off")
    host: str = "127.0.0.1"


class NodeConfig(_Section):
    node: NodeSettings = Field(default_factory=NodeSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    studies: StudySettings = Field(default_factory=StudySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    mode: Literal["clinical", "silent"] = Field(
        default="silent", description="clinical: send outputs to destinations; silent: ledger only")
    destinations: list[Destination] = Field(default_factory=list, description="clinical destinations (PACS)")
    research_destination: Destination | None = Field(
        default=None, description="receives outputs in both modes")
    ledger_in_clinical_mode: bool = Field(default=False, description="also write ledger.csv in clinical mode")
    retry: RetrySettings = Field(default_factory=RetrySettings)
    send: SendSettings = Field(default_factory=SendSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> NodeConfig:
        serving = (info.context or {}).get("serving", True)  # `status` and `echo` read a config they do not serve
        if serving and not self.security.allowed_calling_aets and not self.security.allow_any_calling_aet:
            raise ValueError("security.allowed_calling_aets is empty: list the sending AE titles "
                             "(or set security.allow_any_calling_aet: true)")
        names = [d.name for d in self.destinations] + (
            [self.research_destination.name] if self.research_destination else [])
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destinations: names must be unique: {', '.join(dupes)}")
        if self.mode == "clinical" and not self.destinations:
            raise ValueError("destinations: empty, but mode is clinical (add a PACS, or use mode: silent)")
        return self

    @property
    def calling_ae_title(self) -> str:
        return self.send.calling_ae_title or self.node.ae_title

    def all_destinations(self) -> list[tuple[Destination, str]]:
        """(destination, role) for every configured destination; role is clinical or research."""
        out = [(d, "clinical") for d in self.destinations]
        if self.research_destination is not None:
            out.append((self.research_destination, "research"))
        return out

    def destination(self, name: str) -> tuple[Destination, str] | None:
        return next(((d, r) for d, r in self.all_destinations() if d.name == name), None)


# ------------------------------------------------------------------ loading

def _env_overrides(environ: dict[str, str]) -> list[tuple[str, list[str], Any]]:
    out = []
    for name, raw in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or len(name) <= len(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
        if any(not k for k in keys):
            raise ConfigError(f"{name}: empty key between '__' separators")
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{'.'.join(keys)}: cannot parse {name} as YAML: {exc}") from None
        out.append((name, keys, value))
    return out


def _set_path(data: dict, keys: list[str], value: Any, env_name: str) -> None:
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{'.'.join(keys)}: {env_name} names list item {key}, "
                                  f"but the list has {len(node)} items")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(keys[:i])}: {env_name} goes below a value that is not a section")
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def _format_error(err: ValidationError, from_env: dict[str, str], source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not key:  # a check across sections: its message starts with the key
            lines.append(msg)
            continue
        env = next((v for k, v in from_env.items() if key == k or key.startswith(k + ".")), None)
        where = f" (from {env})" if env else ""
        shown = e.get("input")
        value = "" if isinstance(shown, (dict, list)) or shown is None else f" [got {shown!r}]"
        lines.append(f"{key}: {msg}{value}{where}")
    return f"{source}: invalid configuration: " + "; ".join(lines)


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None,
                serving: bool = True) -> NodeConfig:
    """Read `path` (else $NODESTAGE_CONFIG, else defaults), apply NODESTAGE__ overrides, validate.

    Raises ConfigError naming the key for every problem. `serving=False` (status, echo) skips the
    checks only a running node needs, such as a non-empty calling-AE allow-list.
    """
    environ = dict(os.environ if environ is None else environ)
    if path is None and environ.get(ENV_CONFIG_FILE):
        path = environ[ENV_CONFIG_FILE]
    data: dict[str, Any] = {}
    source = "defaults"
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
        base = path.resolve().parent
    from_env: dict[str, str] = {}
    for env_name, keys, value in _env_overrides(environ):
        _set_path(data, keys, value, env_name)
        from_env[".".join(keys)] = env_name
    try:
        config = NodeConfig.model_validate(data, context={"serving": serving})
    except ValidationError as err:
        raise ConfigError(_format_error(err, from_env, source)) from None
    return _absolute(config, base)


def _abs(p: Path | None, base: Path) -> Path | None:
    if p is None:
        return None
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else base / p


def _absolute(config: NodeConfig, base: Path) -> NodeConfig:
    """Relative paths (given or default) resolved against `base`."""
    st = config.storage
    storage = st.model_copy(update={k: _abs(getattr(st, k), base) for k in
                                    ("spool_dir", "archive_dir", "work_dir", "database", "ledger")})
    tls = config.security.tls
    tls = tls.model_copy(update={k: _abs(getattr(tls, k), base) for k in
                                 ("certificate", "private_key", "ca_certificate")})
    security = config.security.model_copy(update={"tls": tls})
    return config.model_copy(update={"storage": storage, "security": security})
