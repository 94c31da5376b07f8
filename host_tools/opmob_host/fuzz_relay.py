"""``opmob fuzz relay``: a seeded, corpus-based mutation fuzzer for the relay core.

It drives the sans-I/O ``Relay`` (firmware/opmob/relay.py) directly, in memory, under a virtual
clock (the relay and its devices run in an ``opmob.sim.Sim``; the inputs go straight to
``Relay.on_datagram``), so it runs a million inputs in about half a minute and a failure replays
from its seed:

1. **Corpus.** A relay and its devices (``DeviceSession``) play a scripted exchange and every datagram
   that reaches the relay is kept, labelled: REGISTER (known, unknown, killed and foreign
   identities, from addresses the relay has never seen), AUTH_RESPONSE, AUTH_FAILURE (a device that
   refuses the relay's AUTN, one out of sync), KEEPALIVE, AFFILIATE, DEAFFILIATE,
   AFFILIATION_QUERY, DEREGISTER, EMERGENCY_ALERT / _CANCEL, the devices' EMERGENCY_ACK and
   DEVICE_CONTROL_ACK, SRTCP floor messages (Request, Release, Queue Position Request, Floor Ack,
   emergency Request) and SRTP voice.
2. **Storm.** The same relay, with the same devices still running, then takes N inputs, each a
   corpus datagram mutated (bit flips, byte sets, truncation, extension, splicing two datagrams,
   deleting and repeating ranges, header-field-aware changes to RTP, RTCP/SRTCP and signalling
   headers: types, lengths, flags, SSRCs and session ids of live registrations, SRTCP index and E
   flag), a replay (of the corpus or of what the devices sent a moment ago), random bytes, or
   *authentic garbage*: any content protected with an insider's real session keys, which gets
   past authentication into the signalling handlers, the floor-control decoder and the floor
   servers. Inputs come from many source addresses, including the devices' own (spoofed).
3. **Checks on every input:** no exception escapes ``on_datagram``; it returns a list of
   ``(address, bytes)`` of at most 1500 bytes each; it returns within ``input_limit_s`` (a
   watchdog thread interrupts an input that hangs, and the whole run has a time limit); and the
   counters account for it: ``rx_datagrams`` rose by one and so did exactly ``accepted`` or one
   ``drop_*`` counter, so ``rx_datagrams == accepted + sum(drop_*)`` holds throughout.
4. **Witnesses.** Six devices that no input can impersonate keep using the relay through the storm:
   keep-alives, and a talk burst every few seconds (Floor Request, 10 voice packets, Floor
   Release) in one of their three groups. Every burst must be granted and heard, packet for
   packet, by every other member. After the storm each witness is power-cycled (a new session; half
   of them name no groups in REGISTER, so the relay's own memory must supply them); each must
   register, keep its affiliations (the relay's status and the device's answer), have an AFFILIATE
   confirmed, get the floor in each of its groups and be heard by every other member.

``opmob fuzz relay --inputs 1000000 --seed 1`` runs it (``make fuzz``); ``make test`` runs a short
run (tests/host/test_relay_fuzz_run.py). Insiders (devices whose keys the fuzzer uses) are members of
their own groups only, so nothing they are allowed to do reaches the witnesses' groups. At the
default expiry the witnesses need not register again during the storm; ``--expiry 600`` makes them,
and shows that a REGISTER flood delays them (docs/relay.md, "Robustness and performance").
"""

from __future__ import annotations

import _thread
import argparse
import hashlib
import json
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Addr = tuple[str, int]
Out = list[tuple[Any, Any]]

RELAY_ADDR: Addr = ("192.0.2.1", 7700)
MAX_OUT = 1500  # no datagram of the relay's may exceed one Ethernet MTU

# Witness groups are "members" groups of the witnesses only; insiders play in their own open groups.
WITNESS_MEMBERS = {
    "fz-alpha@no": ("w-ann", "w-bob", "w-cat", "w-eve"),
    "fz-bravo@no": ("w-ann", "w-bob", "w-dan", "w-fay"),
    "fz-charlie@no": ("w-cat", "w-dan", "w-eve", "w-fay"),
}
WITNESSES = ("w-ann", "w-bob", "w-cat", "w-dan", "w-eve", "w-fay")
INSIDER_GROUPS = ("fz-xray@no", "fz-yankee@no")
INSIDERS = ("i-gus", "i-hal", "i-ivy", "i-jon")
STUNNED_DEVICE = "s-kim"
KILLED_DEVICE = "k-lee"
BURST_PACKETS = 10
BURST_EVERY_S = 3.0
KEEPALIVE_S = 15
EXPIRY_S = 3600  # the sample configuration's; see run(expiry_s=...)
REQUIRED_LABELS = (
    "sig:REGISTER",
    "sig:AUTH_RESPONSE",
    "sig:AUTH_FAILURE",
    "sig:KEEPALIVE",
    "sig:AFFILIATE",
    "sig:DEAFFILIATE",
    "sig:AFFILIATION_QUERY",
    "sig:DEREGISTER",
    "sig:EMERGENCY_ALERT",
    "sig:EMERGENCY_CANCEL",
    "sig:EMERGENCY_ACK",
    "sig:DEVICE_CONTROL_ACK",
    "srtcp:floor_request",
    "srtcp:floor_release",
    "srtcp:queue_position_request",
    "srtcp:floor_ack",
    "srtcp:emergency_request",
    "srtp:voice",
)


def wanted_groups(name: str) -> list[str]:
    return [g for g, members in WITNESS_MEMBERS.items() if name in members]


def ident(name: str) -> str:
    return name + "@no"


def _secret(seed: int, name: str) -> bytes:
    return hashlib.sha256(b"opmob fuzz %d %s" % (seed, name.encode())).digest()[:16]


def registry_export(seed: int) -> dict[str, Any]:
    devices = []
    for n in WITNESSES:
        devices.append((n, wanted_groups(n), "active"))
    for n in INSIDERS:
        devices.append((n, list(INSIDER_GROUPS), "active"))
    devices.append((STUNNED_DEVICE, list(INSIDER_GROUPS), "stunned"))
    devices.append((KILLED_DEVICE, list(INSIDER_GROUPS), "killed"))
    groups = [
        {"identity": g, "policy": "members", "e2e": False, "key_ids": [], "receive_only": []}
        for g in WITNESS_MEMBERS
    ]
    groups += [
        {"identity": g, "policy": "open", "e2e": False, "key_ids": [], "receive_only": []}
        for g in INSIDER_GROUPS
    ]
    return {
        "format": "opmob-registry",
        "version": 1,
        "system": "no",
        "devices": [
            {
                "identity": ident(n),
                "secret": _secret(seed, n).hex(),
                "groups": gs,
                "ceiling": 200,
                "status": st,
                "vid": 0,
                "cseq": 0,
            }
            for n, gs, st in devices
        ],
        "groups": groups,
    }


