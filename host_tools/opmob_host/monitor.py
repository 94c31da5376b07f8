"""``opmob monitor [--url http://127.0.0.1:7780] [--interval S] [--once]``: a live terminal view of a
relay's ``/status`` (the same document as ``opmob relay status``): its devices, its groups with
their floor state, holder and queue, stunned and killed devices, and the counters that are not
zero. It redraws every ``--interval`` seconds until Ctrl-C; ``--once`` prints one frame and exits
(1 when the relay cannot be reached). When the relay stops answering, the last state it gave stays
on screen under a banner saying since when it is not live. Piped into ``head`` or a pager that
quits, it stops quietly."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from opmob_host.relay_cmd import DEFAULT_STATUS_URL, Failure, fetch_status, status_url

CLEAR = "\x1b[H\x1b[2J"


class View:
    """The frames of the live view: the relay's state, or its last known state marked as such."""

    def __init__(self, url: str, fetch: Callable[[], Any]) -> None:
        self.url = url
        self.fetch = fetch
        self.last: tuple[str, str] | None = None  # (frame, when it was live)
        self.down_since: str | None = None

    def frame(self, now: str, interval: float) -> str:
        try:
            doc = self.fetch()
        except Failure as e:
            self.down_since = self.down_since or now
            head = f"{now}  {e}\n(retrying every {interval:g} s; Ctrl-C to stop)"
            if self.last is None:
                return head
            frame, at = self.last
            return (
                f"{head}\nRELAY NOT ANSWERING since {self.down_since}: the state below is the last one "
                f"it gave, at {at}; it is not live\n\n{frame}"
            )
        self.down_since = None
        frame = render(doc, self.url, now)
        self.last = (frame, now)
        return frame


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return lines


def _s(v: Any) -> str:
    if v is None or v == [] or v == "":
        return "-"
    if isinstance(v, list):
        return ",".join(_s(x) for x in v)
    return str(v)


RECENT_SHOWN = 12  # the newest events a frame shows


def render(doc: Any, url: str, now: str) -> str:
    """One frame of the view, as text."""
    if not isinstance(doc, dict):
        return f"{url}: not a relay status document"
    devices = doc.get("devices") or []
    groups = doc.get("groups") or []
    out = [
        f"relay {_s(doc.get('relay'))}  system {_s(doc.get('system'))}  {url}  {now}",
        f"{len(devices)} device(s), {len(groups)} group(s)",
        "",
        "DEVICES",
    ]
    out += _table(
        ["IDENTITY", "STATE", "ADDRESS", "TALK GROUP", "GROUPS"],
        [
            [
                _s(d.get("identity")),
                _s(d.get("state")),
                _s(d.get("addr")),
                _s(d.get("talk_group")),
                _s(d.get("groups")),
            ]
            for d in devices
            if isinstance(d, dict)
        ],
    )
    out += ["", "GROUPS"]
    rows = []
    for g in groups:
        if not isinstance(g, dict):
            continue
        flags = [f for f in ("emergency", "imminent_peril") if g.get(f)]
        queue = [f"{q[0]}({q[1]})" for q in g.get("queue") or [] if isinstance(q, list) and len(q) == 2]
        rows.append(
            [
                _s(g.get("identity")),
                _s(g.get("floor_state")),
                _s(g.get("holder")),
                _s(queue),
                str(len(g.get("members") or [])),
                _s(flags),
            ]
        )
    out += _table(["GROUP", "FLOOR", "HOLDER", "QUEUE", "MEMBERS", "ALERTS"], rows)
    links = [lk for lk in doc.get("links") or [] if isinstance(lk, dict)]
    if links:
        out += ["", "LINKS"]
        rows = []
        for lk in links:
            c = lk.get("counters") or {}
            rows.append(
                [
                    _s(lk.get("peer")),
                    _s(lk.get("state")),
                    _s(lk.get("codec")),
                    _s(lk.get("attached")),
                    _s(lk.get("served")),
                    f"{c.get('voice_in', 0)}/{c.get('voice_out', 0)}",
                    f"{c.get('floor_in', 0)}/{c.get('floor_out', 0)}",
                    str(c.get("transcode_errors", 0)),
                ]
            )
        out += _table(
            ["PEER", "STATE", "CODEC", "ATTACHED", "SERVED", "VOICE IN/OUT", "FLOOR IN/OUT", "TC ERR"], rows
        )
    for key in ("stunned", "killed"):
        if doc.get(key):
            out += ["", f"{key.upper()}: {_s(doc[key])}"]
    events = [e for e in doc.get("events") or [] if isinstance(e, dict) and isinstance(e.get("event"), list)]
    if events:
        out += ["", "RECENT EVENTS"]
        for e in events[-RECENT_SHOWN:]:
            t = e.get("t")
            when = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "-"
            kind, *rest = e["event"] or ["-"]
            out.append(f"  {when}  {_s(kind):<20} {' '.join(_s(x) for x in rest)}")
    counters = doc.get("counters") or {}
    nonzero = sorted((k, v) for k, v in counters.items() if v)
    out += ["", "COUNTERS (not zero)"]
    out += [f"  {k:<32} {v}" for k, v in nonzero] or ["  (all zero)"]
    return "\n".join(out)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "monitor",
        help="a live terminal view of a relay's status: devices, groups, floor state, counters",
        description="Fetch a relay's /status every INTERVAL seconds and show its devices, groups (floor "
        "state, holder, queue), stunned/killed devices and non-zero counters.",
    )
    p.add_argument(
        "--url", default=DEFAULT_STATUS_URL, help=f"the status endpoint (default {DEFAULT_STATUS_URL})"
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames (default 2)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the relay")
    p.add_argument("--once", action="store_true", help="print one frame and exit")


def _print(text: str) -> bool:
    """Print; False when the reader went away (``| head``, a pager quit): stop quietly then."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's last flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def run(args: argparse.Namespace) -> int:
    try:
        full = status_url(args.url)
    except Failure as e:
        print(f"opmob monitor: {e}", file=sys.stderr)
        return e.code
    if args.once:
        try:
            doc = fetch_status(full, args.timeout)
        except Failure as e:
            print(f"opmob monitor: {e}", file=sys.stderr)
            return e.code
        _print(render(doc, full, time.strftime("%H:%M:%S")))
        return 0
    tty = sys.stdout.isatty()
    view = View(full, lambda: fetch_status(full, args.timeout))
    while True:
        frame = view.frame(time.strftime("%H:%M:%S"), args.interval)
        if not _print((CLEAR if tty else "\n") + frame):
            return 0
        time.sleep(max(args.interval, 0.1))
