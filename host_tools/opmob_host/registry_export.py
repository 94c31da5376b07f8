"""``opmob registry export --inventory FLEET --system S [--partner] [--strict] [--out FILE]``: the
registry export (docs/registry.md) a relay loads, from the fleet inventory. The home view holds the
secret of every device whose provisioning was completed, so it is only ever written to a file (mode
0600, atomically); the devices left out are named on stderr with the command that completes them
(``--strict``: an error, nothing written). The partner view (no secrets, no counters) may go to
stdout. The document is checked by loading it into a registry (the relay's own code) before it is
written."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from opmob.registry import Registry, RegistryError
from opmob.store import MemoryStore

from opmob_host import inventory
from opmob_host.devlink import TechnicianError

_GROUP_FIELDS = ("identity", "policy", "e2e", "key_ids", "receive_only")


def incomplete(d: dict[str, Any]) -> str | None:
    """Why a device is not ready for the home view (None: it is). The secret is recorded before the
    device is written and the configuration's hash after it: a secret without a hash is a
    provision that stopped part-way, and the device may not hold that secret."""
    if "secret" not in d:
        return "not provisioned yet (no secret)"
    if "config_sha256" not in d:
        return "its provisioning was not completed (no configuration recorded)"
    return None


def export(
    inv: inventory.Inventory, system: str, partner: bool
) -> tuple[dict[str, Any], list[tuple[str, str, bool]]]:
    """(the export document, (identity, why, whether provision completes it) of each device left
    out)."""
    if system != inv.system:
        raise TechnicianError(f"the inventory {inv.path} is of system {inv.system}, not {system}")
    devices = []
    skipped = []
    for d in inv.devices():
        why = None if partner else incomplete(d)
        if why is not None:
            status = d.get("status", "active")
            if status != "active":
                why = f"{status}, and {why}"
            skipped.append((d["identity"], why, status == "active"))
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
    p = sub.add_parser(
        "registry",
        help="registry export from a fleet inventory",
        description="Write the registry export a relay imports ([registry] import in relay.toml) from "
        "the fleet inventory: the home view with device secrets (mode 0600), or a partner's view.",
    )
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
    e.add_argument(
        "--strict",
        action="store_true",
        help="refuse (write nothing, exit 1) when a device is left out for not being provisioned",
    )


def run(args: argparse.Namespace) -> int:
    try:
        inv = inventory.load(Path(args.inventory))
        if not args.partner and not args.out:
            raise TechnicianError("the home view holds device secrets: name a file with --out")
        doc, skipped = export(inv, args.system, args.partner)
        for ident, why, fixable in skipped:
            fix = (
                f"; to complete it: opmob provision --inventory {shlex.quote(args.inventory)} --device {ident} --port PORT"
                if fixable
                else ""
            )
            print(f"opmob registry export: {ident} left out: {why}{fix}", file=sys.stderr)
        pending = sum(1 for s in skipped if s[2])
        if pending and args.strict:
            raise TechnicianError(
                f"--strict: {pending} device(s) not completely provisioned; nothing written"
            )
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
    if args.out:
        print(
            f"opmob registry export: {len(doc['devices'])} devices, {len(doc['groups'])} groups -> {args.out}"
            + (f"; {len(skipped)} left out (above)" if skipped else "")
        )
    return 0
