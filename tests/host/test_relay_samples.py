"""The sample files under boards/rpi-relay/ stay valid and complete: relay.toml passes the
configuration check and mentions every key there is; the example export loads."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from opmob.registry import Registry
from opmob.relay_config import _SCHEMA, RelayConfig
from opmob_host.sqlite_store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "boards" / "rpi-relay"


def test_sample_relay_toml_is_valid() -> None:
    cfg = RelayConfig.from_dict(tomllib.loads((BOARD / "relay.toml").read_text()))
    assert cfg.identity == "relay-1@no" and cfg.system == "no"
    assert cfg.registry_path.endswith(".sqlite")


def test_sample_relay_toml_mentions_every_key() -> None:
    text = (BOARD / "relay.toml").read_text()
    sections = re.findall(r"^\[(\w+)\]", text, re.M)
    assert sections == [name for name, _ in _SCHEMA]
    for name, keys in _SCHEMA:
        body = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
        for key, *_ in keys:
            # Set, or shown commented out with its default.
            assert re.search(rf"^#? ?{key} = ", body, re.M), f"{name}.{key} missing from relay.toml"


def test_example_export_loads(tmp_path: Path) -> None:
    doc = json.loads((BOARD / "registry-example.json").read_text())
    assert "EXAMPLE ONLY" in doc["comment"]
    reg = Registry(SqliteStore(tmp_path / "r.sqlite"), "no")
    report = reg.load_export(doc)
    assert report["devices_added"] == 4 and report["groups_added"] == 3
    assert sum(g.e2e for g in reg.groups()) == 1
    assert any(g.receive_only for g in reg.groups())
