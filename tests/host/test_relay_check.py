"""``opmob relay check`` refuses what ``opmob relay run`` would refuse (issue 12): a registry export
named by ``[registry] import`` that is missing, not JSON, or has a bad record fails the check with
exit 2 and a sentence naming the file; a good one passes and is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from opmob_host.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "boards" / "rpi-relay" / "registry-example.json"


def _config(tmp_path: Path) -> Path:
    text = (ROOT / "boards" / "rpi-relay" / "relay.toml").read_text()
    text = text.replace('path = "/var/lib/opmob/registry.sqlite"', 'path = "state/registry.sqlite"')
    text = text.replace('import = "/etc/opmob/registry.json"', 'import = "registry.json"')
    cfg = tmp_path / "relay.toml"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read the registry export (No such file or directory)"),
        ("{not json", "the registry export is not valid JSON"),
        ('{"format": "something else"}', "the relay would refuse to start"),
    ],
)
def test_check_refuses_an_import_that_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, says: str
) -> None:
    cfg = _config(tmp_path)
    if content is not None:
        (tmp_path / "registry.json").write_text(content)
    assert main(["relay", "check", "--config", str(cfg)]) == 2
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'registry.json'}: " in err and says in err, err
    assert "OK" not in out and "Traceback" not in err
    assert not (tmp_path / "state").exists(), "a check stores nothing"


def test_check_passes_a_good_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    shutil.copy2(EXAMPLE, tmp_path / "registry.json")
    (tmp_path / "registry.json").chmod(0o600)
    assert json.loads(EXAMPLE.read_text())["system"] == "no"
    assert main(["relay", "check", "--config", str(cfg)]) == 0
    out, _ = capsys.readouterr()
    assert ": OK: relay relay-1@no" in out and f"imports {tmp_path / 'registry.json'} at every start" in out


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_export_with_secrets_open_to_every_user_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """It holds device secrets: check and run refuse it (exit 2, nothing stored), saying what to do,
    until it is 0600 (or 0640, group opmob); a partner view (no secrets) may be read by all."""
    cfg = _config(tmp_path)
    export = tmp_path / "registry.json"
    shutil.copy2(EXAMPLE, export)
    for mode in (0o644, 0o604, 0o666):
        export.chmod(mode)
        assert main(["relay", command, "--config", str(cfg)]) == 2
        out, err = capsys.readouterr()
        assert f"{export} holds device secrets but is open to every user (mode {mode:04o})" in err, err
        assert f"run chmod 600 {export}" in err and "Traceback" not in err
        assert "OK" not in out and not (tmp_path / "state").exists(), "refused before anything is stored"
    if command == "check":
        for mode in (0o600, 0o640):
            export.chmod(mode)
            assert main(["relay", "check", "--config", str(cfg)]) == 0, capsys.readouterr()
        doc = json.loads(EXAMPLE.read_text())
        for d in doc["devices"]:
            d.pop("secret", None)
            d.pop("vid", None)
            d.pop("cseq", None)
        doc["view"] = "partner"
        export.write_text(json.dumps(doc))
        export.chmod(0o644)
        assert main(["relay", "check", "--config", str(cfg)]) == 0, capsys.readouterr()
