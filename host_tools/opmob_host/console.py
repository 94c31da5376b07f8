"""``opmob console [-p PORT]`` and ``opmob reset [-p PORT]``: the device's console (mpremote's
terminal, without a soft reset, so a running app keeps running and its output shows), and a hard
reset (``machine.reset()``: boot.py, then main.py starts the app, as at power-on)."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from typing import Any

from opmob_host import portsel
from opmob_host.devlink import LINK_ERRORS, TechnicianError, _port_problem, check_port


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "console",
        help="the device's serial console (mpremote's terminal; Ctrl-] leaves it)",
        description="Open the device's console without resetting it: a running app keeps running and "
        "what it prints shows; Ctrl-C there stops the app and gives its REPL. Ctrl-] or Ctrl-x leaves.",
    )
    portsel.add_port_argument(c)
    r = sub.add_parser(
        "reset",
        help="reset the device (as its reset button): the app starts again",
        description="Reset the device through its REPL (machine.reset()): boot.py, then main.py starts "
        "the app with its deployed firmware and provisioned configuration, as at power-on.",
    )
    portsel.add_port_argument(r)


def reset(port: str) -> None:
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    check_port(port)
    try:
        t = SerialTransport(port, baudrate=115200, timeout=3)
    except TransportError:
        raise TechnicianError(_port_problem(port)) from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            t.enter_raw_repl(soft_reset=False, timeout_overall=5)
            # No answer comes back: the chip resets while the command runs.
            t.exec_raw_no_follow("import machine\nmachine.reset()")
    except (TransportError, *LINK_ERRORS):
        raise TechnicianError(
            f"the device on {port} does not answer: no MicroPython REPL there, or the wrong port; "
            "press its reset button instead"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            t.close()


def run(args: argparse.Namespace) -> int:
    name = f"opmob {args.command}"
    try:
        port = portsel.device_port(args)
        if args.command == "reset":
            reset(port)
            print(f"{name}: {port} reset: boot.py, then main.py starts the app", flush=True)
            return 0
        check_port(port)
    except TechnicianError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    print(f"{name}: {port}; Ctrl-] leaves the console", file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", "repl"]).returncode
