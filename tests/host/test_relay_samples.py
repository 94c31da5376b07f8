"""The sample files under boards/rpi-relay/ stay valid and complete: relay.toml passes the
configuration check and mentions every key there is; the example export loads; install step 3 of
README.md, run as written, installs the sample and the export it imports, and `relay check` passes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def step_3(
    opt: Path, etc: Path, export: Path, opmob: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """README.md's install step 3 run as written, /opt/opmob and /etc/opmob moved to ``opt`` and
    ``etc`` and the ownership left out (``-o root -g opmob`` needs root), ``opmob`` the command."""
    text = (BOARD / "README.md").read_text()
    start = text.index("\n3. **")
    block = re.search(r"```sh\n(.*?)```", text[start : text.index("\n4. **", start)], re.S)
    assert block is not None
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert any(" registry.json /etc/opmob/registry.json" in ln for ln in lines), "step 3 installs the export"
    # "Copy the sample and edit it": here its /etc/opmob is the test's, before the check reads it.
    check = [i for i, ln in enumerate(lines) if " relay check " in ln]
    assert check, "step 3 ends with relay check"
    lines = [ln.replace(" -o root -g opmob", "").replace("/etc/opmob", str(etc)) for ln in lines]
    lines.insert(check[0], f"sed -i 's#/etc/opmob/#{etc}/#' {etc}/relay.toml")
    script = "\n".join(["set -eu", *lines])
    script = script.replace("/opt/opmob/.venv/bin/opmob", "\0OPMOB\0").replace("/opt/opmob", str(opt))
    script = script.replace("\0OPMOB\0", " ".join(map(shlex.quote, opmob)))
    shutil.copy2(export, etc.parent / "registry.json")
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, cwd=etc.parent, env=env, timeout=120
    )


def test_install_step_3_as_written_checks_a_sample_that_imports_the_registry(tmp_path: Path) -> None:
    """The sample imports the export step 3 installs (0640, group opmob), and check reads it."""
    cfg = tomllib.loads((BOARD / "relay.toml").read_text())
    assert cfg["registry"]["import"] == "/etc/opmob/registry.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'firmware'}:{ROOT / 'host_tools'}")
    etc = tmp_path / "etc-opmob"
    r = step_3(ROOT, etc, BOARD / "registry-example.json", [sys.executable, "-m", "opmob_host.cli"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": OK: relay relay-1@no" in r.stdout, r.stdout + r.stderr
    assert f"imports {etc / 'registry.json'} at every start" in r.stdout, r.stdout
    assert (etc / "registry.json").stat().st_mode & 0o777 == 0o640
    # The same export left open to every user is refused, with what to do.
    (etc / "registry.json").chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", "relay", "check", "--config", str(etc / "relay.toml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2 and f"run chmod 600 {etc / 'registry.json'}" in r.stderr, r.stderr
