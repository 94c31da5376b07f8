"""Acceptance (issue 6): two virtual devices deployed, provisioned and verified with ``opmob``
(through the real mpremote transport and pyserial), then a group call between the configurations
they were given, through a relay loaded from ``opmob registry export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Accessory, Fleet
from virtualdev import opmob, running

pytestmark = pytest.mark.slow
GROUP = "fire-1@no"


class ExportedFleet(Fleet):
    """A relay process that loads the registry written by ``opmob registry export``."""

    def __init__(self, workdir: Path, export: dict[str, Any]) -> None:
        super().__init__(workdir, [d["identity"] for d in export["devices"]], [GROUP])
        self._export = export

    def export(self) -> dict[str, Any]:
        return self._export


def test_deploy_provision_verify_then_group_call(tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    probe = Fleet(tmp_path / "probe", ["x@no"], [GROUP])  # free UDP port and SSID for the relay
    inv = tmp_path / "fleet.toml"
    inv.write_text(
        'format = "opmob-fleet"\nversion = 1\nsystem = "no"\n\n'
        '[defaults]\nboard = "unix-sim"\ngroups = ["fire-1@no"]\nceiling = 100\n\n'
        f'[[relays]]\nidentity = "relay-1@no"\nhost = "127.0.0.1"\nport = {probe.udp}\nssid = "{probe.ssid(0)}"\n\n'
        '[[groups]]\nidentity = "fire-1@no"\npolicy = "members"\npriority = 100\n'
    )
    configs = {}
    with running(tmp_path / "dev-a") as a, running(tmp_path / "dev-b") as b:
        for ident, dev in (("alice@no", a), ("bob@no", b)):
            r = opmob("deploy", "--port", dev.port, "--board", "unix-sim")
            assert r.returncode == 0, r.stderr
            r = opmob("provision", "--inventory", str(inv), "--device", ident, "--port", dev.port)
            assert r.returncode == 0, r.stderr
            r = opmob("verify", "--port", dev.port, "--inventory", str(inv))
            assert r.returncode == 0 and f"identity       {ident}" in r.stdout, r.stdout + r.stderr
            r = dev.mpremote("fs", "cat", ":config.json")
            assert r.returncode == 0, r.stderr
            configs[ident] = r.stdout
    out = tmp_path / "registry.json"
    r = opmob("registry", "export", "--inventory", str(inv), "--system", "no", "--out", str(out))
    assert r.returncode == 0, r.stderr

    fleet = ExportedFleet(tmp_path / "run", json.loads(out.read_text()))
    fleet.udps = fleet.udps[:0] + [probe.udp]
    fleet.udp = probe.udp
    with fleet.relay():
        alice = Accessory("alice@no", fleet.dir, None, config_text=configs["alice@no"], mic=SPEECH)
        bob = Accessory("bob@no", fleet.dir, None, config_text=configs["bob@no"])
        with alice.start(), bob.start():
            for acc in (alice, bob):
                acc.wait_last("ptt", "U: has no permission", 20)
            alice.command("press ptt")
            alice.wait_for("tone talk_permit")
            bob.wait_for(f"rx {GROUP} alice@no")
            alice.command("release ptt")
            bob.wait_for("rx none")
