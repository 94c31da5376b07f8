"""A relay and its devices wired together in memory under a virtual clock (relay and device tests).

The network and the clock are an ``opmob.sim.Sim`` (``World.sim``): datagrams are delivered in
send order, at once, unless ``World.lose`` says otherwise (or a test sets paths or cuts on
``w.sim``); ``run(t)`` moves the clock to ``t``, waking the relay and each device at their own
deadlines. ``run`` first reads every node's deadline again (``Sim.touch_all``), since tests call
the cores directly. A core the network must reach is attached to ``w.sim`` (``device`` does it;
a session replacing another on its address: ``w.sim.attach(d, addr)``). Runs on both runtimes.

Time is the cores' clock: int milliseconds modulo 2^30 (opmob/ticks.py). ``World(start=...)`` sets
the clock's reading when the world begins (0 by default; e.g. 60 days of uptime, or just before
the wrap), and ``run``/``step`` compare wrap-safely.
"""

import hashlib
import struct

from fwtest import Rng
from opmob import mcpt, rtp, sig
from opmob.device import DeviceSession
from opmob.registry import Registry
from opmob.relay import Relay
from opmob.relay_config import RelayConfig
from opmob.sim import Sim
from opmob.store import MemoryStore
from opmob.ticks import MASK, tadd, tdiff

RELAY = ("10.0.0.1", 7700)
G1 = "fire-1@no"
G2 = "fire-2@no"
GP = "police@no"
GSE = "rescue@se"  # homed in Sweden: not in this registry, allowed to some devices

# name -> (ceiling, groups it may join)
PEOPLE = {
    "ann": (100, [G1, G2, GSE]),
    "bob": (100, [G1, G2]),
    "cat": (200, [G1, G2]),
    "dan": (50, [G1, G2]),
    "eve": (100, [G2]),
    "kim": (100, [G1, GP]),
}
GROUPS = [
    {"identity": G1, "policy": "members", "e2e": False, "key_ids": [], "receive_only": ["kim@no"]},
    {"identity": G2, "policy": "open", "e2e": False, "key_ids": [], "receive_only": []},
    {"identity": GP, "policy": "members", "e2e": False, "key_ids": [], "receive_only": []},
]

FLOOR_NAMES = {
    mcpt.FLOOR_GRANTED: "Granted",
    mcpt.FLOOR_TAKEN: "Taken",
    mcpt.FLOOR_DENY: "Deny",
    mcpt.FLOOR_IDLE: "Idle",
    mcpt.FLOOR_REVOKE: "Revoke",
    mcpt.FLOOR_QUEUE_POSITION_INFO: "Queue",
    mcpt.FLOOR_ACK: "Ack",
}


def ident(name):
    return name + "@no"


def secret_of(name):
    return hashlib.sha256(b"test secret " + name.encode()).digest()[:16]


def hexs(b):
    import binascii

    return binascii.hexlify(b).decode()


def export_doc(people=None):
    devices = []
    for name in sorted(people or PEOPLE):
        ceiling, groups = PEOPLE[name]
        devices.append(
            {
                "identity": ident(name),
                "secret": hexs(secret_of(name)),
                "groups": groups,
                "ceiling": ceiling,
                "status": "active",
                "vid": 0,
                "cseq": 0,
            }
        )
    return {"format": "opmob-registry", "version": 1, "system": "no", "devices": devices, "groups": GROUPS}


def config(**kw):
    """A relay configuration; keyword arguments go to [limits], [timers] or [floor]."""
    limits = {}
    timers = {}
    floor = {}
    for k, v in kw.items():
        if k in ("max_affiliations", "max_devices"):
            limits[k] = v
        elif k in ("keepalive", "expiry"):
            timers[k] = v
        else:
            floor[k] = v
    d = {"relay": {"identity": "relay-1@no"}, "registry": {"path": "unused"}}
    d["limits"] = limits
    d["timers"] = timers
    d["floor"] = floor
    return RelayConfig.from_dict(d)


