"""The technician's subcommands (issue 6), one module each: registered here so that cli.py only
names this module."""

from __future__ import annotations

import argparse
from typing import Any

from opmob_host import deploy, flash, ports, provision, registry_export, verify, virtual

MODULES: dict[str, Any] = {
    "virtual": virtual,
    "ports": ports,
    "flash": flash,
    "deploy": deploy,
    "provision": provision,
    "verify": verify,
    "registry": registry_export,
}


def add_parsers(sub: Any) -> None:
    for mod in MODULES.values():
        mod.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    rc: int = MODULES[args.command].run(args)
    return rc
