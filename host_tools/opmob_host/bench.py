"""``opmob bench``: one run, both runtimes, a table and ``out/bench.json``.

Rows are ``{"name", "value", "unit", "goal", "runtime", "note"}``; ratio rows compare the two
runtimes measured in this same run, so a noisy machine moves both sides together. The ``relay.*``
rows come from a relay process under load on loopback (relay_load.py: 200 devices, 20 groups busy);
``sim.events_per_s`` from bench_core (opmob.sim on a mixed load, both runtimes); the relay core's,
the release tail's and (full bench only) the voice KPIs' rows from bench_relay_core,
bench_accessory_core and bench_voice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from opmob_host import bench_cext, bench_core, resources

Row = dict[str, Any]


def cpython_rows(quick: bool) -> list[Row]:
    return [
        {"name": n, "value": v, "unit": u, "goal": g, "runtime": "cpython", "note": note}
        for n, v, u, g, note in bench_core.run(quick)
    ]


def cext_rows(quick: bool) -> list[Row]:
    return [
        {"name": n, "value": v, "unit": u, "goal": g, "runtime": "cpython", "note": note}
        for n, v, u, g, note in bench_cext.run(quick)
    ]


def micropython_rows(quick: bool) -> list[Row]:
    env = dict(os.environ, MICROPYPATH=f"{resources.firmware_root()}:.frozen")
    cmd = [*resources.micropython_command(), "-X", "heapsize=16M", str(Path(bench_core.__file__))]
    if quick:
        cmd.append("quick")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"MicroPython benchmark failed:\n{proc.stdout}{proc.stderr}")
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            row["runtime"] = "micropython"
            rows.append(row)
    return rows


def ratio_rows(rows: list[Row]) -> list[Row]:
    by = {(r["name"], r["runtime"]): r["value"] for r in rows}
    out = []
    for (name, runtime), value in sorted(by.items()):
        if runtime == "micropython" and (name, "cpython") in by and by[(name, "cpython")]:
            out.append(
                {
                    "name": f"ratio.micropython_over_cpython.{name}",
                    "value": value / by[(name, "cpython")],
                    "unit": "x",
                    "goal": None,
                    "runtime": "both",
                    "note": "same work, same run",
                }
            )
    return out


def format_table(rows: list[Row]) -> str:
    head = f"{'name':<62} {'runtime':<12} {'value':>12} {'unit':<6} {'goal':>8}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        goal = "" if r["goal"] is None else f"{r['goal']:g}"
        lines.append(
            f"{r['name']:<62} {r['runtime']:<12} {r['value']:>12.3f} {r['unit']:<6} {goal:>8}  {r['note']}"
        )
    return "\n".join(lines)


def relay_rows(quick: bool) -> list[Row]:
    """The relay under load on loopback: a relay process and 200 devices (relay_load.py)."""
    from opmob_host import relay_load

    return relay_load.bench_rows(quick)


# Benchmarks of the relay and accessory cores, each its own module exposing ``rows()``: tuples
# (name, value, unit) or (name, value, unit, goal, note). The voice KPIs run virtual accessories
# through 50 events per figure, twice (about 100 s): only in the full bench, not in ``--quick``.
CORE_BENCH_MODULES = ("opmob_host.bench_relay_core", "opmob_host.bench_accessory_core")
FULL_BENCH_MODULES = ("opmob_host.bench_voice",)
# Goals of the issues, for rows that come without one.
GOALS = {
    "relay.deadline_us.groups_1000": 5.0,
    "relay.register_ratio.sessions_10000_over_10": 1.5,
    "accessory.release_tail_ms": 20.0,
    "accessory.access_ms.p95": 10.0,
    "voice.mouth_to_ear_ms.p95": 60.0,
    "voice.late_entry_ms.p95": 100.0,
    "voice.mouth_to_ear_ms.p95.jitter20": 100.0,
    "voice.late_entry_ms.p95.jitter20": 100.0,
    "voice.concealed_pct.jitter20": 1.0,
}


def core_module_rows(quick: bool) -> list[Row]:
    import importlib

    rows: list[Row] = []
    for name in CORE_BENCH_MODULES + (() if quick else FULL_BENCH_MODULES):
        mod = importlib.import_module(name)
        for r in mod.rows():
            n, value, unit = r[0], r[1], r[2]
            rows.append(
                {
                    "name": n,
                    "value": value,
                    "unit": unit,
                    "goal": r[3] if len(r) > 3 else GOALS.get(n),
                    "runtime": "cpython",
                    "note": r[4] if len(r) > 4 else name.rsplit(".", 1)[1] + ".rows()",
                }
            )
    return rows


def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(resources.firmware_root()))
    rows = cpython_rows(args.quick) + cext_rows(args.quick) + core_module_rows(args.quick)
    if not getattr(args, "no_relay_load", False):
        rows += relay_rows(args.quick)
    if not args.no_micropython:
        rows += micropython_rows(args.quick)
        rows += ratio_rows(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(format_table(rows))
    print(f"\nwrote {len(rows)} rows to {out}")
    return 0
