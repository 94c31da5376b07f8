"""``opmob ports [PORT ...] [--no-probe]``: the serial ports (pyserial's list), with what answers on
each: a MicroPython REPL (its machine, and the board named by its ``/board.json``), else an
Espressif bootloader (esptool's chip detection, one short attempt); a port another program holds
open is shown busy, with that program, and not probed. Ports named on the command line
(a virtual device's pseudo-terminal, say) are listed too; a named port that is absent is an error."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from serial.tools import list_ports

from opmob_host.devlink import TechnicianError, connect, holders

Prober = Callable[[str], str]


def probe_repl(port: str) -> str | None:
    """'MicroPython on MACHINE, board B' when a MicroPython REPL answers, else None."""
    try:
        with connect(port, soft_reset=False) as dev:
            info = dev.eval_json(
                "(__import__('sys').implementation._machine, "
                "(lambda: __import__('json').load(open('/board.json')).get('name'))() "
                "if 'board.json' in __import__('os').listdir('/') else None)"
            )
    except (TechnicianError, ValueError):
        return None
    machine, board = info
    # The REPL's Ctrl-C stopped a running app; connect() started it again (it re-registers).
    again = "; app restarted (stopped to ask)" if dev.restarted else ""
    return f"MicroPython on {machine}, board {board or 'none deployed'}{again}"


def probe_bootloader(port: str) -> str | None:
    from opmob_host.flash import detect_chip

    try:
        return f"{detect_chip(port, 1)} bootloader"
    except TechnicianError:
        return None


def probe(port: str) -> str:
    busy = holders(port)
    if busy:  # whatever answered would be read by the holder too: not probed
        return "busy: open in " + ", ".join(f"{comm} (pid {pid})" for pid, comm in busy)
    with contextlib.redirect_stdout(io.StringIO()):  # mpremote's and esptool's own chatter
        return probe_repl(port) or probe_bootloader(port) or "nothing answers"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ports",
        help="list serial ports, with the board and chip that answer on each",
        description="List the serial ports (pyserial) with their USB VID:PID and description, and "
        "what answers on each: a MicroPython REPL (machine, board) or an Espressif bootloader (chip).",
    )
    p.add_argument("ports", nargs="*", metavar="PORT", help="also list these ports (a virtual device's)")
    p.add_argument("--no-probe", action="store_true", help="do not open the ports; only pyserial's list")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def rows(named: list[str], do_probe: bool, prober: Prober = probe) -> tuple[list[dict[str, str]], bool]:
    found = {p.device: p for p in list_ports.comports()}
    out: list[dict[str, str]] = []
    ok = True
    for dev in sorted(found) + [n for n in named if n not in found]:
        info = found.get(dev)
        row = {
            "port": dev,
            "usb": f"{info.vid:04x}:{info.pid:04x}" if info is not None and info.vid is not None else "-",
            "description": (info.description if info is not None and info.description != "n/a" else "-"),
            "detected": "-",
        }
        if not os.path.exists(dev):
            row["detected"] = "absent: no such port (is the board plugged in?)"
            ok = False
        elif do_probe:
            if sys.stderr.isatty():  # a probe takes a second or two: say what is going on
                print(f"\ropmob ports: asking {dev} ...".ljust(60), end="", file=sys.stderr, flush=True)
            row["detected"] = prober(dev)
        out.append(row)
    return out, ok


def run(args: argparse.Namespace) -> int:
    table, ok = rows(list(args.ports), not args.no_probe)
    if sys.stderr.isatty() and not args.no_probe and table:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(table, indent=2))
    elif not table:
        print("opmob ports: no serial ports; plug the board in (a data cable, not a charging one)")
    else:
        widths = {k: max(len(k), *(len(r[k]) for r in table)) for k in table[0]}
        print("  ".join(k.upper().ljust(widths[k]) for k in widths).rstrip())
        for r in table:
            print("  ".join(r[k].ljust(widths[k]) for k in widths).rstrip())
    if not ok:
        print("opmob ports: a named port does not exist", file=sys.stderr)
        return 1
    return 0
