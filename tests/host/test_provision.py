"""``opmob provision``, ``verify`` and ``registry export`` on a virtual device, from a copy of the
sample fleet (boards/fleet-example.toml)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from opmob.accessory.config import AccessoryConfig
from opmob.registry import Registry
from opmob.store import MemoryStore
from virtualdev import ROOT, Virtual, opmob, running

OLA = "ola.nordmann@no"


@pytest.fixture
def virtual(tmp_path: Path) -> Iterator[Virtual]:
    with running(tmp_path / "device") as v:
        r = opmob("deploy", "--port", v.port, "--board", "unix-sim")
        assert r.returncode == 0, r.stderr
        yield v


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """The sample fleet, with ola's and the defaults' board made the virtual one."""
    text = (ROOT / "boards" / "fleet-example.toml").read_text().replace('"esp32-s3-ptt"', '"unix-sim"')
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def inv(path: Path) -> dict[str, dict[str, object]]:
    return {d["identity"]: d for d in tomllib.loads(path.read_text())["devices"]}


def test_sample_fleet_is_valid_and_has_no_secrets() -> None:
    doc = tomllib.loads((ROOT / "boards" / "fleet-example.toml").read_text())
    assert all("secret" not in d for d in doc["devices"])
    r = opmob("registry", "export", "--inventory", "boards/fleet-example.toml", "--system", "no", "--partner")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["view"] == "partner"


def test_provision_verify_export(virtual: Virtual, fleet: Path, tmp_path: Path) -> None:
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0, r.stderr
    assert "provisioned" in r.stdout and "already" not in r.stdout
    rec = inv(fleet)[OLA]
    secret = str(rec["secret"])
    assert len(bytes.fromhex(secret)) == 16
    assert secret not in r.stdout + r.stderr
    assert stat.S_IMODE(fleet.stat().st_mode) == 0o600
    data = (virtual.state / "config.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == rec["config_sha256"]
    cfg = AccessoryConfig.from_dict(json.loads(data))
    assert cfg.identity == OLA and cfg.secret.hex() == secret
    assert [g["identity"] for g in cfg.talk_groups] == ["fire-oslo@no", "rescue-nordic@no"]
    assert cfg.talk_groups[0]["priority"] == 100 and cfg.floor_priority == 100

    # Idempotent: nothing written, the inventory unchanged to the byte.
    before = fleet.read_bytes()
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0 and "already provisioned" in r.stdout
    assert fleet.read_bytes() == before

    r = opmob("verify", "--port", virtual.port, "--inventory", str(fleet))
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("firmware       0.1.0", "board          unix-sim", f"identity       {OLA}", "PASS"):
        assert line in r.stdout
    assert str(rec["config_sha256"]) in r.stdout and secret not in r.stdout

    out = tmp_path / "registry.json"
    r = opmob("registry", "export", "--inventory", str(fleet), "--system", "no", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "kari.hansen@no left out" in r.stderr and secret not in r.stdout + r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    reg = Registry(MemoryStore(), "no")
    reg.load_export(json.loads(out.read_text()))
    assert reg.device(OLA).secret == bytes.fromhex(secret)
    assert set(reg.device(OLA).groups) == {"fire-oslo@no", "rescue-nordic@no", "police-ops@no"}
    r = opmob("registry", "export", "--inventory", str(fleet), "--system", "no", "--partner")
    assert r.returncode == 0 and "secret" not in r.stdout and OLA in r.stdout
    r = opmob("registry", "export", "--inventory", str(fleet), "--system", "no")
    assert r.returncode == 1 and "--out" in r.stderr and r.stdout == ""
    r = opmob("registry", "export", "--inventory", str(fleet), "--system", "se", "--partner")
    assert r.returncode == 1 and "not se" in r.stderr

    # Configuration changed by hand on the device: verify says so, provision mends it.
    (virtual.state / "config.json").write_bytes(
        data.replace(b'"floor_priority": 100', b'"floor_priority": 99')
    )
    r = opmob("verify", "--port", virtual.port, "--inventory", str(fleet))
    assert r.returncode == 1 and "differs" in r.stdout
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0 and (virtual.state / "config.json").read_bytes() == data


def test_errors_leave_nothing_half_written(virtual: Virtual, fleet: Path) -> None:
    def refused(*args: str, says: str) -> None:
        before = fleet.read_bytes()
        r = opmob("provision", "--inventory", str(fleet), *args)
        assert r.returncode == 1, r.stdout
        assert says in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert fleet.read_bytes() == before
        assert not (virtual.state / "config.json").exists()

    port = virtual.port
    refused("--device", OLA, "--port", "/dev/ttyNOPE0", says="does not exist")
    refused("--device", "kari.hansen@no", "--port", port, says="is a unix-sim; the inventory says kari")
    refused("--device", "someone@se", "--port", port, says="not a device identity of system no")
    refused(
        "--device", OLA, "--port", port, "--inventory", str(fleet.with_name("none.toml")), says="no such file"
    )

    good = fleet.read_text()
    fleet.write_text(
        good + f'\n[[devices]]\nidentity = "{OLA}"\nboard = "unix-sim"\ngroups = []\nceiling = 1\n'
    )
    refused("--device", OLA, "--port", port, says="duplicate identity")
    fleet.write_text(good.replace('policy = "open"', 'policy = "open"\ncolour = "red"'))
    refused("--device", OLA, "--port", port, says="groups[1].colour: unknown field")
    fleet.write_text(good.replace("[defaults]", "[defaults]\nbogus = 1"))
    refused("--device", OLA, "--port", port, says="defaults.bogus: unknown field")
    fleet.write_text(good + "\n[[devices]\n")
    refused("--device", OLA, "--port", port, says="not valid TOML")
    fleet.write_text(good)

    # The same hardware cannot be two devices, nor one identity two pieces of hardware.
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", port)
    assert r.returncode == 0, r.stderr
    config = (virtual.state / "config.json").read_bytes()
    before = fleet.read_bytes()
    r = opmob("provision", "--inventory", str(fleet), "--device", "new.one@no", "--port", port)
    assert r.returncode == 1 and "is ola.nordmann@no in the inventory" in r.stderr
    assert fleet.read_bytes() == before and (virtual.state / "config.json").read_bytes() == config
    (virtual.state / ".hwid").write_text("0123456789ab\n")  # another board on the same port
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", port)
    assert r.returncode == 1 and "duplicate identity" in r.stderr
    # --replace: the new hardware takes the identity over.
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", port, "--replace")
    assert r.returncode == 0, r.stderr
    assert inv(fleet)[OLA]["hardware_id"] == "v-0123456789ab"


def test_provision_killed_mid_write_leaves_old_or_new(virtual: Virtual, fleet: Path) -> None:
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0, r.stderr
    path = virtual.state / "config.json"
    old = path.read_bytes()
    text = fleet.read_text()
    fleet.write_text(text.replace("floor_priority = 100", "floor_priority = 120"))
    cmd = [sys.executable, "-m", "opmob_host.cli", "provision", "--inventory", str(fleet), "--device", OLA]
    cmd += ["--port", virtual.port]
    env = dict(os.environ, OPMOB_TEST_STEP_DELAY="0.05")  # slowed down: every step is hit
    t0 = time.monotonic()
    probe = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    duration = time.monotonic() - t0
    assert probe.returncode == 0, probe.stderr
    new = path.read_bytes()
    assert new != old
    configs = [text, text.replace("floor_priority = 100", "floor_priority = 120")]
    killed = mid_write = 0
    for round_ in range(14):
        # Each round provisions the other configuration, killed at a later point of the run.
        fleet.write_text(configs[round_ % 2])
        tmp = virtual.state / "config.json.tmp"
        tmp.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(duration * (0.1 + 0.85 * round_ / 13))
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        mid_write += tmp.exists()  # killed between the temporary file and the rename
        assert path.read_bytes() in (old, new), f"round {round_}: a mix of configurations"
        tomllib.loads(fleet.read_text())  # the inventory is whole too
    print(f"{killed} of 14 runs killed, {mid_write} with the temporary file written")
    assert killed >= 8 and mid_write >= 1
    # Running it again completes it, and the device answers.
    fleet.write_text(text)
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == old
    r = opmob("verify", "--port", virtual.port, "--inventory", str(fleet))
    assert r.returncode == 0, r.stdout + r.stderr