def relay_config(expiry_s: int = EXPIRY_S) -> Any:
    from opmob.relay_config import RelayConfig

    return RelayConfig.from_dict(
        {
            "relay": {"identity": "relay-fz@no"},
            "registry": {"path": "unused"},
            "limits": {"max_affiliations": 4, "max_devices": 16},
            "timers": {"keepalive": KEEPALIVE_S, "expiry": expiry_s},
            "floor": {"t1": 2.0, "t2": 10.0},
        }
    )


# --- results -------------------------------------------------------------------------------------------


@dataclass
class Failure:
    kind: str  # exception, hang, slow, accounting, output, witness, invariant, time_limit, final
    detail: str
    index: int | None = None  # which input (0-based); None: not tied to one input
    mutator: str | None = None
    data: str | None = None  # the input, hex

    def text(self) -> str:
        at = f" at input {self.index} ({self.mutator})" if self.index is not None else ""
        data = f"\n    input: {self.data}" if self.data else ""
        return f"{self.kind}{at}: {self.detail}{data}"


@dataclass
class Report:
    seed: int
    inputs: int = 0
    elapsed_s: float = 0.0
    max_input_ms: float = 0.0
    virtual_s: float = 0.0
    corpus: dict[str, int] = field(default_factory=dict)
    mutators: dict[str, int] = field(default_factory=dict)
    mutator_accepted: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    witness: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def inputs_per_s(self) -> float:
        return self.inputs / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def drops(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counters.items()) if k.startswith("drop_")}

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "inputs": self.inputs,
            "elapsed_s": round(self.elapsed_s, 3),
            "inputs_per_s": round(self.inputs_per_s, 1),
            "max_input_ms": round(self.max_input_ms, 3),
            "virtual_s": round(self.virtual_s, 3),
            "ok": self.ok,
            "corpus": self.corpus,
            "mutators": self.mutators,
            "mutator_accepted": self.mutator_accepted,
            "counters": self.counters,
            "witness": self.witness,
            "failures": [f.__dict__ for f in self.failures],
        }

    def summary(self) -> str:
        c = self.counters
        lines = [
            f"opmob fuzz relay: seed {self.seed}: {self.inputs} inputs in {self.elapsed_s:.1f} s "
            f"({self.inputs_per_s:.0f} inputs/s), slowest input {self.max_input_ms:.2f} ms, "
            f"{self.virtual_s:.0f} s of virtual time",
            f"  corpus: {sum(self.corpus.values())} datagrams, {len(self.corpus)} kinds",
            f"  relay: rx_datagrams {c.get('rx_datagrams', 0)} = accepted {c.get('accepted', 0)} "
            f"+ dropped {sum(self.drops().values())}",
            "  drops: " + ", ".join(f"{k[5:]} {v}" for k, v in self.drops().items()),
            "  mutators (inputs / accepted): "
            + ", ".join(
                f"{k} {v}/{self.mutator_accepted.get(k, 0)}" for k, v in sorted(self.mutators.items())
            ),
            "  witnesses: " + ", ".join(f"{k} {v}" for k, v in sorted(self.witness.items())),
        ]
        if self.ok:
            lines.append("  OK: no exception, no hang, every datagram counted, witnesses unharmed")
        else:
            lines.append(f"  FAILED ({len(self.failures)}):")
            lines += ["  - " + f.text() for f in self.failures]
        return "\n".join(lines)


class FuzzFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.text())
        self.failure = failure


# --- the in-memory network ---------------------------------------------------------------------------


