"""Acceptance (issue 6): two virtual devices are deployed, provisioned and verified with ``opmob``
(through the real mpremote transport and pyserial), then make a group call through a relay loaded
from ``opmob registry export``: the call is made by the firmware running in the virtual devices.

After provisioning, each device is soft-reset from its friendly REPL over pyserial (Ctrl-C, Ctrl-B,
Ctrl-D, as a technician in a serial terminal does), so its ``/main.py`` starts the deployed
firmware with the provisioned configuration and the sim wiring given to ``opmob virtual`` (alice's
microphone plays recorded speech; bob's WiFi comes from a scenario file; the control channels are
free ports ``opmob virtual`` printed). The test then drives the call through the control
channels, compares bob's speaker file (in his device's file system) with the speech, checks that
``opmob verify`` still passes on the running devices (its Ctrl-C stops the app), and that no
console and no ``opmob`` output ever showed a secret.

Threshold: normalised cross-correlation of the speech with bob's speaker, median of 0.5 s segments
(vaccessory.segment_ncc, as tests/host/test_accessory_voice.py): DVI4 both ways and no loss on
loopback give about 0.99; 0.9 is required.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import serial
from opmob_host.vaccessory import MICROPYTHON, SPEECH, Attached, Fleet, segment_ncc
from virtualdev import Virtual, opmob, running, write_inventory

pytestmark = pytest.mark.slow
GROUP = "fire-1@no"
NCC_MIN = 0.9
BOOT_S = 30.0  # from the soft reset to the firmware's "on board" console line


class ExportedFleet(Fleet):
    """A relay process that loads the registry written by ``opmob registry export`` (as written)."""

    def __init__(self, workdir: Path, identities: list[str]) -> None:
        super().__init__(workdir, identities, [GROUP])
        self.export_file: Path | None = None

    def export(self) -> dict[str, Any]:
        assert self.export_file is not None, "run opmob registry export first"
        doc: dict[str, Any] = json.loads(self.export_file.read_text())
        return doc

    def relay_toml(self, i: int = 0) -> Path:
        path = super().relay_toml(i)
        assert self.export_file is not None
        (self.dir / "registry.json").write_bytes(self.export_file.read_bytes())
        (self.dir / "registry.json").chmod(0o600)
        return path


class Console:
    """A device's serial console over pyserial: everything it prints, kept, read in a thread."""

    def __init__(self, name: str, port: str) -> None:
        self.name = name
        self.serial = serial.Serial(port, timeout=0.1)
        self.data = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.serial.read(4096)
            except (serial.SerialException, OSError):
                return
            if chunk:
                with self._lock:
                    self.data += chunk

    def write(self, data: bytes) -> None:
        self.serial.write(data)
        self.serial.flush()

    def text(self) -> str:
        with self._lock:
            return self.data.decode(errors="replace")

    def wait_for(self, marker: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while marker not in self.text():
            if time.monotonic() > end:
                raise AssertionError(
                    f"{self.name}: the console did not print {marker!r} within {timeout} s:\n{self.text()[-3000:]}"
                )
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.serial.close()


def checked(r: subprocess.CompletedProcess[str], outputs: list[str]) -> subprocess.CompletedProcess[str]:
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_deploy_provision_verify_then_group_call_on_the_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    if not SPEECH.exists():
        pytest.fail(f"{SPEECH} missing: install Debian's codec2-examples (make setup)")
    t_start = time.monotonic()
    fleet = ExportedFleet(tmp_path / "relay", ["alice@no", "bob@no"])  # a free UDP port, the SSID
    inv = write_inventory(tmp_path / "fleet.toml", fleet.udp, fleet.ssid(0))
    scenario = tmp_path / "bob-wifi.json"
    scenario.write_text(json.dumps({"networks": [{"ssid": fleet.ssid(0), "rssi": -60}]}))
    outputs: list[str] = []  # every opmob command's output: none may show a secret
    secrets: dict[str, str] = {}

    with ExitStack() as stack:
        devs: dict[str, Virtual] = {
            "alice@no": stack.enter_context(running(tmp_path / "dev-a", "--mic", str(SPEECH))),
            "bob@no": stack.enter_context(running(tmp_path / "dev-b", "--wifi-scenario", str(scenario))),
        }
        assert devs["alice@no"].control_port != devs["bob@no"].control_port
        for ident, dev in devs.items():
            checked(opmob("deploy", "--port", dev.port, "--board", "unix-sim"), outputs)
            checked(
                opmob("provision", "--inventory", str(inv), "--device", ident, "--port", dev.port), outputs
            )
            r = checked(opmob("verify", "--port", dev.port, "--inventory", str(inv)), outputs)
            assert f"identity       {ident}" in r.stdout and "opmob verify: PASS" in r.stdout, r.stdout
            r = dev.mpremote("fs", "cat", ":config.json")
            assert r.returncode == 0, r.stderr
            secrets[ident] = json.loads(r.stdout)["secret"]
        export = tmp_path / "registry.json"
        checked(
            opmob("registry", "export", "--inventory", str(inv), "--system", "no", "--out", str(export)),
            outputs,
        )
        fleet.export_file = export
        t_provisioned = time.monotonic()

        stack.enter_context(fleet.relay())
        consoles: dict[str, Console] = {}
        acc: dict[str, Attached] = {}
        for ident, dev in devs.items():
            con = consoles[ident] = Console(ident, dev.port)
            stack.callback(con.close)
            # Ctrl-C: nothing running; Ctrl-B: the friendly REPL; Ctrl-D there: a soft reset that
            # runs /boot.py then /main.py (a raw-REPL soft reset, mpremote's, runs boot.py only).
            con.write(b"\x03\x02\x04")
            con.wait_for("MPY: soft reboot", 10)
            con.wait_for(f"opmob accessory: {ident} on board unix-sim, talk group {GROUP}", BOOT_S)
            a = acc[ident] = Attached(ident, dev.control_port, dev.state / "speaker.wav", con.text)
            stack.callback(a.stop)
            a.start(BOOT_S)
        alice, bob = acc["alice@no"], acc["bob@no"]
        for a in (alice, bob):
            a.wait_last("ptt", "U: has no permission", 20)  # registered and affiliated, floor idle
            a.wait_last("led", "registered")
        for ident, con in consoles.items():
            assert f"sim wiring /.sim.json: control_port {devs[ident].control_port}" in con.text(), con.text()
        t_registered = time.monotonic()

        alice.command("press ptt")
        alice.wait_for("tone talk_permit")
        mic_start = alice.wait_for("mic start").text
        bob.wait_for(f"rx {GROUP} alice@no")
        bob.wait_last("led", "receiving")
        mic_end = alice.wait_for("mic end", 15).text  # all of the speech file spoken
        alice.command("release ptt")
        alice.wait_for("mic stop")
        bob.wait_for("rx none", 10)
        bob.wait_last("led", "registered", 10)
        time.sleep(0.3)  # the jitter buffer's tail
        bob_t0, bob_pcm = bob.speaker_pcm()
        t_call = time.monotonic()
        for a in (alice, bob):
            a.stop()
        console_text = {}
        for ident, con in consoles.items():
            con.close()  # the port is mpremote's again
            console_text[ident] = con.text()

        # The running firmware is stopped by verify's Ctrl-C; the device answers as before.
        for ident, dev in devs.items():
            r = checked(opmob("verify", "--port", dev.port, "--inventory", str(inv)), outputs)
            assert f"identity       {ident}" in r.stdout and "opmob verify: PASS" in r.stdout, r.stdout

    source = SPEECH.read_bytes()[2 * int(mic_start.split()[2]) : 2 * int(mic_end.split()[2])]
    assert len(source) >= 2 * 8000 * 2, "alice spoke at least 2 s"
    lag, gncc, ncc = segment_ncc(source, bob_pcm)
    assert ncc >= NCC_MIN, f"bob: NCC {ncc:.3f} < {NCC_MIN} (one alignment: {gncc:.3f})"
    delay_ms = (bob_t0 + lag / 8000 - float(mic_start.split()[3])) * 1000
    assert 0 < delay_ms < 1000, delay_ms

    for ident, text in console_text.items():
        for other, secret in secrets.items():
            assert secret not in text, f"{ident}'s console printed {other}'s secret"
    for out in outputs:
        for secret in secrets.values():
            assert secret not in out, "an opmob command printed a secret"
    assert "Traceback" not in "".join(console_text.values()), console_text
    with capsys.disabled():
        print(
            f"\n  technician flow: deploy+provision+verify x2 and export {t_provisioned - t_start:.1f} s; "
            f"soft reset to both registered {t_registered - t_provisioned:.1f} s; call {t_call - t_registered:.1f} s; "
            f"bob NCC {ncc:.3f} (one alignment {gncc:.3f}), mouth-to-ear {delay_ms:.0f} ms"
        )


def test_mpremote_reset_starts_the_provisioned_firmware_with_its_wiring(tmp_path: Path) -> None:
    """A technician's way on a board after provisioning, ``mpremote reset`` (``machine.reset()``), is
    a power cycle on a virtual device too: boot.py, then main.py runs the firmware, which serves
    the control port and writes the speaker file that ``opmob virtual`` was given."""
    if not MICROPYTHON.exists():
        pytest.fail("MicroPython unix port not installed: run `make setup`")
    inv = write_inventory(tmp_path / "fleet.toml")
    speaker = tmp_path / "out" / "ada.wav"
    speaker.parent.mkdir()
    with running(tmp_path / "dev", "--speaker", str(speaker)) as dev:
        assert opmob("deploy", "--port", dev.port, "--board", "unix-sim").returncode == 0
        r = opmob("provision", "--inventory", str(inv), "--device", "ada@no", "--port", dev.port)
        assert r.returncode == 0, r.stderr
        r = dev.mpremote("soft-reset")  # a raw-REPL soft reset: boot.py only, as on a board
        assert r.returncode == 0, r.stderr
        with pytest.raises(AssertionError, match="no control channel"):
            Attached("ada@no", dev.control_port, speaker).start(1.0)
        r = dev.mpremote("reset")
        assert r.returncode == 0, r.stderr
        with Attached("ada@no", dev.control_port, speaker).start(BOOT_S) as ada:
            ada.wait_for("hello unix-sim ada@no running")
            t0, pcm = ada.speaker_pcm()
            assert t0 > 0 and len(pcm) > 0  # the firmware plays (silence) into the host file
        r = opmob("verify", "--port", dev.port)  # its Ctrl-C stops the firmware
        assert r.returncode == 0 and "opmob verify: PASS" in r.stdout, r.stdout + r.stderr


def test_virtual_wiring_options(tmp_path: Path) -> None:
    """``opmob virtual``'s sim wiring: /.sim.json and /.sim/ links rewritten at each start (nothing
    kept from the last one), a fixed or a free control port, mistakes refused before it starts."""
    state = tmp_path / "dev"
    mic = tmp_path / "speech.wav"
    mic.write_bytes(b"")
    with running(state, "--control-port", "0", "--mic", str(mic), "--battery-mv", "3600") as dev:
        doc = json.loads((state / ".sim.json").read_text())
        assert doc == {"control_port": dev.control_port, "mic": "/.sim/mic.wav", "battery_mv": 3600}
        assert (state / ".sim" / "mic.wav").resolve() == mic.resolve()
        r = dev.mpremote("exec", "print(open('/.sim.json').read() == open('.sim.json').read())")
        assert r.stdout.strip() == "True", r.stdout + r.stderr  # the firmware reads it there
    with running(state, "--control-port", str(dev.control_port)) as dev2:
        assert dev2.control_port == dev.control_port
        assert json.loads((state / ".sim.json").read_text()) == {"control_port": dev.control_port}
        assert not (state / ".sim" / "mic.wav").exists()
    for bad, says in (
        (["--mic", str(tmp_path / "none.raw")], "--mic"),
        (["--speaker", str(tmp_path / "no" / "dir.wav")], "--speaker"),
        (["--wifi-scenario", str(mic)], "--wifi-scenario"),
        (["--control-port", "70000"], "--control-port"),
        (["--battery-mv", "-1"], "--battery-mv"),
    ):
        r = opmob("virtual", "--state", str(state), *bad, timeout=30)
        assert r.returncode == 2 and says in r.stderr and r.stdout == "", (bad, r.stdout, r.stderr)
