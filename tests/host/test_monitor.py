"""``opmob monitor``: one frame (``--once``) of a live relay's status after a device registered;
the frame renderer on a busy status; a relay that cannot be reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opmob.device import DeviceSession
from opmob_host.monitor import render
from opmob_host.relay_server import Endpoint
from test_relay_process import (
    DEVICE,
    GROUP,
    arun,
    config,
    cpython_relay,
    private_export,
    register,
    secret_of,
    toml,
)
from test_relay_server import free_tcp_port
from virtualdev import opmob

pytestmark = pytest.mark.slow


def test_once_shows_a_live_relay(tmp_path: Path) -> None:
    status_port = free_tcp_port()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(toml(config(0, status_port, "state/registry.sqlite", private_export(tmp_path))))
    with cpython_relay(cfg) as (proc, lines):
        udp = int(lines.seen[-1].split("serving udp 127.0.0.1:")[1].split(",")[0])
        dev = DeviceSession(DEVICE, secret_of(DEVICE), ("127.0.0.1", udp), os.urandom, groups=[GROUP])

        async def main() -> None:
            async with Endpoint(dev) as ep:
                await register(dev, ep)

        arun(main())
        r = opmob("monitor", "--url", f"http://127.0.0.1:{status_port}", "--once")
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert "1 device(s), 1 group(s)" in out
        dev_line = next(line for line in out.splitlines() if line.startswith(DEVICE))
        assert "registered" in dev_line and GROUP in dev_line
        grp_line = next(line for line in out.splitlines() if line.startswith(GROUP))
        assert "G: Floor Idle" in grp_line
        assert "registrations" in out and "COUNTERS (not zero)" in out
        # What happened, from the relay's typed events (relay_events.py), not read from its state.
        recent = out.split("RECENT EVENTS", 1)[1].split("COUNTERS", 1)[0].splitlines()
        assert any(line.split()[1:3] == ["registered", DEVICE] for line in recent if line.strip()), recent
        assert any(line.split()[1:4] == ["affiliated", DEVICE, GROUP] for line in recent if line.strip()), (
            recent
        )
        # The live view redraws: two frames within a few seconds, then Ctrl-C ends it.
        live = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "monitor", "--url", f"http://127.0.0.1:{status_port}"]
            + ["--interval", "0.3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A test run started in the background (nohup ... &) inherits SIGINT ignored, and Python
            # then never raises KeyboardInterrupt: give the monitor the terminal's default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(2)
        live.send_signal(signal.SIGINT)
        stdout, _ = live.communicate(timeout=10)
        assert live.returncode == 130 and stdout.count("DEVICES") >= 2
        # The relay stops: the view keeps its last state, marked as not live, instead of blanking.
        live = subprocess.Popen(
            [sys.executable, "-m", "opmob_host.cli", "monitor", "--url", f"http://127.0.0.1:{status_port}"]
            + ["--interval", "0.3", "--timeout", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(1.5)
        proc.terminate()
        proc.wait(20)
        time.sleep(2)
        live.send_signal(signal.SIGINT)
        stdout, stderr = live.communicate(timeout=10)
        assert "Traceback" not in stderr, stderr
        last = stdout.rsplit("RELAY NOT ANSWERING since ", 1)
        assert len(last) == 2, stdout[-2000:]
        assert "it is not live" in last[1] and any(
            ln.startswith(DEVICE) and "registered" in ln for ln in last[1].splitlines()
        ), last[1]


def test_render_busy_status() -> None:
    doc = {
        "relay": "relay-1@no",
        "system": "no",
        "devices": [
            {
                "identity": "a@no",
                "addr": "10.0.0.2:5000",
                "state": "registered",
                "groups": ["g@no"],
                "talk_group": "g@no",
            }
        ],
        "groups": [
            {
                "identity": "g@no",
                "floor_state": "G: Floor Taken",
                "holder": "a@no",
                "queue": [["b@no", 100]],
                "emergency": True,
                "imminent_peril": False,
                "members": [["a@no", "U: has permission"], ["b@no", "U: queued"]],
            }
        ],
        "stunned": ["c@no"],
        "killed": [],
        "counters": {"rx_datagrams": 12, "floor_in": 0},
    }
    frame = render(doc, "http://x/status", "12:00:00")
    assert "relay relay-1@no  system no" in frame
    assert "g@no   G: Floor Taken  a@no    b@no(100)  2        emergency" in frame
    assert "STUNNED: c@no" in frame and "KILLED" not in frame
    assert "rx_datagrams" in frame and "floor_in" not in frame


def test_unreachable_relay() -> None:
    r = opmob("monitor", "--url", f"http://127.0.0.1:{free_tcp_port()}", "--once", "--timeout", "1")
    assert r.returncode == 1 and "cannot reach the relay" in r.stderr and "Traceback" not in r.stderr
    r = opmob("monitor", "--url", "ftp://x", "--once")
    assert r.returncode == 2 and "expected the status endpoint" in r.stderr


def test_piped_into_head_it_stops_quietly() -> None:
    url = f"http://127.0.0.1:{free_tcp_port()}"
    cmd = f"{sys.executable} -m opmob_host.cli monitor --url {url} --interval 0.1 --timeout 0.2 | head -n 1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stdout
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