class World:
    """One relay at ``RELAY`` and its devices in an ``opmob.sim.Sim``: the network delivers at
    once, in send order, unless ``lose`` or ``sim.path``/``sim.cut`` say otherwise."""

    def __init__(self, seed=1, store=None, start=0, **cfg):
        self.sim = Sim(seed, start)
        self.start = self.sim.start
        self.seed = seed
        self.cfg = config(**cfg)
        if store is None:
            store = MemoryStore()
            Registry(store, "no").load_export(export_doc())
        self.store = store
        self.registry = Registry(store, "no")
        self.relay = Relay(self.cfg, self.registry, store, Rng(seed).bytes, self.now)
        self.devs = {}  # name -> DeviceSession
        self.addr = {}  # name -> address
        self.by_addr = {}
        self.lose = None  # lose(src, dst, data) -> True: the datagram is lost
        self.tap = None  # tap(src, dst, data): sees every datagram sent
        self.rtp_seq = {}
        self.sim.taps.append(self._tap)
        self.sim.drop_if = self._lose

    def _tap(self, ev, t, src, dst, data):
        if ev == "sent" and self.tap is not None:
            self.tap(src, dst, data)

    def _lose(self, src, dst, data):
        return self.lose is not None and self.lose(src, dst, data)

    @property
    def now(self):
        return self.sim.now

    @now.setter
    def now(self, t):
        # Setting the clock runs the world to that reading: timers fall due on the way.
        self.run(t)

    @property
    def relay(self):
        return self._relay

    @relay.setter
    def relay(self, r):
        self._relay = r
        self.sim.attach(r, RELAY)

    # --- wiring -----------------------------------------------------------------------------------

    def device(self, name, groups=(), secret=None, start=True, **kw):
        n = len(self.devs) + 2
        addr = ("10.0.1.%d" % n, 5000)
        d = DeviceSession(
            ident(name),
            secret if secret is not None else secret_of(name),
            RELAY,
            Rng(self.seed * 1000 + n).bytes,
            groups=groups,
            **kw,
        )
        self.devs[name] = d
        self.addr[name] = addr
        self.by_addr[addr] = d
        self.sim.attach(d, addr)
        if start:
            self.send(addr, d.start(self.now))
            self.pump()
        return d

    def send(self, src, outs):
        self.sim.send(src, outs)

    def inject(self, src, data):
        """A datagram from ``src`` straight to the relay (an attacker, a replay)."""
        out = self.relay.on_datagram(self.now, src, data)
        self.send(RELAY, out)
        self.pump()
        return out

    def pump(self):
        """Deliver what is on its way now."""
        self.sim.settle()

    def run(self, until):
        """Run the clock to ``until`` (a reading of the clock, taken modulo 2^30)."""
        self.sim.touch_all()  # a test may have called a core directly
        t = self.sim.abs_of(until & MASK)
        self.sim.run_until(t if t > self.sim.t else self.sim.t)

    def step(self, dt):
        """Run the clock ``dt`` ms on."""
        self.run(tadd(self.now, dt))

    def at(self, ms):
        """The clock's reading ``ms`` after the world began."""
        return tadd(self.start, ms)

    def since(self, t):
        """Milliseconds from reading ``t`` to now."""
        return tdiff(self.now, t)

    def restart(self):
        """The relay process dies and starts again on the same store: nothing in flight survives."""
        self.sim.discard_in_flight()
        self.registry = Registry(self.store, "no")
        self.relay = Relay(self.cfg, self.registry, self.store, Rng(self.seed + 77).bytes, self.now)

    # --- device actions ---------------------------------------------------------------------------

    def act(self, name, out):
        self.send(self.addr[name], out)
        self.pump()

    def relay_out(self, out):
        """Datagrams the relay returned from an operator call: on their way."""
        self.send(RELAY, out)
        self.pump()

    def request(self, name, group=None, prio=None, ind=None, queue=True):
        flags = (ind or 0) | (mcpt.IND_QUEUEING_SUPPORTED if queue else 0)
        m = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, priority=prio, indicator=flags or None)
        self.act(name, self.devs[name].send_floor(self.now, m, group))

    def release(self, name, group=None):
        m = mcpt.FloorMsg(mcpt.FLOOR_RELEASE)
        self.act(name, self.devs[name].send_floor(self.now, m, group))

    def rtp_packet(self, name):
        seq = self.rtp_seq.get(name, 1000)
        self.rtp_seq[name] = seq + 1
        hdr = rtp.RtpHeader(rtp.PT_DVI4_8K, seq & 0xFFFF, seq * 160, 0, marker=False)
        payload = bytes((seq + i) & 0xFF for i in range(84))
        return rtp.encode(hdr, payload)

    def talk(self, name, packets, every=20):
        """``packets`` voice packets from ``name``, one each ``every`` ms (timers run)."""
        sent = []
        for _ in range(packets):
            p = self.rtp_packet(name)
            sent.append(p)
            self.act(name, self.devs[name].send_voice(self.now, p))
            self.step(every)
        return sent

    # --- what devices got -------------------------------------------------------------------------

    def events(self, name, kind=None):
        d = self.devs[name]
        if kind is None:
            ev = d.events
            d.events = []
            return ev
        keep = []
        got = []
        for e in d.events:
            (got if e[0] == kind else keep).append(e)
        d.events = keep
        return got

    def floors(self, name):
        """Floor messages ``name`` received since last asked, compactly."""
        out = []
        for e in self.events(name, "floor"):
            out.append(floor_view(e[1], e[2]))
        return out

    def heard(self, name):
        return [e[1] for e in self.events(name, "voice")]

    def clear(self):
        for name in self.devs:
            self.events(name)

    def check_counters(self):
        c = self.relay.counters
        assert c["rx_datagrams"] == c["accepted"] + self.relay.dropped(), c
        for d in self.devs.values():
            dc = d.counters
            drops = 0
            for k, v in dc.items():
                if k.startswith("drop_"):
                    drops += v
            assert dc["rx_datagrams"] == dc["accepted"] + drops, dc


def floor_view(group, m):
    name = FLOOR_NAMES.get(m.kind, m.name)
    g = group.split("@")[0] if group else None
    if m.kind == mcpt.FLOOR_TAKEN:
        return (name, g, m.granted_party.split("@")[0])
    if m.kind in (mcpt.FLOOR_DENY, mcpt.FLOOR_REVOKE):
        return (name, g, m.reject_cause)
    if m.kind == mcpt.FLOOR_QUEUE_POSITION_INFO:
        return (name, g, m.queue_info[0])
    if m.kind == mcpt.FLOOR_GRANTED:
        return (name, g, m.user_id.split("@")[0])
    return (name, g)


def ssrc_of(pkt):
    return struct.unpack_from(">I", pkt, 8)[0]


def sig_type(data):
    return data[3] if len(data) > 3 and data[0] == 0x4F else None


def is_sig(data):
    return sig.is_sig(data)
