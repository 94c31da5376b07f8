"""``opmob verify --port P [--inventory FLEET]``: what a device runs and whether it works: firmware
version, board, identity, configuration hash, and a self-test run on the device: board definition
and configuration checked by the firmware's own code, HMAC-SHA256 against CPython's, the deployed
files against the deploy manifest's hashes, each peripheral of the board through the firmware's
hardware layer (firmware/opmob/accessory/selftest.py), free heap. Each check is PASS or FAIL by
name; the app, stopped for it, is started again by a soft reset."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

from opmob_host import inventory, portsel
from opmob_host.deploy import JOURNAL, MANIFEST
from opmob_host.devlink import TechnicianError, connect

KAT_KEY = bytes(range(16))
KAT_LABEL = b"selftest"
KAT_DATA = b"opmob verify"

SELF_TEST = """
import gc, json, binascii
r = {"checks": []}
class _Fail(Exception):
    pass
def _c(name, fn):
    try:
        d = fn()
        r["checks"].append([name, "ok"] + ([d] if d else []))
    except Exception as e:
        r["checks"].append([name, str(e) if type(e) is _Fail else "%s: %s" % (type(e).__name__, e)])
def _version():
    import opmob
    r["version"] = opmob.VERSION
    r["from"] = getattr(opmob, "__file__", "?")
def _board():
    from opmob.accessory import board
    r["board"] = board.load("/board.json").name
def _config():
    from opmob.accessory import config
    c = config.load("/config.json")
    r["identity"] = c.identity
    r["status"] = c.status
def _crypto():
    from opmob.authvec import prf
    if binascii.hexlify(prf(KEY, LABEL, DATA)).decode() != WANT:
        raise ValueError("HMAC-SHA256 gives a wrong result")
def _files():
    import hashlib
    try:
        f = open(MANIFEST)
    except OSError:
        raise _Fail("no %s: run opmob deploy" % MANIFEST)
    try:
        files = json.load(f)["files"]
    except (ValueError, KeyError, TypeError):
        raise _Fail("%s is damaged: run opmob deploy --force" % MANIFEST)
    finally:
        f.close()
    bad = []
    buf = bytearray(512)
    for p in sorted(files):
        try:
            f = open(p, "rb")
        except OSError:
            bad.append(p + " missing")
            continue
        h = hashlib.sha256()
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
        f.close()
        if binascii.hexlify(h.digest()).decode() != files[p]:
            bad.append(p + " changed")
    # Every file the firmware may import is vouched for: a module in /lib that the manifest does
    # not name (a deploy cut short by an older opmob) would run without being checked.
    def _walk(d):
        try:
            entries = list(os.ilistdir(d))
        except OSError:
            return
        for e in entries:
            p = d + "/" + e[0]
            if e[1] == 0x4000:
                _walk(p)
            elif p not in files:
                bad.append(p + " not deployed")
    import os
    _walk("/lib")
    try:
        os.stat(JOURNAL)
        bad.append("a deploy's switch is pending")
    except OSError:
        pass
    if bad:
        raise _Fail("%s (not what was deployed): run opmob deploy --force" % ", ".join(bad))
    running = r.get("from", "?")
    if running != "?" and running.lstrip("/").split("/")[0] != "lib":
        # Another copy comes first on sys.path (one frozen into the image, or one at /): the
        # deployed files would be checked, and something else would run.
        raise _Fail(
            "the firmware runs from %s, not from the deployed /lib: the /boot.py of opmob deploy puts "
            "/lib first (run opmob deploy --force), and nothing else may hold an opmob package" % running
        )
    return "%d as deployed" % len(files)
_c("firmware", _version)
_c("board", _board)
_c("configuration", _config)
_c("crypto", _crypto)
_c("files", _files)
try:
    from opmob.accessory import selftest
    r["checks"].extend(selftest.run())
except ImportError as e:
    r["checks"].append(["hardware", "no hardware self-test in the deployed firmware (%s): run opmob deploy" % e])
except Exception as e:
    r["checks"].append(["hardware", "%s: %s" % (type(e).__name__, e)])
gc.collect()
r["mem_free"] = gc.mem_free()
print(json.dumps(r))
"""


def kat() -> str:
    """The self-test's expected prf() value, by CPython's own HMAC (authvec.prf's definition)."""
    return hmac.new(KAT_KEY, b"OpMob v1 " + KAT_LABEL + b"\x00" + KAT_DATA, hashlib.sha256).hexdigest()


def verify(port: str, inv_path: Path | None = None) -> tuple[dict[str, Any], bool]:
    code = (
        f"KEY={KAT_KEY!r}\nLABEL={KAT_LABEL!r}\nDATA={KAT_DATA!r}\nWANT={kat()!r}\nMANIFEST={MANIFEST!r}\n"
        f"JOURNAL={JOURNAL!r}\n" + SELF_TEST
    )
    # The app is stopped for the self-test (its peripherals are the self-test's) and started again
    # after it, as a reset would: a verified device is left running.
    with connect(port, run_after=True) as dev:
        dev.step = "the self-test"
        out = dev.exec(code).decode().strip().splitlines()
        try:
            report: dict[str, Any] = json.loads(out[-1])
        except (ValueError, IndexError):
            raise TechnicianError(
                f"the device on {port} gave no self-test report: deploy OpMob first"
            ) from None
        report["config_sha256"] = dev.sha256("/config.json")
    if inv_path is not None:
        inv = inventory.load(inv_path)
        rec = inv.device(report["identity"]) if report.get("identity") else None
        if rec is None:
            result = "not in the inventory"
        elif rec.get("config_sha256") != report["config_sha256"]:
            result = "configuration differs from the one provisioned: provision again"
        else:
            result = "ok"
        report["checks"].append(["inventory", result])
    ok = all(c[1] == "ok" for c in report["checks"])
    return report, ok


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="firmware version, board, configuration hash and a self-test of a device",
        description="Report the device's firmware version, board, identity and configuration hash, "
        "and run a self-test on it: deployed files against the deploy manifest, each peripheral of the "
        "board, crypto. The app, stopped for it, is started again. Exit 0 only when every check passes.",
    )
    portsel.add_port_argument(p)
    p.add_argument("--json", action="store_true", help="the report as one JSON document")
    p.add_argument("--inventory", help="also check the configuration against this fleet inventory")


def run(args: argparse.Namespace) -> int:
    try:
        portsel.device_port(args)
        report, ok = verify(args.port, Path(args.inventory) if args.inventory else None)
    except TechnicianError as e:
        print(f"opmob verify: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"port": args.port, "ok": ok, **report}, indent=2, sort_keys=True))
        return 0 if ok else 1
    print(f"port           {args.port}")
    print(f"firmware       {report.get('version', '?')} (running from {report.get('from', '?')})")
    print(f"board          {report.get('board', '?')}")
    print(f"identity       {report.get('identity', '(not provisioned)')}")
    print(f"configuration  sha256 {report.get('config_sha256') or '(none)'}")
    print(f"free heap      {report.get('mem_free')} bytes")
    for check in report["checks"]:
        name, result = check[0], check[1]
        if result == "ok":
            print(f"self-test      {name}: PASS" + (f" ({check[2]})" if len(check) > 2 else ""))
        else:
            print(f"self-test      {name}: FAIL {result}")
    print(f"opmob verify: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1
