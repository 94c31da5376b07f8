"""Bench rows for the relay core's costs that must not grow with load (issue 11, item 4).

``rows() -> [(name, value, unit)]``:

- ``relay.deadline_us.groups_1000``: one ``Relay.next_deadline()`` (the driver asks after every
  datagram) with 1,000 groups whose floors are taken, so each has timers running (T1, T2, T20);
  ``groups_10`` the same with 10. Goal: at most 5 µs at 1,000.
- ``relay.register_us.sessions_10000``: one full registration, the relay's side only (REGISTER ->
  CHALLENGE, AUTH_RESPONSE -> REGISTER_ACK through ``Relay.on_datagram``), with 10,000 sessions
  present; ``sessions_10`` with 10; ``relay.register_ratio.sessions_10000_over_10`` the quotient.
  Goal: within 1.5x. The fastest of 60 registrations (new devices, one after another).

The relays are built in memory with the pure SRTP twin; sessions present are registrations
restored from the store (stale: known, without keys), which every per-session scan would visit as
it visits live ones. Deadline figures are the median of 5 runs of 20,000 calls.
"""

from __future__ import annotations

import time
from typing import Any

from opmob_host.bench_core import Rand, one_group_store

GROUP = "bench@no"
RELAY_ADDR = ("10.0.0.1", 7700)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _relay(names: list[str], present: int, max_devices: int) -> tuple[Any, Any]:
    from opmob.registry import Registry
    from opmob.relay import Relay
    from opmob.relay_config import RelayConfig

    store = one_group_store(names, GROUP)
    for i in range(present):
        store.put(
            "registration",
            names[i] + "@no",
            {
                "session": i + 1,
                "ssrc": 0x10000 + i,
                "key_id": 1,
                "addr": [f"10.1.{i >> 8}.{i & 0xFF}", 5000],
            },
        )
    cfg = RelayConfig.from_dict(
        {
            "relay": {"identity": "relay-1@no"},
            "registry": {"path": "unused"},
            "limits": {"max_devices": max_devices},
        }
    )
    relay = Relay(cfg, Registry(store, "no"), store, Rand(7), 0)
    if relay.counters["restored"] != present:
        raise RuntimeError(f"bench: {relay.counters['restored']} of {present} registrations restored")
    return relay, store


def deadline_us(groups: int, calls: int = 20000) -> float:
    """``Relay.next_deadline()`` with ``groups`` taken floors."""
    from opmob import mcpt

    relay, _ = _relay(["u0"], 0, 10)
    now = 1000
    for i in range(groups):
        srv = relay._floor(f"g{i:04d}@no")
        srv.join(now, "p", "p@no", 0x2000 + i)
        srv.on_message(now + i % 50, "p", mcpt.FloorMsg(mcpt.FLOOR_REQUEST, 0x2000 + i, priority=1))
        if srv.holder != "p":
            raise RuntimeError(f"bench: floor {i} not taken")
    if relay.next_deadline() is None:
        raise RuntimeError("bench: no deadline")
    runs = []
    f = relay.next_deadline
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            f()
        runs.append((time.perf_counter_ns() - t0) / 1000 / calls)
    return _median(runs)


def register_us(present: int, registrations: int = 60) -> float:
    """The relay's CPU time for one registration with ``present`` sessions already there."""
    from opmob.device import DeviceSession

    names = [f"d{i:05d}" for i in range(present + registrations)]
    relay, _ = _relay(names, present, present + registrations + 10)
    now = 2000
    costs = []
    for k in range(registrations):
        name = names[present + k]
        i = present + k
        dev = DeviceSession(name + "@no", (i + 1).to_bytes(16, "big"), RELAY_ADDR, Rand(1000 + k))
        addr = (f"10.2.{k >> 8}.{k & 0xFF}", 5000)
        spent = 0
        to_relay = [d for _, d in dev.start(now)]
        while to_relay:
            to_dev: list[bytes] = []
            for data in to_relay:
                t0 = time.perf_counter_ns()
                out = relay.on_datagram(now, addr, data)
                spent += time.perf_counter_ns() - t0
                to_dev.extend(d for a, d in out if a == addr)
            to_relay = []
            for data in to_dev:
                to_relay.extend(d for _, d in dev.on_datagram(now, RELAY_ADDR, data))
        if dev.state != "registered":
            raise RuntimeError(f"bench: {name} did not register ({dev.state})")
        costs.append(spent / 1000)
        now += 1
    # The fastest: the registration least disturbed by whatever else the machine ran.
    return min(costs)


def rows() -> list[tuple[str, float, str]]:
    d10 = deadline_us(10)
    d1000 = deadline_us(1000)
    r10 = register_us(10)
    r10000 = register_us(10000)
    return [
        ("relay.deadline_us.groups_10", d10, "us"),
        ("relay.deadline_us.groups_1000", d1000, "us"),
        ("relay.register_us.sessions_10", r10, "us"),
        ("relay.register_us.sessions_10000", r10000, "us"),
        ("relay.register_ratio.sessions_10000_over_10", r10000 / r10 if r10 else 0.0, "x"),
    ]


if __name__ == "__main__":
    for name, value, unit in rows():
        print(f"{name:<48} {value:10.2f} {unit}")
