"""Which serial port a device command uses, as esptool and mpremote choose it:

1. ``-p PORT`` / ``--port PORT`` on the command line;
2. else the ``OPMOB_PORT`` environment variable;
3. else automatically: the USB serial ports pyserial lists; one is taken as it is, several are
   asked (a MicroPython REPL, for ``--port`` of deploy/provision/verify; an Espressif bootloader,
   for flash) and the one that answers is taken. None, or more than one answering, is an error
   that lists them, so a command never talks to a device the technician did not mean.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from opmob_host.devlink import TechnicianError

ENV = "OPMOB_PORT"


def add_port_argument(p: argparse.ArgumentParser, what: str = "the device's serial port") -> None:
    p.add_argument(
        "-p",
        "--port",
        help=f"{what} (default: ${ENV}, else the one USB serial device that answers; opmob ports lists them)",
    )


def usb_ports() -> list[str]:
    from serial.tools import list_ports

    return sorted(p.device for p in list_ports.comports() if p.vid is not None)


def resolve(
    given: str | None,
    answers: Callable[[str], bool],
    candidates: Callable[[], list[str]] = usb_ports,
    quiet: bool = False,
) -> str:
    """The port to use: ``given``, $OPMOB_PORT, or the one candidate that ``answers``."""
    if given:
        return given
    env = os.environ.get(ENV, "").strip()
    if env:
        return env
    found = candidates()
    if not found:
        raise TechnicianError(
            f"no USB serial port found: plug the board in (a data cable), or give the port with -p PORT "
            f"or {ENV}=PORT"
        )
    chosen = found if len(found) == 1 else [p for p in found if answers(p)]
    if len(chosen) != 1:
        which = "none of them answers" if not chosen else f"{len(chosen)} answer ({', '.join(chosen)})"
        raise TechnicianError(
            f"{len(found)} USB serial ports ({', '.join(found)}) and {which}: say which with -p PORT or {ENV}"
        )
    if not quiet:
        why = "the only USB serial port" if len(found) == 1 else "the only one that answers"
        print(f"opmob: using port {chosen[0]} ({why})", file=sys.stderr, flush=True)
    return chosen[0]


def repl_answers(port: str) -> bool:
    from opmob_host.ports import probe

    return probe(port).startswith("MicroPython on ")


def bootloader_answers(port: str) -> bool:
    from opmob_host.ports import probe_bootloader

    return probe_bootloader(port) is not None


def device_port(args: Any) -> str:
    """``args.port`` resolved for a command that talks to a MicroPython REPL."""
    port: str = resolve(args.port, repl_answers)
    args.port = port
    return port