class Net:
    """The relay and the devices in an ``opmob.sim.Sim``: datagrams are delivered in send order, at
    once. ``now`` is the cores' clock (ticks), ``t`` the virtual ms since the start (``at``, ``run``)."""

    def __init__(self, relay: Any, now: int) -> None:
        from opmob.sim import Sim

        self.sim = Sim(seed=1, start=now)
        self.relay = relay
        self.sim.attach(relay, RELAY_ADDR)
        self.tap: Callable[[Addr, bytes], None] | None = None
        self.recent: deque[bytes] = deque(maxlen=512)  # what the devices sent lately: for replays
        self.on_events: Callable[[Addr, Any], None] | None = None
        self.sim.taps.append(self._seen)
        self.sim.after_call = self._called

    @property
    def now(self) -> int:
        now: int = self.sim.now
        return now

    @property
    def t(self) -> int:
        t: int = self.sim.t
        return t

    def _seen(self, ev: str, t: int, src: Any, dst: Any, data: bytes) -> None:
        if ev == "delivered" and dst == RELAY_ADDR:
            if self.tap is not None:
                self.tap(src, data)
            self.recent.append(data)

    def _called(self, addr: Any, node: Any) -> None:
        if node is not self.relay and node.events and self.on_events is not None:
            self.on_events(addr, node)

    def attach(self, addr: Addr, d: Any) -> None:
        """Device ``d`` at ``addr`` (in place of whatever was there)."""
        self.sim.attach(d, addr)

    def detach(self, addr: Addr) -> None:
        self.sim.detach(addr)

    def send(self, src: Addr, outs: Out) -> None:
        self.sim.send(src, outs)

    def act(self, addr: Addr, outs: Out) -> None:
        self.send(addr, outs)
        self.pump()

    def pump(self) -> None:
        self.sim.settle()

    def at(self, t: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` at virtual ms ``t``."""
        self.sim.at(t, fn)

    def run(self, until: int) -> None:
        """Move the clock to virtual ms ``until``, running every timer and scheduled action that falls due."""
        self.sim.run_until(until)


# --- the devices -----------------------------------------------------------------------------------------


class Cast:
    """The relay, its devices and what the witnesses saw."""

    def __init__(
        self, seed: int, relay_factory: Callable[..., Any] | None = None, expiry_s: int = EXPIRY_S
    ) -> None:
        from opmob.floorid import floor_ssrc
        from opmob.registry import Registry
        from opmob.relay import Relay
        from opmob.store import MemoryStore

        self.seed = seed
        self.store = MemoryStore()
        Registry(self.store, "no").load_export(registry_export(seed))
        self.registry = Registry(self.store, "no")
        factory = relay_factory or Relay
        self.relay = factory(
            relay_config(expiry_s), self.registry, self.store, random.Random(seed).randbytes, 0
        )
        self.net = Net(self.relay, 0)
        self.net.on_events = self._events
        self.addr: dict[str, Addr] = {}
        self.devs: dict[str, Any] = {}
        self.names: dict[Addr, str] = {}
        self.granted: dict[str, list[str]] = {}  # witness -> groups it was granted, since asked
        self.heard: dict[str, list[bytes]] = {}  # witness -> voice it heard, since asked
        self.rtp_seq: dict[str, int] = {}
        self.failures: list[Failure] = []
        self.lost: list[tuple[float, str]] = []
        self.refused: dict[
            str, dict[int, int]
        ] = {}  # device -> REGISTER_REJECT cause -> count, since registered
        self.stats: dict[str, int] = dict.fromkeys(
            ("bursts", "granted", "voice_sent", "voice_heard", "reregistrations", "relay_lost"), 0
        )
        self._n = 0
        self.floor_groups = {floor_ssrc(g): g for g in list(WITNESS_MEMBERS) + list(INSIDER_GROUPS)}

    def device(
        self,
        name: str,
        groups: list[str] | tuple[str, ...] = (),
        secret: bytes | None = None,
        start: bool = True,
        **kw: Any,
    ) -> Any:
        from opmob.device import DeviceSession

        addr = self.addr.get(name)
        if addr is None:
            self._n += 1
            addr = (f"198.51.100.{self._n}", 5000 + self._n)
            self.addr[name] = addr
            self.names[addr] = name
        rand = random.Random(f"{self.seed}/{name}/{self._n}/{len(self.devs)}").randbytes
        d = DeviceSession(
            ident(name),
            _secret(self.seed, name) if secret is None else secret,
            RELAY_ADDR,
            rand,
            groups=list(groups),
            **kw,
        )
        self.devs[name] = d
        self.net.attach(addr, d)
        self.granted[name] = []
        self.heard[name] = []
        if start:
            self.net.act(addr, d.start(self.net.now))
        return d

    def _events(self, addr: Addr, d: Any) -> None:
        from opmob import mcpt

        name = self.names.get(addr, "?")
        for e in d.events:
            k = e[0]
            if k == "voice":
                self.heard[name].append(e[1])
            elif k == "floor" and e[2].kind == mcpt.FLOOR_GRANTED:
                # By the floor server's SSRC: a device that named no groups cannot map it itself.
                self.granted[name].append(self.floor_groups.get(e[2].ssrc, "?"))
            elif k == "registered":
                self.stats["reregistrations"] += 1
                self.refused[name] = {}
            elif k == "rejected":
                r = self.refused.setdefault(name, {})
                r[e[1]] = r.get(e[1], 0) + 1
            elif k == "relay_lost":
                self.stats["relay_lost"] += 1
                self.lost.append((self.net.t / 1000, name))
                if name in WITNESSES:
                    # Nothing an input can do may cost a witness its relay.
                    self.fail("witness", f"{name}'s KEEPALIVE went unanswered at t={self.net.t / 1000:.3f}")
        d.events = []

    def act(self, name: str, outs: Out) -> None:
        self.net.act(self.addr[name], outs)

    def floor(self, name: str, kind: int, group: str | None = None, **fields: Any) -> Out:
        from opmob import mcpt

        d = self.devs[name]
        out: Out = d.send_floor(self.net.now, mcpt.FloorMsg(kind, **fields), group)
        return out

    def voice(self, name: str) -> tuple[bytes, Out]:
        from opmob import rtp

        seq = self.rtp_seq.get(name, 1000 + 97 * len(name))
        self.rtp_seq[name] = seq + 1
        hdr = rtp.RtpHeader(rtp.PT_DVI4_8K, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, 0)
        payload = bytes((seq * 7 + i) & 0xFF for i in range(84))
        pkt = rtp.encode(hdr, payload)
        return pkt, self.devs[name].send_voice(self.net.now, pkt)

    # --- witnesses' talk bursts during the storm ------------------------------------------------

    def burst(self, group: str, talker: str, then: Callable[[], None] | None = None) -> None:
        """Floor Request, 10 voice packets at 20 ms, Floor Release; every other member must hear them."""
        from opmob import mcpt

        net = self.net
        listeners = [n for n in WITNESS_MEMBERS[group] if n != talker]
        self.stats["bursts"] += 1
        self.granted[talker] = []
        for n in listeners:
            self.heard[n] = []
        sent: list[bytes] = []
        ind = mcpt.IND_QUEUEING_SUPPORTED
        self.act(talker, self.floor(talker, mcpt.FLOOR_REQUEST, group, indicator=ind))

        def talk(i: int) -> None:
            if i == 0:
                if group not in self.granted[talker]:
                    self.fail(
                        "witness",
                        f"{talker} asked for the floor of {group} at t={net.t / 1000:.3f} and was not granted "
                        f"({self.why(talker)})",
                    )
                    return
                self.stats["granted"] += 1
            if i < BURST_PACKETS:
                plain, outs = self.voice(talker)
                if not outs:
                    self.fail("witness", f"{talker} could not send voice ({self.why(talker)})")
                    return
                sent.append(plain)
                self.act(talker, outs)
                self.stats["voice_sent"] += 1
                net.at(net.t + 20, lambda: talk(i + 1))
                return
            self.act(talker, self.floor(talker, mcpt.FLOOR_RELEASE, group))
            ssrc = self.devs[talker].ssrc
            for n in listeners:
                got = [p[12:] for p in self.heard[n] if int.from_bytes(p[8:12], "big") == ssrc]
                self.stats["voice_heard"] += len(got)
                if got != [p[12:] for p in sent]:
                    self.fail(
                        "witness",
                        f"{n} heard {len(got)} of {len(sent)} voice packets {talker} sent to {group} "
                        f"at t={net.t / 1000:.3f} ({self.why(n)})",
                    )
            if then is not None:
                then()

        net.at(net.t + 100, lambda: talk(0))

    def why(self, name: str) -> str:
        """The device's state, and the refusals of its REGISTERs since it last registered."""
        d = self.devs[name]
        r = self.refused.get(name)
        more = ""
        if r:
            causes = ", ".join(f"cause {c} x{n}" for c, n in sorted(r.items()))
            more = f"; its REGISTERs were refused since it last registered: {causes}"
        return f"state {d.state}{more}"

    def fail(self, kind: str, detail: str) -> None:
        self.failures.append(Failure(kind, detail))


# --- the corpus: a real exchange, captured -------------------------------------------------------------------


@dataclass
class Seed:
    label: str
    data: bytes
    src: Addr


def _label(data: bytes, floor_label: str | None) -> str:
    from opmob import sig

    if data[:1] == b"O":
        return "sig:" + sig.type_name(data[3]) if len(data) > 3 else "sig:?"
    if len(data) > 1 and 192 <= data[1] <= 223:
        return "srtcp:" + (floor_label or "floor_ack")
    return "srtp:voice"


def capture_corpus(cast: Cast) -> list[Seed]:
    """Play the scripted exchange on ``cast`` (its devices then keep running) and keep every datagram."""
    from opmob import mcpt, sig

    net = cast.net
    seeds: list[Seed] = []
    ctx: list[str | None] = [None]

    def tap(src: Addr, data: bytes) -> None:
        label = _label(data, ctx[0])
        if label.startswith("srtcp:"):
            ctx[0] = None  # what follows in the same exchange are the devices' Floor Acks
        seeds.append(Seed(label, data, src))

    net.tap = tap

    def floor(name: str, label: str, kind: int, group: str | None = None, **fields: Any) -> None:
        ctx[0] = label  # names the first SRTCP datagram that reaches the relay: this one
        cast.act(name, cast.floor(name, kind, group, **fields))
        ctx[0] = None

    def step(dt: float) -> None:
        """``dt`` seconds on."""
        net.run(net.t + int(round(dt * 1000)))

    # Witnesses register with their groups (REGISTER, AUTH_RESPONSE) and talk a little.
    for n in WITNESSES:
        cast.device(n, wanted_groups(n))
    for n in INSIDERS:
        cast.device(n, [INSIDER_GROUPS[0]])
    cast.device(STUNNED_DEVICE, list(INSIDER_GROUPS))
    step(0.5)
    # AFFILIATE, DEAFFILIATE, AFFILIATION_QUERY (insiders).
    for n in INSIDERS:
        cast.act(n, cast.devs[n].affiliate(net.now, [(INSIDER_GROUPS[1], 5, sig.AFF_SCAN)]))
        cast.act(n, cast.devs[n].affiliate(net.now, ["fz-alpha@no", "nope@no", "x@se"]))
    cast.act("i-gus", cast.devs["i-gus"].deaffiliate(net.now, ["fz-alpha@no"]))
    cast.act("i-hal", cast.devs["i-hal"]._request(net.now, sig.AFFILIATION_QUERY))
    # Floor control: request, queue, queue position, release, emergency pre-emption.
    a = "fz-alpha@no"
    q = mcpt.IND_QUEUEING_SUPPORTED
    floor("w-ann", "floor_request", mcpt.FLOOR_REQUEST, a, indicator=q, priority=10)
    step(0.05)
    for _ in range(5):
        _plain, outs = cast.voice("w-ann")
        cast.act("w-ann", outs)
        step(0.02)
    floor("w-bob", "floor_request", mcpt.FLOOR_REQUEST, a, indicator=q, priority=5)
    floor("w-bob", "queue_position_request", mcpt.FLOOR_QUEUE_POSITION_REQUEST, a)
    floor("w-ann", "floor_release", mcpt.FLOOR_RELEASE, a)
    step(0.1)
    floor("w-bob", "floor_release", mcpt.FLOOR_RELEASE, a)
    x = INSIDER_GROUPS[0]
    floor("i-gus", "floor_request", mcpt.FLOOR_REQUEST, x, indicator=q)
    for _ in range(3):
        _plain, outs = cast.voice("i-gus")
        cast.act("i-gus", outs)
        step(0.02)
    floor("i-hal", "emergency_request", mcpt.FLOOR_REQUEST, x, indicator=q | mcpt.IND_EMERGENCY)
    step(0.05)
    for _ in range(3):
        _plain, outs = cast.voice("i-hal")
        cast.act("i-hal", outs)
        step(0.02)
    floor("i-hal", "floor_release", mcpt.FLOOR_RELEASE, x)
    # Emergency alert and cancel (the members answer EMERGENCY_ACK).
    cast.act("i-ivy", cast.devs["i-ivy"].emergency(net.now, x, location=(599100000, 107500000, 12, 3)))
    step(0.2)
    cast.act("i-ivy", cast.devs["i-ivy"].cancel_emergency(net.now, x))
    cast.act("i-hal", cast.devs["i-hal"].cancel_emergency(net.now, None))
    step(0.2)
    # Stun and revive (DEVICE_CONTROL_ACK), a dispatcher's emergency cancel.
    net.send(RELAY_ADDR, cast.relay.device_control(net.now, ident("i-jon"), "stun"))
    step(0.2)
    net.send(RELAY_ADDR, cast.relay.device_control(net.now, ident("i-jon"), "revive"))
    step(0.2)
    net.send(RELAY_ADDR, cast.relay.cancel_emergency(net.now, x))
    step(0.2)
    # Keep-alives.
    step(KEEPALIVE_S + 1.0)
    # De-registration, and registering again.
    cast.act("i-gus", cast.devs["i-gus"].deregister(net.now))
    step(0.5)
    cast.act("i-gus", cast.devs["i-gus"].start(net.now))
    step(0.5)
    # A device that refuses the relay's AUTN (wrong secret): AUTH_FAILURE AUTN_INVALID.
    rogue = cast.device("x-rogue", [x], secret=bytes(16), start=False)
    rogue.identity = ident("i-jon")
    cast.act("x-rogue", rogue.start(net.now))
    step(0.5)
    # A device that has seen vector ids ahead of the registry: AUTH_FAILURE SYNC_FAILURE, resync.
    ahead = cast.device("i-ivy", [x], vid_state=(1_000_000, 1), start=False)
    cast.act("i-ivy", ahead.start(net.now))
    step(0.5)
    # Unknown, killed and foreign identities, from addresses the relay never saw.
    for name, who in (("x-ghost", "ghost"), ("x-killed", KILLED_DEVICE), ("x-foreign", "visitor")):
        d = cast.device(name, [x], start=False)
        if name == "x-foreign":
            d.identity = "visitor@se"
        else:
            d.identity = ident(who)
        cast.act(name, d.start(net.now))
    step(1.0)
    for name in ("x-rogue", "x-ghost", "x-killed", "x-foreign"):
        # They go on retrying with back-off; they have given the corpus what it needs.
        net.detach(cast.addr[name])
        del cast.devs[name]
    step(1.0)
    net.tap = None
    return seeds


# --- mutation --------------------------------------------------------------------------------------------

MUTATORS = (
    "replay",
    "replay_recent",
    "bitflip",
    "byteset",
    "truncate",
    "extend",
    "splice",
    "ranges",
    "header",
    "stacked",
    "random",
    "authentic",
)
INTERESTING = b"\x00\x01\x02\x03\x0f\x10\x1f\x20\x3f\x40\x4f\x7f\x80\x81\xbf\xc0\xc8\xcc\xdf\xe0\xfe\xff"


class Mutator:
    """Makes inputs from the corpus; every choice comes from one seeded ``random.Random``."""

    def __init__(self, rng: random.Random, cast: Cast, corpus: list[Seed]) -> None:
        from opmob import mcpt, sig
        from opmob.floorid import floor_ssrc

        self.r = rng
        self.cast = cast
        self.corpus = [s.data for s in corpus]
        self.sig_types = sorted(sig.MESSAGES)
        self.requests = [t for t in self.sig_types if t < 0x80]
        self.floor_kinds = sorted(mcpt.MESSAGE_NAMES)
        self.floor_ssrcs = [floor_ssrc(g) for g in list(WITNESS_MEMBERS) + list(INSIDER_GROUPS)]
        self.sig_bodies = self._sig_bodies()
        self.ops: list[tuple[str, Callable[[], bytes]]] = [
            ("replay", self.replay),
            ("replay_recent", self.replay_recent),
            ("bitflip", lambda: self.bitflip(self.pick())),
            ("byteset", lambda: self.byteset(self.pick())),
            ("truncate", lambda: self.truncate(self.pick())),
            ("extend", lambda: self.extend(self.pick())),
            ("splice", lambda: self.splice(self.pick())),
            ("ranges", lambda: self.ranges(self.pick())),
            ("header", lambda: self.header(self.pick())),
            ("stacked", self.stacked),
            ("random", self.random_bytes),
            ("authentic", self.authentic),
        ]
        self.weights = [4, 4, 8, 8, 6, 5, 5, 5, 14, 8, 6, 14]
        assert tuple(n for n, _ in self.ops) == MUTATORS and len(self.weights) == len(MUTATORS)

    def _sig_bodies(self) -> list[bytes]:
        from opmob import sig

        msgs = [
            sig.SigMsg(sig.AFFILIATE, affiliations=[("fz-xray@no", 1, 0), ("fz-alpha@no", 255, 3)]),
            sig.SigMsg(sig.DEAFFILIATE, groups=["fz-yankee@no", "fz-bravo@no"]),
            sig.SigMsg(sig.EMERGENCY_ALERT, group="fz-xray@no", location=(1, 2, 3, 4)),
            sig.SigMsg(sig.EMERGENCY_CANCEL, group="fz-yankee@no"),
            sig.SigMsg(sig.AFFILIATION_QUERY, identity="w-ann@no"),
            sig.SigMsg(sig.DEREGISTER, cause=sig.CAUSE_POWER_OFF),
            sig.SigMsg(sig.KEEPALIVE),
        ]
        return [bytes(sig.encode_body(m)) for m in msgs]

    # --- picking ----------------------------------------------------------------------------------

    def pick(self) -> bytes:
        return self.r.choice(self.corpus)

    def next(self) -> tuple[str, bytes]:
        name, op = self.r.choices(self.ops, self.weights)[0]
        return name, op()

    def source(self) -> Addr:
        """Where the input claims to come from: a device's own address (spoofed) or a stranger's."""
        r = self.r
        x = r.random()
        if x < 0.3:
            return r.choice(list(self.cast.addr.values()))
        if x < 0.35:
            return RELAY_ADDR
        return (f"203.0.113.{r.randrange(1, 255)}", r.randrange(1, 65536))

    # --- byte-level mutations --------------------------------------------------------------------------

    def replay(self) -> bytes:
        return self.pick()

    def replay_recent(self) -> bytes:
        recent = self.cast.net.recent
        return recent[self.r.randrange(len(recent))] if recent else self.pick()

    def bitflip(self, p: bytes) -> bytes:
        r = self.r
        b = bytearray(p)
        if b:
            for _ in range(1 if r.random() < 0.6 else r.randrange(2, 9)):
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        return bytes(b)

    def byteset(self, p: bytes) -> bytes:
        r = self.r
        b = bytearray(p)
        if b:
            for _ in range(r.randrange(1, 5)):
                b[r.randrange(len(b))] = r.choice(INTERESTING) if r.random() < 0.5 else r.randrange(256)
        return bytes(b)

    def truncate(self, p: bytes) -> bytes:
        r = self.r
        n = len(p)
        cut = r.choice(
            (
                0,
                1,
                2,
                3,
                4,
                7,
                8,
                11,
                12,
                15,
                16,
                17,
                20,
                31,
                n - 1,
                n - 4,
                n - 10,
                n - 14,
                n - 16,
                n - 17,
                r.randrange(n + 1),
            )
        )
        return p[: max(0, min(n, cut))]

    def extend(self, p: bytes) -> bytes:
        r = self.r
        x = r.random()
        if x < 0.4:
            return p + r.randbytes(r.randrange(1, 65))
        if x < 0.6:
            return p + bytes(r.choice((1, 2, 3, 4, 10, 16, 32)))
        if x < 0.8:
            i = r.randrange(len(p) + 1)
            return p[:i] + r.randbytes(r.randrange(1, 17)) + p[i:]
        # Near and past the 1500-byte limit.
        target = r.choice((1499, 1500, 1501, 1600, 4000, r.randrange(1, 2000)))
        return (p * (target // max(1, len(p)) + 1))[:target]

    def splice(self, p: bytes) -> bytes:
        r = self.r
        q = self.pick()
        i = r.randrange(len(p) + 1)
        j = r.randrange(len(q) + 1)
        return p[:i] + q[j:] if r.random() < 0.7 else p + q

    def ranges(self, p: bytes) -> bytes:
        r = self.r
        if not p:
            return p
        i = r.randrange(len(p))
        j = min(len(p), i + r.randrange(1, 33))
        if r.random() < 0.5:
            return p[:i] + p[j:]
        return p[:j] + p[i:j] * r.randrange(1, 4) + p[j:]

    def random_bytes(self) -> bytes:
        r = self.r
        n = r.choice((0, 1, 2, 3, 8, 12, 16, 20, 28, 32, 40, 64, 100, r.randrange(200), r.randrange(1600)))
        b = bytearray(r.randbytes(n))
        if b:
            x = r.random()
            if x < 0.35:
                b[0:2] = b"OM"[: len(b)]
            elif x < 0.85:
                b[0] = 0x80 | (b[0] & 0x3F)
                if len(b) > 1 and x < 0.6:
                    b[1] = r.randrange(192, 224)
        return bytes(b)

    def stacked(self) -> bytes:
        p = self.pick()
        for _ in range(self.r.randrange(2, 5)):
            op = self.r.choice(
                (
                    self.bitflip,
                    self.byteset,
                    self.truncate,
                    self.extend,
                    self.splice,
                    self.ranges,
                    self.header,
                )
            )
            p = op(p)
        return p

    # --- header-field-aware mutations ------------------------------------------------------------------

    def _live_sessions(self) -> list[int]:
        return list(self.cast.relay._sessions) or [0]

    def _ssrc(self) -> int:
        r = self.r
        x = r.random()
        if x < 0.5:
            live = list(self.cast.relay._by_ssrc)
            if live:
                return int(r.choice(live))
        if x < 0.75:
            return r.choice(self.floor_ssrcs)
        return r.choice((0, 1, 0xFFFFFFFF, r.getrandbits(32)))

    def header(self, p: bytes) -> bytes:
        if not p:
            return p
        if p[0] == 0x4F:
            return self._sig_header(p)
        if p[0] >> 6 == 2 and len(p) > 1 and 192 <= p[1] <= 223:
            return self._rtcp_header(p)
        return self._rtp_header(p)

    def _put(self, b: bytearray, off: int, n: int, v: int) -> None:
        if len(b) >= off + n:
            b[off : off + n] = (v & ((1 << (8 * n)) - 1)).to_bytes(n, "big")

    def _sig_header(self, p: bytes) -> bytes:
        r = self.r
        b = bytearray(p)
        f = r.randrange(8)
        if f == 0:
            self._put(b, 2, 1, r.choice((0, 1, 2, 255)))  # version
        elif f == 1:
            self._put(b, 3, 1, r.choice(self.sig_types) if r.random() < 0.8 else r.randrange(256))  # type
        elif f == 2:
            self._put(b, 4, 1, r.choice((0, 1, 2, 3, 4, 0x80, 0xFF)))  # flags: P, D, unknown bits
        elif f == 3:
            self._put(b, 5, 1, r.randrange(1, 256))  # reserved
        elif f == 4:
            n = len(b) - 16
            self._put(
                b,
                6,
                2,
                r.choice((0, 1, n - 1, n + 1, n - 16, n - 15, n + 16, 0x7FFF, 0xFFFF, r.randrange(1300))),
            )
        elif f == 5:
            txid = int.from_bytes(b[8:12], "big") if len(b) >= 12 else 0
            self._put(b, 8, 4, r.choice((0, 0xFFFFFFFF, txid + 1, txid - 1, txid + 64, r.getrandbits(32))))
        elif f == 6:
            self._put(b, 12, 4, r.choice(self._live_sessions()) if r.random() < 0.7 else r.getrandbits(32))
        else:
            # A body that is not TLVs, or TLVs with lengths that overrun.
            if len(b) > 18:
                i = r.randrange(16, len(b) - 1)
                b[i] = r.choice(INTERESTING)
                b[i + 1] = r.choice((0, 1, 0x7F, 0xFF))
        return bytes(b)

    def _rtp_header(self, p: bytes) -> bytes:
        r = self.r
        b = bytearray(p)
        if len(b) < 12:
            return self.extend(p)
        f = r.randrange(8)
        if f == 0:
            b[0] = 0x80 | r.randrange(64) if r.random() < 0.8 else r.randrange(256)  # P, X, CC
        elif f == 1:
            b[1] = r.choice((0x05, 0x85, 0x40 | 0x80, 0x5F | 0x80, 0x60, r.randrange(256)))  # M, PT
        elif f == 2:
            seq = int.from_bytes(b[2:4], "big")
            self._put(
                b,
                2,
                2,
                r.choice((seq + 1, seq - 1, seq + 0x4000, seq + 0x8000, 0, 0xFFFF, r.getrandbits(16))),
            )
        elif f == 3:
            self._put(b, 4, 4, r.getrandbits(32))
        elif f == 4:
            self._put(b, 8, 4, self._ssrc())
        elif f == 5:
            b[0] |= 0x20  # padding, with a count that may exceed the packet
            b[-1] = r.choice((0, 1, 4, len(b) - 12, len(b), 255)) & 0xFF
        elif f == 6:
            b[0] = (b[0] | 0x10) & 0xF0  # extension header with any length
            if len(b) >= 16:
                self._put(b, 14, 2, r.choice((0, 1, 2, (len(b) - 16) // 4, 0xFFFF, r.randrange(64))))
        else:
            b[0] = (b[0] & 0xF0) | r.randrange(16)  # CSRCs the packet may not hold
        return bytes(b)

    def _rtcp_header(self, p: bytes) -> bytes:
        r = self.r
        b = bytearray(p)
        if len(b) < 8:
            return self.extend(p)
        f = r.randrange(8)
        if f == 0:
            b[0] = 0x80 | r.randrange(64)  # P bit, subtype (incl. the ack bit on any kind)
        elif f == 1:
            b[1] = r.randrange(192, 224)  # other RTCP types
        elif f == 2:
            n = len(b) // 4 - 1
            self._put(b, 2, 2, r.choice((0, 1, n, n - 5, n - 6, n + 1, 0xFFFF, r.randrange(400))))
        elif f == 3:
            self._put(b, 4, 4, self._ssrc())
        elif f == 4 and len(b) >= 8 + 4 + 10:
            # SRTCP trailer: E flag and index.
            i = len(b) - 14
            word = int.from_bytes(b[i : i + 4], "big")
            idx = word & 0x7FFFFFFF
            choice = r.randrange(5)
            if choice == 0:
                word &= 0x7FFFFFFF  # E = 0: unencrypted, refused
            elif choice == 1:
                word = 0x80000000 | ((idx + r.choice((1, -1, 0x40000000))) & 0x7FFFFFFF)
            elif choice == 2:
                word = 0x80000000 | 0x7FFFFFFF
            else:
                word = r.getrandbits(32)
            self._put(b, i, 4, word)
        elif f == 5 and len(b) >= 10:
            b[-r.randrange(1, 11)] ^= 1 << r.randrange(8)  # the tag
        elif f == 6:
            b[8:12] = b"MCPT"  # a plain name where ciphertext belongs
        else:
            b[0] = 0xA0 | (b[0] & 0x1F)
            b[-1] = r.choice((0, 3, 4, 255))
        return bytes(b)

    # --- authentic garbage: an insider's real keys --------------------------------------------------------

    def authentic(self) -> bytes:
        from opmob.errors import WireError

        r = self.r
        live = [n for n in INSIDERS if self.cast.devs[n].state == "registered"]
        if not live:
            return self.header(self.pick())
        name = r.choice(live)
        d = self.cast.devs[name]
        for _ in range(4):
            try:
                k = r.randrange(3)
                if k == 0:
                    return self._auth_sig(d)
                if k == 1:
                    return self._auth_rtcp(d)
                return self._auth_rtp(name, d)
            except (WireError, ValueError, TypeError, OverflowError):
                continue
        return self.pick()

    def _mutate_plain(self, p: bytes) -> bytes:
        r = self.r
        x = r.random()
        if x < 0.4:
            return p
        op = r.choice((self.bitflip, self.byteset, self.truncate, self.extend, self.ranges))
        return op(p)

    def _auth_sig(self, d: Any) -> bytes:
        from opmob import sig

        r = self.r
        x = r.random()
        if x < 0.6:
            mtype = r.choice(self.requests)
        elif x < 0.8:
            mtype = r.choice(self.sig_types)
        else:
            mtype = r.randrange(256)
        if r.random() < 0.5:
            body = self._mutate_plain(r.choice(self.sig_bodies))
        else:
            body = r.randbytes(r.randrange(0, 120))
        txid = d._txns.new_txid() if r.random() < 0.9 else r.getrandbits(32)
        out: bytes = sig.frame(mtype, body[:1100], txid=txid, session=d.session, key=d._tx)
        return out

    def _auth_rtcp(self, d: Any) -> bytes:
        from opmob import mcpt

        r = self.r
        if r.random() < 0.6:
            msgs = []
            for _ in range(r.choice((1, 1, 1, 2, 3))):
                kind = r.choice(self.floor_kinds)
                m = mcpt.FloorMsg(
                    kind,
                    d.ssrc,
                    ack_req=kind in mcpt.ACK_KINDS and r.random() < 0.3,
                    priority=r.choice((None, 0, 1, 100, 200, 254, 255)),
                    indicator=r.choice(
                        (
                            None,
                            mcpt.IND_NORMAL,
                            mcpt.IND_EMERGENCY,
                            mcpt.IND_IMMINENT_PERIL,
                            mcpt.IND_QUEUEING_SUPPORTED,
                            r.getrandbits(16),
                        )
                    ),
                    ssrc_field=r.choice((None, None, r.choice(self.floor_ssrcs), r.getrandbits(32))),
                    reject_cause=r.choice((None, 1, 4, 255)),
                    msg_type=r.choice((None, r.randrange(16))),
                )
                msgs.append(bytes(mcpt.encode(m)))
            plain = b"".join(msgs)
            if r.random() < 0.3:
                plain = plain[:8] + self._mutate_plain(plain[8:])
        else:
            body = b"MCPT" + r.randbytes(r.randrange(0, 64))
            body += bytes((4 - len(body) % 4) % 4)
            plain = (
                bytes((0x80 | r.randrange(32), r.choice((204, 204, 200, 201, 202, 203))))
                + ((len(body) // 4 + 1) & 0xFFFF).to_bytes(2, "big")
                + d.ssrc.to_bytes(4, "big")
                + body
            )
        out: bytes = d._up.protect_rtcp(plain)
        return out

    def _auth_rtp(self, name: str, d: Any) -> bytes:
        from opmob import rtp

        r = self.r
        seq = self.cast.rtp_seq.get(name, 1000) + r.choice((1, 1, 1, 2, 100, 0x3FFF, 0x4000, 0x9000))
        self.cast.rtp_seq[name] = seq
        hdr = rtp.RtpHeader(
            r.randrange(128), seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, d.ssrc, marker=r.random() < 0.1
        )
        pkt = bytearray(rtp.encode(hdr, r.randbytes(r.choice((0, 1, 84, 84, 160, r.randrange(400))))))
        if r.random() < 0.2:
            pkt[0] = 0x80 | r.randrange(64)  # padding, extension and CSRC bits the body may not hold
        out: bytes = d._up.protect(bytes(pkt))
        return out


# --- the watchdog --------------------------------------------------------------------------------------------


class Watchdog:
    """Interrupts the main thread when one input has run for ``hang_s``: a hang is reported, not waited out."""

    def __init__(self, hang_s: float) -> None:
        self.hang_s = hang_s
        self.started: float | None = None
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fuzz-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        period = min(0.25, self.hang_s / 4)
        while not self._stop.wait(period):
            t = self.started
            if t is not None and time.perf_counter() - t > self.hang_s and not self.fired:
                self.fired = True
                _thread.interrupt_main()


# --- the run -------------------------------------------------------------------------------------------------


def _drops(c: dict[str, int]) -> int:
    n = 0
    for k, v in c.items():
        if k.startswith("drop_"):
            n += v
    return n


def _check_invariants(relay: Any) -> str | None:
    from opmob.relay_session import CHALLENGED, REGISTERED, STALE, STUNNED

    c = relay.counters
    if c["rx_datagrams"] != c["accepted"] + _drops(c):
        return f"rx_datagrams {c['rx_datagrams']} != accepted {c['accepted']} + dropped {_drops(c)}"
    challenged = sum(1 for s in relay._sessions.values() if s.state == CHALLENGED)
    if challenged != relay.sessions.challenges:
        return (
            f"{challenged} sessions wait for AUTH_RESPONSE but the relay counts {relay.sessions.challenges}"
        )
    if len(relay._by_identity) > relay.cfg.max_devices:
        return f"{len(relay._by_identity)} registrations, over max_devices {relay.cfg.max_devices}"
    for ssrc, s in relay._by_ssrc.items():
        if s.ssrc != ssrc or relay._by_identity.get(s.identity) is not s:
            return f"SSRC {ssrc} indexes a session that is not {s.identity}'s registration"
        if s.state not in (REGISTERED, STUNNED, STALE):
            return f"SSRC {ssrc} indexes a {s.state} session"
    json.dumps(relay.status())
    return None


def _witness_checks(cast: Cast) -> None:
    """After the storm: every witness, power-cycled, registers and finds its groups and calls intact."""
    net = cast.net
    status = cast.relay.status()
    by_id = {d["identity"]: d for d in status["devices"]}
    for n in WITNESSES:
        entry = by_id.get(ident(n))
        if (
            entry is None
            or entry["state"] != "registered"
            or sorted(entry["groups"]) != sorted(wanted_groups(n))
        ):
            cast.fail("final", f"after the storm the relay shows {n} as {entry}")
    # Power-cycle: a new session on the same address; half of them name no groups in REGISTER,
    # so only the relay's memory can give them their affiliations back.
    for i, n in enumerate(WITNESSES):
        cast.device(n, wanted_groups(n) if i % 2 else ())
    net.run(net.t + 70000)
    status = cast.relay.status()
    by_id = {d["identity"]: d for d in status["devices"]}
    for i, n in enumerate(WITNESSES):
        d = cast.devs[n]
        entry = by_id.get(ident(n))
        if d.state != "registered":
            cast.fail("final", f"{n} did not register again after the storm ({cast.why(n)})")
            continue
        if entry is None or sorted(entry["groups"]) != sorted(wanted_groups(n)):
            cast.fail("final", f"{n}'s affiliations after re-registration: {entry and entry['groups']}")
        if i % 2 and sorted(d.affiliated) != sorted(wanted_groups(n)):
            cast.fail("final", f"{n} was told it is affiliated to {d.affiliated}")
    if cast.failures:
        return
    # Those that named no groups now AFFILIATE to them: the relay must confirm each one.
    for n in WITNESSES[::2]:
        cast.act(n, cast.devs[n].affiliate(net.now, wanted_groups(n)))
    net.run(net.t + 5000)
    for n in WITNESSES[::2]:
        if sorted(cast.devs[n].affiliated) != sorted(wanted_groups(n)):
            cast.fail("final", f"{n} asked to affiliate to {wanted_groups(n)}, got {cast.devs[n].affiliated}")
    if cast.failures:
        return
    # Every witness gets the floor in each of its groups, and every other member hears it.
    done: list[int] = [0]
    plan = [(g, t) for g, members in WITNESS_MEMBERS.items() for t in members]

    def next_burst() -> None:
        if done[0] < len(plan):
            g, t = plan[done[0]]
            done[0] += 1
            cast.burst(g, t, next_burst)

    next_burst()
    net.run(net.t + 2000 + 500 * len(plan))
    if done[0] < len(plan) and not cast.failures:
        cast.fail("final", f"only {done[0]} of {len(plan)} final talk bursts ran")


def run(
    inputs: int,
    seed: int = 1,
    *,
    input_limit_s: float = 1.0,
    hang_s: float | None = None,
    max_seconds: float = 3600.0,
    dt_s: float = 0.002,
    expiry_s: int = EXPIRY_S,
    relay_factory: Callable[..., Any] | None = None,
    progress: Callable[[str], None] | None = None,
    check_every: int = 2000,
) -> Report:
    """Fuzz the relay core with ``inputs`` datagrams from seed ``seed``; see the module docstring.

    ``input_limit_s``: the longest one input may take (wall clock) before it counts as too slow;
    ``hang_s``: when the watchdog interrupts it (default: 5 x the limit, at least 2 s);
    ``max_seconds``: the whole run's limit; ``dt_s``: mean virtual time between inputs;
    ``expiry_s``: the registrations' expiry (the witnesses re-register at 80 % of it).
    """
    rep = Report(seed=seed)
    rng = random.Random(seed)
    cast = Cast(seed, relay_factory, expiry_s)
    net = cast.net
    relay = cast.relay
    try:
        corpus = capture_corpus(cast)
    except Exception as e:
        rep.failures.append(Failure("exception", f"while capturing the corpus: {_exc(e)}"))
        return rep
    for s in corpus:
        rep.corpus[s.label] = rep.corpus.get(s.label, 0) + 1
    missing = [label for label in REQUIRED_LABELS if label not in rep.corpus]
    if missing:
        rep.failures.append(Failure("corpus", f"the scripted exchange produced no {', '.join(missing)}"))
    mut = Mutator(rng, cast, corpus)
    # Witnesses talk through the storm: a burst in one of their groups every BURST_EVERY_S.
    plan = [(g, t) for g, members in WITNESS_MEMBERS.items() for t in members]
    turn = [0]

    def next_burst() -> None:
        g, t = plan[turn[0] % len(plan)]
        turn[0] += 1
        cast.burst(g, t)
        net.at(net.t + int(BURST_EVERY_S * 1000), next_burst)

    net.at(net.t + 1000, next_burst)
    start_virtual = net.t
    c = relay.counters
    t_start = time.perf_counter()
    hang = hang_s if hang_s is not None else max(2.0, 5 * input_limit_s)
    max_in = 0.0
    perf = time.perf_counter
    name, data = "", b""
    fed = 0
    in_core = False
    with Watchdog(hang) as wd:
        try:
            for i in range(inputs):
                wd.started = perf()  # the watchdog covers the devices' traffic between inputs too
                net.run(net.t + int(rng.random() * 2 * dt_s * 1000 + 0.5))
                if cast.failures:
                    break
                try:
                    name, data = mut.next()
                    src = mut.source()
                except Exception as e:
                    raise FuzzFailure(
                        Failure("fuzzer", "the mutator failed (a bug here): " + _exc(e), i)
                    ) from None
                rep.mutators[name] = rep.mutators.get(name, 0) + 1
                rx0 = c["rx_datagrams"]
                acc0 = c["accepted"]
                seen0 = acc0 + _drops(c)
                fed = i + 1
                t0 = perf()
                wd.started = t0
                in_core = True
                try:
                    out = relay.on_datagram(net.now, src, data)
                except Exception as e:
                    raise FuzzFailure(Failure("exception", _exc(e), i, name, data.hex())) from None
                dt = perf() - t0
                in_core = False
                if dt > max_in:
                    max_in = dt
                if dt > input_limit_s:
                    raise FuzzFailure(
                        Failure(
                            "slow",
                            f"on_datagram took {dt:.3f} s (limit {input_limit_s} s)",
                            i,
                            name,
                            data.hex(),
                        )
                    )
                if c["accepted"] > acc0:
                    rep.mutator_accepted[name] = rep.mutator_accepted.get(name, 0) + 1
                if c["rx_datagrams"] != rx0 + 1 or c["accepted"] + _drops(c) != seen0 + 1:
                    raise FuzzFailure(
                        Failure(
                            "accounting",
                            f"rx_datagrams moved by {c['rx_datagrams'] - rx0}, accepted + drops by "
                            f"{c['accepted'] + _drops(c) - seen0}; both must move by exactly 1",
                            i,
                            name,
                            data.hex(),
                        )
                    )
                bad = _bad_output(out)
                if bad is not None:
                    raise FuzzFailure(Failure("output", bad, i, name, data.hex()))
                # Always: the relay's deadline may have moved even when it answered nothing.
                net.send(RELAY_ADDR, out)
                if out:
                    net.pump()
                if i % check_every == 0:
                    problem = _check_invariants(relay)
                    if problem is not None:
                        raise FuzzFailure(Failure("invariant", problem, i, name, data.hex()))
                    if perf() - t_start > max_seconds:
                        raise FuzzFailure(Failure("time_limit", f"the run took over {max_seconds} s", i))
                    if progress is not None and i and i % (check_every * 50) == 0:
                        el = perf() - t_start
                        progress(f"{i} inputs, {i / el:.0f}/s, {net.t / 1000:.0f} s virtual")
            wd.started = None
        except FuzzFailure as f:
            rep.failures.append(f.failure)
        except KeyboardInterrupt:
            wd.started = None
            if not wd.fired:
                raise
            if in_core:
                rep.failures.append(
                    Failure(
                        "hang", f"on_datagram still running after {hang:.1f} s", fed - 1, name, data.hex()
                    )
                )
            else:
                rep.failures.append(Failure("hang", f"the devices' traffic ran for over {hang:.1f} s", fed))
        except Exception as e:
            # From the devices' own traffic or the relay's timers, between inputs.
            rep.failures.append(Failure("exception", "between inputs: " + _exc(e), fed))
        rep.inputs = fed
    rep.elapsed_s = time.perf_counter() - t_start
    rep.max_input_ms = max_in * 1000
    rep.virtual_s = (net.t - start_virtual) / 1000
    rep.failures.extend(cast.failures)
    cast.failures = []
    if rep.ok:
        try:
            net.sim.discard_actions()
            _witness_checks(cast)
            problem = _check_invariants(relay)
            if problem is not None:
                cast.fail("invariant", problem)
            for n in WITNESSES:
                dc = cast.devs[n].counters
                if dc["rx_datagrams"] != dc["accepted"] + _drops(dc):
                    cast.fail("accounting", f"device {n}: {dc}")
        except Exception as e:
            cast.fail("exception", "after the storm: " + _exc(e))
        rep.failures.extend(cast.failures)
    rep.counters = dict(relay.counters)
    rep.witness = dict(cast.stats)
    return rep


def _exc(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-4:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(e).__name__}: {e} at {where}"


def _bad_output(out: Any) -> str | None:
    if type(out) is not list:
        return f"on_datagram returned {type(out).__name__}, not a list"
    for item in out:
        if type(item) is not tuple or len(item) != 2:
            return f"output item {item!r} is not (address, bytes)"
        addr, data = item
        if (
            type(addr) is not tuple
            or len(addr) != 2
            or not isinstance(addr[0], str)
            or type(addr[1]) is not int
        ):
            return f"output address {addr!r} is not (host, port)"
        if not isinstance(data, bytes | bytearray) or not data:
            return f"output datagram {data!r} is not non-empty bytes"
        if len(data) > MAX_OUT:
            return f"output datagram of {len(data)} bytes, over {MAX_OUT}"
    return None


# --- the command ---------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    f = sub.add_parser("fuzz", help="fuzz a protocol core with mutated datagrams")
    fs = f.add_subparsers(dest="fuzz_target", metavar="TARGET", required=True)
    r = fs.add_parser("relay", help="the relay core: corpus-based mutation, every input checked")
    r.add_argument("--inputs", type=int, default=1_000_000, help="datagrams to feed (default 1,000,000)")
    r.add_argument("--seed", type=int, default=1, help="the run's seed; a failure replays from it")
    r.add_argument("--input-limit", type=float, default=1.0, help="seconds one input may take (default 1)")
    r.add_argument("--max-seconds", type=float, default=3600.0, help="the whole run's limit (default 3600)")
    r.add_argument(
        "--expiry",
        type=int,
        default=EXPIRY_S,
        help=f"registration expiry in s (default {EXPIRY_S}); the witnesses re-register at 80 %% of it",
    )
    r.add_argument("--json", metavar="FILE", help="write the report as JSON")


def cmd(args: argparse.Namespace) -> int:
    if args.inputs < 1:
        print("opmob fuzz relay: --inputs must be at least 1", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        print(f"opmob fuzz relay: {msg}", flush=True)

    rep = run(
        args.inputs,
        args.seed,
        input_limit_s=args.input_limit,
        max_seconds=args.max_seconds,
        expiry_s=args.expiry,
        progress=progress,
    )
    print(rep.summary(), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep.as_dict(), f, indent=1)
            f.write("\n")
    return 0 if rep.ok else 1
