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
import threading
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
    assert not fleet.with_name(fleet.name + ".lock").exists(), "provision left its lock file"
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
        assert not fleet.with_name(fleet.name + ".lock").exists(), "a refusal left its lock file"

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


def test_inventory_with_secrets_open_to_others_is_refused(
    virtual: Virtual, fleet: Path, tmp_path: Path
) -> None:
    """As ssh with a private key: every command that reads an inventory holding secrets refuses one
    that other users can read, says how to mend it, and changes nothing."""
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0, r.stderr
    secret = str(inv(fleet)[OLA]["secret"])
    fleet.chmod(0o644)
    before = fleet.read_bytes()
    out = tmp_path / "registry.json"
    for cmd in (
        ("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port),
        ("provision", "--inventory", str(fleet), "--device", "new.one@no", "--port", virtual.port),
        ("verify", "--port", virtual.port, "--inventory", str(fleet)),
        ("registry", "export", "--inventory", str(fleet), "--system", "no", "--out", str(out)),
        ("registry", "export", "--inventory", str(fleet), "--system", "no", "--partner"),
    ):
        r = opmob(*cmd)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert f"inventory {fleet} holds device secrets but is open to other users (mode 0644)" in r.stderr
        assert f"run chmod 600 {fleet}" in r.stderr and secret not in r.stdout + r.stderr
        assert stat.S_IMODE(fleet.stat().st_mode) == 0o644 and fleet.read_bytes() == before
    assert not out.exists()
    fleet.chmod(0o600)
    r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", virtual.port)
    assert r.returncode == 0 and "already provisioned" in r.stdout, r.stderr
    # An inventory without secrets (the sample, a new fleet) may be readable: there is nothing to keep.
    assert stat.S_IMODE((ROOT / "boards" / "fleet-example.toml").stat().st_mode) & 0o044


def test_device_gone_mid_provision_then_export_leaves_it_out(fleet: Path, tmp_path: Path) -> None:
    """The board unplugged (the virtual device killed) once its secret is in the inventory but before
    its configuration is recorded: one sentence and exit 1; the registry export leaves the device
    out and says how to complete it (--strict: an error); provisioning it again completes it."""
    state = tmp_path / "device"
    out = tmp_path / "registry.json"
    with running(state) as v:
        assert opmob("deploy", "--port", v.port, "--board", "unix-sim").returncode == 0
        cmd = [sys.executable, "-m", "opmob_host.cli", "provision", "--inventory", str(fleet)]
        cmd += ["--device", OLA, "--port", v.port]
        env = dict(os.environ, OPMOB_TEST_STEP_DELAY="0.3")  # slowed down: killed between two steps
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 30
        while "secret" not in inv(fleet).get(OLA, {}) and time.monotonic() < deadline:
            time.sleep(0.02)
        v.proc.kill()
        v.proc.wait()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stdout + stderr
    assert f"the device on {v.port} stopped answering (unplugged or reset?) during " in stderr, stderr
    assert "run the same command again" in stderr and "Traceback" not in stderr
    rec = inv(fleet)[OLA]
    secret = str(rec["secret"])
    assert "config_sha256" not in rec and "hardware_id" not in rec
    assert not fleet.with_name(fleet.name + ".lock").exists()
    if (state / "config.json").exists():  # whole, or not there
        assert json.loads((state / "config.json").read_text())["identity"] == OLA

    r = opmob("registry", "export", "--inventory", str(fleet), "--system", "no", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (
        f"{OLA} left out: its provisioning was not completed (no configuration recorded); to complete it: "
        in r.stderr
    )
    assert f"opmob provision --inventory {fleet} --device {OLA} --port PORT" in r.stderr
    assert "0 devices, " in r.stdout and "; 2 left out (above)" in r.stdout, r.stdout
    assert secret not in r.stdout + r.stderr + out.read_text()
    assert OLA not in [d["identity"] for d in json.loads(out.read_text())["devices"]]
    strict = tmp_path / "strict.json"
    r = opmob(
        "registry", "export", "--inventory", str(fleet), "--system", "no", "--out", str(strict), "--strict"
    )
    assert (
        r.returncode == 1 and "--strict: 2 device(s) not completely provisioned; nothing written" in r.stderr
    )
    assert not strict.exists() and secret not in r.stdout + r.stderr

    with running(state) as v:  # plugged in again
        r = opmob("provision", "--inventory", str(fleet), "--device", OLA, "--port", v.port)
        assert r.returncode == 0, r.stderr
    assert inv(fleet)[OLA]["secret"] == secret and "config_sha256" in inv(fleet)[OLA]
    r = opmob("registry", "export", "--inventory", str(fleet), "--system", "no", "--out", str(out))
    assert r.returncode == 0 and f"{OLA} left out" not in r.stderr
    assert OLA in [d["identity"] for d in json.loads(out.read_text())["devices"]]


def test_concurrent_provisions_on_one_inventory_take_turns(fleet: Path, tmp_path: Path) -> None:
    """Two provisions of two devices against one inventory at once: the second waits for the
    first's lock, both devices end up in the inventory, and no lock file is left."""
    with running(tmp_path / "a") as a, running(tmp_path / "b") as b:
        for v in (a, b):
            assert opmob("deploy", "--port", v.port, "--board", "unix-sim").returncode == 0
        env = dict(os.environ, OPMOB_TEST_STEP_DELAY="0.05")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "opmob_host.cli", "provision", "--inventory", str(fleet)]
                + ["--device", ident, "--port", v.port],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for ident, v in ((OLA, a), ("new.one@no", b))
        ]
        results = [p.communicate(timeout=120) for p in procs]
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stdout + stderr
    assert sum("in use by another opmob: waiting" in err for _, err in results) == 1, results
    devices = inv(fleet)
    for ident in (OLA, "new.one@no"):
        assert "secret" in devices[ident] and "config_sha256" in devices[ident], ident
    assert not fleet.with_name(fleet.name + ".lock").exists()


def test_lock_is_never_left_behind_and_never_held_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock file goes away with the lock; a lock taken on a file that another opmob removed (or
    replaced) meanwhile is not a lock: it is taken again on the file now at the path."""
    from opmob_host import inventory

    path = tmp_path / "fleet.toml"
    lock = tmp_path / "fleet.toml.lock"
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with inventory.locked(path):
            order.append("first in")
            inside.set()
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with inventory.locked(path):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert "in use by another opmob: waiting" in capsys.readouterr().err
    assert not lock.exists()

    real = inventory.fcntl.flock
    calls: list[int] = []

    def flock(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # between our open and our lock, another opmob finished and a third began
            lock.unlink()
            lock.write_text("")
        real(fd, op)

    monkeypatch.setattr(inventory.fcntl, "flock", flock)
    with inventory.locked(path):
        assert len(calls) == 2  # the first lock was on a removed file: taken again
        assert lock.exists()
    assert not lock.exists()
