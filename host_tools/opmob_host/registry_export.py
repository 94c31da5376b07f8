"""``opmob registry export --inventory FLEET --system S [--partner] [--out FILE]``: the registry
export (docs/registry.md) a relay loads, from the fleet inventory. The home view holds every
provisioned device's secret, so it is only ever written to a file (mode 0600, atomically); the
partner view (no secrets, no counters) may go to stdout. The document is checked by loading it into
a registry (the relay's own code) before it is written."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from opmob.registry import Registry, RegistryError
from opmob.store import MemoryStore

from opmob_host import inventory
from opmob_host.devlink import TechnicianError

_GROUP_FIELDS = ("identity", "policy", "e2e", "key_ids", "receive_only")


def export(inv: inventory.Inventory, system: str, partner: bool) -> tuple[dict[str, Any], list[str]]:
    """(the export document, identities left out because they have no secret yet)."""
    if system != inv.system:
        raise TechnicianError(f"the inventory {inv.path} is of system {inv.system}, not {system}")
    devices = []
    skipped = []
    for d in inv.devices():
        if "secret" not in d and not partner:
            skipped.append(d["identity"])
            continue
        rec: dict[str, Any] = {
            "identity": d["identity"],
            "groups": list(dict.fromkeys(d["groups"] + d.get("scan", []))),
            "ceiling": d["ceiling"],
            "status": d.get("status", "active"),
        }
        if not partner:
            rec["secret"] = d["secret"]
        devices.append(rec)
    groups = [{k: v for k, v in g.items() if k in _GROUP_FIELDS} for g in inv.groups()]
    doc = {
        "format": "opmob-registry",
        "version": 1,
        "system": system,
        "view": "partner" if partner else "home",
        "comment": f"exported from the fleet inventory {inv.path.name} by opmob registry export",
        "devices": devices,
        "groups": groups,
    }
    try:
        if partner:
            Registry(MemoryStore(), "x-check" if system != "x-check" else "y-check").load_export(doc)
        else:
            Registry(MemoryStore(), system).load_export(doc)
    except RegistryError as e:  # names the record and field, never a secret
        raise TechnicianError(f"the inventory does not make a valid registry export: {e}") from None
    return doc, skipped


def add_parser(sub: Any) -> None:
    p = sub.add_parser("registry", help="registry export from a fleet inventory")
    rsub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    e = rsub.add_parser(
        "export",
        help="the registry export a relay loads (docs/registry.md)",
        description="Write the home-registry export of the inventory's system (with secrets: --out "
        "only, mode 0600), or with --partner the view a partner system may see.",
    )
    e.add_argument("--inventory", required=True, help="the fleet inventory (TOML)")
    e.add_argument("--system", required=True, help="the system code, e.g. no (must be the inventory's)")
    e.add_argument("--partner", action="store_true", help="the partner view: no secrets, no counters")
    e.add_argument("--out", help="file to write (default: stdout, for the partner view only)")


def run(args: argparse.Namespace) -> int:
    try:
        inv = inventory.load(Path(args.inventory))
        if not args.partner and not args.out:
            raise TechnicianError("the home view holds device secrets: name a file with --out")
        doc, skipped = export(inv, args.system, args.partner)
        text = json.dumps(doc, indent=2) + "\n"
        if args.out:
            inventory.write_atomic(Path(args.out), text.encode())
        else:
            sys.stdout.write(text)
    except TechnicianError as e:
        print(f"opmob registry export: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"opmob registry export: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 1
    for ident in skipped:
        print(f"opmob registry export: {ident} left out: not provisioned yet (no secret)", file=sys.stderr)
    if args.out:
        print(
            f"opmob registry export: {len(doc['devices'])} devices, {len(doc['groups'])} groups -> {args.out}"
        )
    return 0
