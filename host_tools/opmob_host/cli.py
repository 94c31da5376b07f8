"""``opmob``: one command for technicians and CI.

Subcommands arrive with their issues; each is a small module with a ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

TECHNICIAN_COMMANDS = (
    "virtual", "ports", "flash", "deploy", "provision", "verify", "registry", "console", "reset",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opmob", description="OpMob field kit: demo, benchmarks, tools")
    p.add_argument("--version", action="version", version=f"opmob {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="run the end-to-end demo on this machine",
        description="A relay and simulated accessories on this machine make group calls with recorded "
        "speech; the audio each one heard and the captures are written under --out.",
    )
    d.add_argument("--out", default="out/demo", help="directory for the demo's audio and captures")
    d.add_argument("--speech", default="/usr/share/codec2/raw/hts1a.raw", help="raw 8 kHz s16le speech")

    b = sub.add_parser(
        "bench",
        help="measure the hot paths under CPython and MicroPython",
        description="Time the protocol cores' hot paths under CPython and the MicroPython unix port, "
        "the C extension, and a relay process under load on loopback; print a table and write the rows "
        "as JSON (--out).",
    )
    b.add_argument("--out", default="out/bench.json", help="where to write the JSON rows")
    b.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    b.add_argument("--no-micropython", action="store_true", help="CPython rows only")
    b.add_argument(
        "--no-relay-load", action="store_true", help="skip the relay under load (200 devices on loopback)"
    )

    from opmob_host import fuzz_relay, relay_cmd

    relay_cmd.add_parser(sub)
    fuzz_relay.add_parser(sub)
    from opmob_host import monitor, technician

    technician.add_parsers(sub)
    monitor.add_parser(sub)
    from opmob_host import pcap_cmd

    pcap_cmd.add_parser(sub)
    return p


def version() -> str:
    """The installed distribution's version (pyproject.toml), or the source tree's when not installed."""
    from importlib import metadata

    try:
        return metadata.version("opmob")
    except metadata.PackageNotFoundError:
        return "0+source"


def main(argv: Sequence[str] | None = None) -> int:
    command = "opmob"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            # Bare `opmob`: what it can do, as esptool and mpremote answer, rather than an error.
            parser.print_help()
            return 0
        command = f"opmob {args.command}"
        return dispatch(args)
    except KeyboardInterrupt as e:
        # Ctrl-C: one sentence, no traceback. A device command puts the device back first and
        # says so (devlink.Interrupted); anything else was only reading or computing.
        try:
            print(f"{command}: {e or 'interrupted; run the same command again'}", file=sys.stderr)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        return 130


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from opmob_host import demo

        return demo.run(args)
    if args.command == "bench":
        from opmob_host import bench

        return bench.run(args)
    if args.command == "relay":
        from opmob_host import relay_cmd

        return relay_cmd.run(args)
    if args.command == "fuzz":
        from opmob_host import fuzz_relay

        return fuzz_relay.cmd(args)
    if args.command == "monitor":
        from opmob_host import monitor

        return monitor.run(args)
    if args.command == "pcap":
        from opmob_host import pcap_cmd

        return pcap_cmd.run(args)
    if args.command in TECHNICIAN_COMMANDS:
        from opmob_host import technician

        return technician.run(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
