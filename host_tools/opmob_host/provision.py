"""``opmob provision --inventory FLEET --device ID --port P``: the device's identity and secret
(created if new), its configuration (docs/accessory.md) written to /config.json atomically and
checked by hash, the result recorded in the fleet inventory. Idempotent; never prints a secret.

Order of writes, so that a provision killed at any instant can simply be run again:
1. a new secret is recorded in the inventory first (atomic, 0600): a device never holds a secret
   the inventory does not know;
2. /config.json.tmp on the device, checked by SHA-256, renamed over /config.json (whole old or whole
   new configuration), checked again;
3. the inventory records the configuration's hash and the hardware.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from opmob.accessory.config import AccessoryConfig, ConfigError

from opmob_host import inventory, portsel
from opmob_host.deploy import device_board
from opmob_host.devlink import Device, TechnicianError, connect

CONFIG = "/config.json"
HWID = (
    "try:\n import machine,binascii\n print(binascii.hexlify(machine.unique_id()).decode())\n"
    "except Exception:\n try:\n  print('v-'+open('/.hwid').read().strip())\n except OSError:\n  print('-')"
)


def config_doc(inv: inventory.Inventory, dev: dict[str, Any]) -> dict[str, Any]:
    """The device's configuration from its inventory record (docs/accessory.md)."""

    def group_entry(ident: str) -> Any:
        g = inv.group(ident) or {}
        entry: dict[str, Any] = {"identity": ident}
        if "priority" in g:
            entry["priority"] = g["priority"]
        if "label" in g:
            entry["label"] = g["label"]
        return entry if len(entry) > 1 else ident

    doc: dict[str, Any] = {
        "format": "opmob-accessory",
        "version": 1,
        "identity": dev["identity"],
        "secret": dev["secret"],
        "home": inv.system,
        "partners": list(inv.doc.get("partners", [])),
        "relays": [dict(r) for r in inv.doc.get("relays", [])],
        "groups": [group_entry(g) for g in dev["groups"]],
        "scan": [group_entry(g) for g in dev.get("scan", [])],
    }
    if "floor_priority" in dev:
        doc["floor_priority"] = dev["floor_priority"]
    try:
        AccessoryConfig.from_dict(doc, "configuration of " + dev["identity"])
    except ConfigError as e:  # names keys, never values
        raise TechnicianError(
            f"the inventory gives {dev['identity']} an invalid configuration: {e}"
        ) from None
    return doc


def config_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()


def hardware_id(dev: Device) -> str | None:
    text = dev.exec(HWID).decode().strip()
    return None if text == "-" else text


def device_identity(dev: Device) -> str | None:
    """The identity in the device's current configuration (None: none or unreadable)."""
    raw = dev.read(CONFIG)
    if raw is None:
        return None
    try:
        ident = json.loads(raw).get("identity")
    except (ValueError, AttributeError):
        return None
    return ident if isinstance(ident, str) else None


