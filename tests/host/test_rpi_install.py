"""The Raspberry Pi install steps of boards/rpi-relay/README.md, run as far as this machine allows
(issue 12): every Debian package step 1 names is a real package, installed here by the Makefile;
step 2 runs as written (``/opt/opmob`` moved into a temporary directory, the clone replaced by a
copy of the checkout); the relay it installs checks the sample configuration, and the systemd unit
starts the command step 2 installed. The users, /etc and systemd parts need root on a Pi.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from test_relay_samples import step_3
from test_wheel_install import _checkout, _clean_env

ROOT = Path(__file__).resolve().parents[2]
PI = ROOT / "boards" / "rpi-relay"
pytestmark = pytest.mark.slow


def _step(n: int) -> list[str]:
    """The shell lines of the README's install step ``n`` (its fenced sh block)."""
    text = (PI / "README.md").read_text()
    start = text.index(f"\n{n}. **")
    end = text.index(f"\n{n + 1}. **", start) if f"\n{n + 1}. **" in text else len(text)
    block = re.search(r"```sh\n(.*?)```", text[start:end], re.S)
    assert block, f"step {n} has no sh block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def _apt_packages() -> list[str]:
    (line,) = [ln for ln in _step(1) if ln.startswith("apt-get install")]
    return [w for w in shlex.split(line)[2:] if not w.startswith("-")]


def test_step_1_names_every_build_package_and_they_exist() -> None:
    pkgs = _apt_packages()
    for need in (
        "python3-venv",
        "python3-dev",
        "build-essential",
        "pkg-config",
        "libssl-dev",
        "libcodec2-dev",
    ):
        assert need in pkgs, (need, pkgs)
    make = (ROOT / "Makefile").read_text()
    apt = re.search(r"^APT_PACKAGES := (.*?)\n\n", make, re.S | re.M)
    assert apt is not None
    made = apt.group(1).replace("\\\n", " ").split()
    for p in pkgs:
        if p in ("python3", "git"):
            continue  # there on every machine that runs this
        assert p in made, f"{p}: not in the Makefile's APT_PACKAGES, so CI does not test it"
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        assert "install ok installed" in r.stdout, f"{p}: not installed here (make setup)"


def test_step_2_as_written_installs_a_relay_the_service_can_start(tmp_path: Path) -> None:
    opt = tmp_path / "opt" / "opmob"
    lines = _step(2)
    assert lines[0].startswith('git clone "$OPMOB_REPO" /opt/opmob'), lines[0]
    _checkout(opt)
    script = "\n".join(["set -eux", *lines[1:]]).replace("/opt/opmob", str(opt))
    r = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "opmob 0.1.0", r.stdout
    venv = opt / ".venv"
    built = list(venv.glob("lib/python3*/site-packages/opmob_c/_opmob_c*.so"))
    assert len(built) == 1, "OPMOB_C_EXT=require: the C extension is compiled"

    unit = (PI / "opmob-relay.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    exe, *args = shlex.split(exec_start.replace("/opt/opmob", str(opt)))
    assert Path(exe) == venv / "bin" / "opmob" and Path(exe).is_file(), exec_start
    assert args == ["relay", "run", "--config", "/etc/opmob/relay.toml"], args
    # Step 3 as written with the relay step 2 installed: the sample and the export it imports.
    etc = tmp_path / "etc"
    r = step_3(opt, etc, PI / "registry-example.json", [exe], _clean_env())
    assert r.returncode == 0 and ": OK: relay relay-1@no" in r.stdout, r.stdout + r.stderr
    assert f"imports {etc / 'registry.json'} at every start" in r.stdout, r.stdout
