"""The node's configuration: the shipped config.yaml, defaults, environment overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dicomnode.app.config import ConfigError, NodeConfig, load_config
from pipeline.settings import PipelineSettings, load_pipeline_settings

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_yaml_is_valid_and_lists_every_key():
    cfg = load_config(ROOT / "config.yaml", environ={})
    assert cfg.node.ae_title == "NODESTAGE"
    assert cfg.studies.stability_seconds == 60
    assert cfg.storage.spool_dir == ROOT / "var" / "spool"  # relative to the file
    assert load_pipeline_settings(ROOT / "config.yaml") == cfg.pipeline

    data = yaml.safe_load((ROOT / "config.yaml").read_text())

    def missing(model, section: dict, prefix: str) -> list[str]:
        out = []
        for name, field in type(model).model_fields.items():
            if name not in section:
                out.append(prefix + name)
                continue
            value = getattr(model, name)
            if hasattr(type(value), "model_fields") and isinstance(section[name], dict):
                out += missing(value, section[name], f"{prefix}{name}.")
        return out

    assert missing(cfg, data, "") == []


def test_defaults_need_an_allow_list_and_say_so():
    with pytest.raises(ConfigError, match=r"security\.allowed_calling_aets is empty"):
        load_config(None, environ={})
    cfg = load_config(None, environ={"NODESTAGE__SECURITY__ALLOWED_CALLING_AETS": "[PACS, MODALITY1]"})
    assert cfg.security.allowed_calling_aets == ["PACS", "MODALITY1"]
    assert cfg.mode == "silent"
    assert cfg.pipeline == PipelineSettings()


def test_environment_overrides_are_typed_and_name_the_variable(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"security": {"allowed_calling_aets": ["PACS"]},
                                    "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104}]}))
    env = {"NODESTAGE__NODE__PORT": "11113", "NODESTAGE__MODE": "clinical",
           "NODESTAGE__DESTINATIONS__0__HOST": "10.0.0.5", "NODESTAGE__STUDIES__STABILITY_SECONDS": "90",
           "NODESTAGE__PIPELINE__LESIONS__BACKEND": "nnunet", "OTHER": "x"}
    cfg = load_config(path, environ=env)
    assert (cfg.node.port, cfg.mode, cfg.destinations[0].host) == (11113, "clinical", "10.0.0.5")
    assert cfg.studies.stability_seconds == 90.0
    assert cfg.pipeline.lesions.backend == "nnunet"
    with pytest.raises(ConfigError, match=r"node\.port: .*\(from NODESTAGE__NODE__PORT\)"):
        load_config(path, environ={"NODESTAGE__NODE__PORT": "eleven"})
    with pytest.raises(ConfigError, match=r"destinations\.3\.host: .*list has 1 items"):
        load_config(path, environ={"NODESTAGE__DESTINATIONS__3__HOST": "x"})
    cfg = load_config(None, environ={"NODESTAGE_CONFIG": str(path)})
    assert cfg.destinations[0].name == "pacs"


@pytest.mark.parametrize("section, error", [
    ({"node": {"port": 70000}}, r"node\.port: Input should be less than or equal to 65535"),
    ({"node": {"ae_title": "A" * 17}}, r"node\.ae_title: an AE title is 1-16"),
    ({"node": {"colour": "blue"}}, r"node\.colour: Extra inputs are not permitted"),
    ({"mode": "loud"}, r"mode: Input should be 'clinical' or 'silent'"),
    ({"mode": "clinical"}, r"destinations: empty, but mode is clinical"),
    ({"studies": {"on_resend": "sometimes"}}, r"studies\.on_resend"),
    ({"studies": {"guard_seconds": 90}}, r"guard_seconds must not exceed stability_seconds"),
    ({"security": {"allowed_calling_aets": ["PACS"], "allowed_peer_addresses": ["10.0.0.300"]}},
     r"security\.allowed_peer_addresses"),
    ({"security": {"allowed_calling_aets": ["PACS"], "tls": {"enabled": True}}},
     r"security\.tls: certificate is required"),
    ({"pipeline": {"lesions": {"backend": "magic"}}}, r"pipeline\.lesions\.backend"),
    ({"retry": {"max_attempts": 0}}, r"retry\.max_attempts"),
    ({"destinations": [{"name": "a", "ae_title": "A", "host": "h", "port": 1},
                       {"name": "a", "ae_title": "B", "host": "h", "port": 2}]}, r"names must be unique: a"),
])
def test_bad_values_fail_naming_the_key(tmp_path, section, error):
    data = {"security": {"allowed_calling_aets": ["PACS"]}}
    data.update(section)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=error):
        load_config(path, environ={})


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy, environ={})


def test_model_is_importable_without_a_file():
    assert NodeConfig.model_fields["pipeline"].annotation is PipelineSettings


def test_example_environment_file_is_valid():
    """Every override in deploy/nodestage.env.example, uncommented, loads with the shipped config."""
    env = {}
    for line in (ROOT / "deploy" / "nodestage.env.example").read_text().splitlines():
        line = line.lstrip("#").strip()
        if line.startswith("NODESTAGE__") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    assert len(env) >= 8
    cfg = load_config(ROOT / "config.yaml", environ=env)
    assert cfg.security.allowed_calling_aets == ["PACS_ROUTER", "MODALITY1"]
    assert cfg.destinations[0].port == 104
    assert cfg.pipeline.anatomy.backend == "totalsegmentator"
