"""The technician's subcommands (issue 6), one module each: registered here so that cli.py only
names this module."""

from __future__ import annotations

import argparse
from typing import Any

from opmob_host import console, deploy, flash, ports, provision, registry_export, verify, virtual

MODULES: dict[str, Any] = {
    "virtual": virtual,
    "ports": ports,
    "flash": flash,
    "deploy": deploy,
    "provision": provision,
    "verify": verify,
    "registry": registry_export,
    "console": console,
    "reset": console,
}


def add_parsers(sub: Any) -> None:
    for mod in dict.fromkeys(MODULES.values()):  # each module once (console has two commands)
        mod.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    rc: int = MODULES[args.command].run(args)
    return rc
