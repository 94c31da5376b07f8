"""Hardware in the loop: the device acceptance suite on one board (docs/technician.md).

    pytest tests/hil --hil-port /dev/ttyACM0 --hil-board esp32-s3-ptt [--hil-firmware firmware.bin]

In order: flash (only with ``--hil-firmware``), deploy (twice: the second copies nothing), provision
(twice: the second changes nothing), verify against the inventory (its self-test builds each of the
board's peripherals through the firmware's hardware layer: every one the board declares must have
answered), then functional checks run on the
device by the firmware deployed to it (DVI4 codec, SRTP, board definition and configuration), whose
results must equal CPython's for the same code. Without ``--hil-port`` every test skips and says
why. Pointed at an ``opmob virtual`` device (``--hil-board unix-sim``) it runs the same way, which
is how ``make test`` proves the suite itself (tests/host/test_hil_suite.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = "hil-device@hil"

FUNCTIONAL = """
import json, binascii, hashlib, struct
from opmob import dvi4, srtp
def h(b):
    return binascii.hexlify(hashlib.sha256(bytes(b)).digest()).decode()
r = {}
pcm = struct.pack('<160h', *[(i * 397) % 20000 - 10000 for i in range(160)])
p, st = dvi4.encode_frame(pcm)
r['dvi4'] = [h(p), h(dvi4.decode_frame(p)), list(st)]
rtp = bytes([0x80, 5, 0, 1, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78]) + bytes(p)
pk = srtp.SrtpSession(bytes(range(16)), bytes(range(14))).protect(rtp)
r['srtp'] = h(pk)
r['srtp_roundtrip'] = bytes(srtp.SrtpSession(bytes(range(16)), bytes(range(14))).unprotect(pk)) == rtp
print(json.dumps(r))
"""

DEVICE_ONLY = """
import json
from opmob.accessory import board, config
b = board.load('/board.json')
c = config.load('/config.json')
print(json.dumps({'board': b.name, 'identity': c.identity, 'groups': len(c.talk_groups), 'relays': len(c.relays)}))
"""


@pytest.fixture(scope="module")
def hil(request: pytest.FixtureRequest) -> tuple[str, str]:
    port = request.config.getoption("--hil-port")
    board = request.config.getoption("--hil-board")
    if not port:
        pytest.skip("no board attached: pass --hil-port PORT --hil-board BOARD (docs/technician.md)")
    if not board:
        pytest.fail("--hil-port needs --hil-board (a name from boards/, e.g. esp32-s3-ptt)")
    return str(port), str(board)


@pytest.fixture(scope="module")
def inventory(hil: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    inv = tmp_path_factory.mktemp("hil") / "fleet.toml"
    inv.write_text(
        'format = "opmob-fleet"\nversion = 1\nsystem = "hil"\n\n'
        f'[defaults]\nboard = "{hil[1]}"\ngroups = ["bench-1@hil"]\nceiling = 100\n\n'
        '[[relays]]\nidentity = "relay-1@hil"\nhost = "127.0.0.1"\nport = 7777\nssid = "opmob-hil"\n\n'
        '[[groups]]\nidentity = "bench-1@hil"\npolicy = "members"\npriority = 100\n'
    )
    return inv


def opmob(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opmob_host.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def on_device(port: str, code: str) -> object:
    from opmob_host.devlink import connect

    with connect(port) as dev:
        out = dev.exec(code).decode().strip().splitlines()
    return json.loads(out[-1])


def test_1_flash(hil: tuple[str, str], request: pytest.FixtureRequest) -> None:
    port, board = hil
    firmware = request.config.getoption("--hil-firmware")
    if not firmware:
        pytest.skip("no --hil-firmware: the board keeps the MicroPython it has")
    if board == "unix-sim":
        pytest.skip("a unix-sim device is not flashed")
    r = opmob("flash", "--board", board, "--port", port, "--firmware", str(firmware))
    assert r.returncode == 0, r.stdout + r.stderr
    from opmob_host.devlink import TechnicianError, connect

    deadline = time.monotonic() + 30  # MicroPython's first boot formats its file system
    while True:
        try:
            with connect(port):
                break
        except TechnicianError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_2_deploy(hil: tuple[str, str]) -> None:
    port, board = hil
    r = opmob("deploy", "--port", port, "--board", board)
    assert r.returncode == 0, r.stdout + r.stderr
    r = opmob("deploy", "--port", port, "--board", board)
    assert r.returncode == 0 and "0 file(s) copied, 0 removed" in r.stdout, r.stdout + r.stderr


def test_3_provision(hil: tuple[str, str], inventory: Path) -> None:
    port, _ = hil
    for _ in range(2):  # idempotent: the second run changes nothing
        r = opmob("provision", "--inventory", str(inventory), "--device", IDENTITY, "--port", port)
        assert r.returncode == 0, r.stdout + r.stderr
    assert inventory.stat().st_mode & 0o777 == 0o600


def test_4_verify(hil: tuple[str, str], inventory: Path) -> None:
    port, board = hil
    r = opmob("verify", "--port", port, "--inventory", str(inventory))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"identity       {IDENTITY}" in r.stdout and f"board          {board}" in r.stdout
    assert "opmob verify: PASS" in r.stdout
    # The board's own peripherals, through the firmware's hardware layer: each one the board
    # definition declares was built and answered (buttons, LEDs, battery, I2S mic and speaker, WiFi).
    checked = {line.split()[1].rstrip(":") for line in r.stdout.splitlines() if line.startswith("self-test")}
    caps = json.loads((ROOT / "boards" / f"{board}.json").read_text()).get("capabilities", [])
    for cap in ("leds", "battery", "mic", "speaker", "wifi"):
        if cap in caps:
            assert cap in checked, f"{cap} not checked by verify:\n{r.stdout}"


def test_5_functional(hil: tuple[str, str]) -> None:
    port, board = hil
    sys.path.insert(0, str(ROOT / "firmware"))
    try:
        ns: dict[str, object] = {}
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(FUNCTIONAL, ns)  # the same code under CPython, the reference
        want = json.loads(buf.getvalue().strip().splitlines()[-1])
    finally:
        sys.path.remove(str(ROOT / "firmware"))
    assert want["srtp_roundtrip"] is True
    assert on_device(port, FUNCTIONAL) == want
    assert on_device(port, DEVICE_ONLY) == {"board": board, "identity": IDENTITY, "groups": 1, "relays": 1}