def provision(
    inv_path: Path, identity: str, port: str, replace: bool = False, dry_run: bool = False
) -> tuple[str | None, bool, bool]:
    """Returns (configuration sha256, whether the device was written, whether its app, stopped
    for this, was started again). ``dry_run``: every check, nothing written to the device or the
    inventory; the sha256 is None when a new secret would be made (its hash is not known yet)."""
    with inventory.locked(inv_path):
        inv = inventory.load(inv_path)
        rec = inv.device(identity) or inv.add_device(identity)  # in memory until saved
        if rec.get("status", "active") != "active":
            raise TechnicianError(f"device {identity} is {rec['status']} in the inventory: not provisioned")
        config_doc(inv, dict(rec, secret="0" * 32))  # the inventory makes a valid configuration
        with connect(port) as dev:
            board = device_board(dev)
            if board != rec["board"]:
                raise TechnicianError(
                    f"the device on {port} is a {board}; the inventory says {identity} is a {rec['board']}"
                )
            dev.step = "reading what it holds"
            if dev.read("/board.json") is None or dev.read("/opmob.manifest.json") is None:
                raise TechnicianError(
                    f"the device on {port} has no OpMob deployed: run opmob deploy --port {port} first"
                )
            hw = hardware_id(dev)
            if hw is not None and not replace:
                for other in inv.devices():
                    if other.get("hardware_id") == hw and other["identity"] != identity:
                        raise TechnicianError(
                            f"the device on {port} is {other['identity']} in the inventory (same hardware): "
                            "--replace to give it a new identity"
                        )
                if rec.get("hardware_id") not in (None, hw):
                    raise TechnicianError(
                        f"{identity} is already provisioned on another device (duplicate identity); "
                        "--replace if that device is lost or retired"
                    )
            current = device_identity(dev)
            if current not in (None, identity) and not replace:
                raise TechnicianError(
                    f"the device on {port} is already provisioned as {current}: --replace to re-provision it"
                )
            if dry_run and "secret" not in rec:
                return None, True, False
            if "secret" not in rec:
                rec["secret"] = os.urandom(16).hex()
                inv.save()  # the secret is known before any device holds it
            data = config_bytes(config_doc(inv, rec))
            digest = hashlib.sha256(data).hexdigest()
            written = dev.sha256(CONFIG) != digest
            if dry_run:
                return digest, written, False
            if written:
                dev.write_atomic(CONFIG, data)
                dev.step = f"checking {CONFIG}"
                if dev.sha256(CONFIG) != digest:
                    raise TechnicianError(f"{CONFIG} on {port} does not match after writing: run again")
        if replace and hw is not None:
            for other in inv.devices():
                if other.get("hardware_id") == hw and other["identity"] != identity:
                    del other["hardware_id"]
        changed = rec.get("config_sha256") != digest or rec.get("hardware_id") != hw
        if hw is not None:
            rec["hardware_id"] = hw
        rec["config_sha256"] = digest
        if written or changed:
            rec["provisioned"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            inv.save()
        return digest, written, dev.restarted


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "provision",
        help="give a device its identity, secret and configuration from the fleet inventory",
        description="Create the device's identity and secret if new, write its configuration to the "
        "device atomically and check it by hash, record it in the inventory. Idempotent. Never prints "
        "a secret.",
    )
    p.add_argument("--inventory", required=True, help="the fleet inventory (TOML, docs/technician.md)")
    p.add_argument("--device", required=True, help="the device's identity, name@system")
    portsel.add_port_argument(p)
    p.add_argument("--json", action="store_true", help="the result as one JSON document (no secret in it)")
    p.add_argument(
        "--dry-run", action="store_true", help="check everything and say what would change; write nothing"
    )
    p.add_argument("--replace", action="store_true", help="re-provision a device that has another identity")


def run(args: argparse.Namespace) -> int:
    try:
        portsel.device_port(args)
        digest, written, restarted = provision(
            Path(args.inventory), args.device, args.port, args.replace, dry_run=args.dry_run
        )
    except TechnicianError as e:
        print(f"opmob provision: {e}", file=sys.stderr)
        return 1
    if args.json:
        doc = {
            "identity": args.device,
            "port": args.port,
            "dry_run": args.dry_run,
            "written": written and not args.dry_run,
            "would_write": written if args.dry_run else None,
            "config_sha256": digest,
            "app_restarted": restarted,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if args.dry_run:
        if digest is None:
            what = "has no secret yet: one would be made and its configuration written"
        elif written:
            what = f"would get a new configuration (sha256 {digest})"
        else:
            what = f"is already provisioned with this configuration (sha256 {digest}): nothing to do"
        print(f"opmob provision: dry run: {args.device} on {args.port} {what}; nothing was written")
    else:
        what = "provisioned" if written else "already provisioned"
        print(f"opmob provision: {args.device} {what} on {args.port}: configuration sha256 {digest}")
    if restarted:
        again = "with the new configuration" if written and not args.dry_run else "as before"
        print(
            f"opmob provision: the app on {args.port}, stopped to read the device, was started again {again}"
        )
    return 0
