"""A discrete-event simulator for sans-I/O cores: a virtual clock, a timer heap and a network.

Relays, device sessions and accessory cores all have the same driver interface::

    node.on_datagram(now, src, data) -> [(dst, data), ...]
    node.poll(now)                   -> [(dst, data), ...]
    node.next_deadline()             -> tick (int) or None

``Sim`` runs any number of them in one process, without sockets or a wall clock, in the Python
subset MicroPython runs (it runs on the unix port as on CPython, with the same results).

Time. Virtual time is an int of milliseconds since the simulation started (``sim.t``); nodes see
``sim.now``, the same instant as ticks of firmware/opmob/ticks.py (modulo 2^30), starting at
``start`` (e.g. 60 days of uptime, or a few seconds before the wrap). A node's deadline is
converted back with ``tdiff``, so a core's timers work across the wrap exactly as on a device.

Events. One heap holds three kinds of events, ordered by time; at one instant, scripted actions
run first (in the order they were scheduled), then the nodes whose deadline it is (in the order
they were attached), then datagrams arrive (FIFO: in the order they were sent, so what a timer
sends at that instant arrives after every timer due then has run). A node is only woken at its
own deadline or when a datagram reaches it -- never by scanning every node. After each call into
a node (and whenever ``send`` carries something a node returned to an outside caller) its
``next_deadline()`` is read again; if it moved, a new heap entry is pushed and the old one is left
in the heap, recognised as stale by a generation number when it comes up (lazy invalidation).
A test that calls a core and drops what it returned uses ``touch(node)`` or ``touch_all()``.

Network. Addresses are opaque hashable values. A node is attached at one or more addresses;
what it returns from ``on_datagram`` is sent from the address the datagram reached, what it
returns from ``poll`` from its first address. Each path (src, dst) has a delay, a jitter (a
uniform extra 0..jitter ms, so packets of one path may overtake each other) and a loss rate;
unset paths use the default (no delay, no jitter, no loss: delivered in send order at the same
instant). ``cut`` partitions sets of addresses from each other until ``restore``: a datagram is
dropped when its path is cut as it is sent or as it arrives. Loss and jitter come from a seeded
xorshift32 generator, so a run replays identically, on either runtime, from its seed and script.

When ``on_events(addr, t, events)`` is set, a core's events are drained after each call into it
(before what it returned is sent), as the drivers drain them: the relay's ``events()`` (typed
events, relay_events.py), or the ``events`` list of a DeviceSession or an accessory core.

Taps see every datagram: ``tap(event, t, src, dst, data)`` with event "sent", "delivered",
"lost", "cut" or "nowhere" (no node at dst) and ``t`` the virtual ms. ``counters`` count the same,
and the events run ("events": "wakes" of nodes, "actions", datagrams arriving).
"""

import heapq

from opmob.ticks import MASK, tdiff

# Heap entries are (t, kind, key, seq, a, b, c): at one instant scripted actions run first (in the
# order they were scheduled), then nodes' deadlines (in the order the nodes were attached), then
# datagrams arrive (in the order they were sent). ``seq`` is unique, so a comparison never
# reaches the payload a, b, c.
_ACTION = 0
_WAKE = 1
_DELIVER = 2

_LIST = "list"  # _Node.drain: the node's events are a list attribute

# The most events one instant may hold before the run is declared a livelock (a node that keeps
# returning a deadline in the past, two nodes answering each other forever at zero delay).
MAX_SAME_INSTANT = 100000


class SimError(Exception):
    pass


class Rng:
    """xorshift32, as tests/fw/fwtest.py's: the same sequence on both runtimes."""

    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 1

    def u32(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.u32() % n

    def __call__(self, n):
        """``n`` random bytes: usable as a core's ``rand``."""
        return bytes(self.u32() & 0xFF for _ in range(n))


class _Node:
    # One attached node: its addresses, and the deadline its live heap entry stands for.
    __slots__ = ("node", "order", "addrs", "at", "gen", "drain")

    def __init__(self, node, order):
        self.node = node
        self.order = order  # attach order: who wakes first among equal deadlines
        self.addrs = []
        self.at = None  # absolute virtual ms of the valid wake entry, or None
        self.gen = 0
        # How the core's events are drained: the relay's events() method, or the list a session
        # or an accessory core keeps in ``events`` (taken and replaced, as their drivers do).
        ev = getattr(node, "events", None)
        self.drain = ev if callable(ev) else (_LIST if type(ev) is list else None)


class Path:
    """How datagrams travel from one address to another."""

    __slots__ = ("delay", "jitter", "loss")

    def __init__(self, delay=0, jitter=0, loss=0.0):
        if delay < 0 or jitter < 0 or not (0.0 <= loss <= 1.0):
            raise ValueError("path: delay and jitter >= 0 ms, loss in 0..1")
        self.delay = int(delay)
        self.jitter = int(jitter)
        # Compared with a u32 draw; 1.0 must lose everything, so it is one above the largest draw.
        self.loss = int(loss * 4294967296.0 + 0.5) if loss < 1.0 else 4294967296


class Sim:
    def __init__(self, seed=1, start=0):
        self.start = start & MASK  # what nodes see at t = 0
        self.t = 0
        self.now = self.start
        self.rng = Rng(seed)
        self._heap = []
        self._seq = 0
        self._attached = 0
        self._by_addr = {}  # address -> _Node
        self._by_id = {}  # id(node) -> _Node
        self._paths = {}  # (src, dst) -> Path
        self._wild = False  # some path has src or dst None (any)
        self.default = Path()
        self._cuts = []  # [(set, set or None)]
        self._in_flight = 0
        self._pending_actions = 0
        self.taps = []
        self.drop_if = None  # drop_if(src, dst, data) -> True: lost (counted "lost") on arrival
        self.after_call = None  # after_call(addr, node): after each on_datagram/poll of a node
        # on_events(addr, t, events): a core's typed events (relay_events.py), drained after each
        # call into it, as the drivers do; while None they stay in the core for the test to read.
        self.on_events = None
        self.max_same_instant = MAX_SAME_INSTANT
        self.counters = {
            "sent": 0,
            "delivered": 0,
            "lost": 0,
            "cut": 0,
            "nowhere": 0,
            "discarded": 0,
            "wakes": 0,
            "actions": 0,
            "events": 0,
        }

    # --- time ---------------------------------------------------------------------------------------

    def ticks(self, t):
        """The ticks nodes see at virtual ms ``t``."""
        return (self.start + t) & MASK

    def abs_of(self, tick):
        """Virtual ms of the tick ``tick``, taken as the nearest instant to now (wrap-safe)."""
        return self.t + tdiff(tick, self.now)

    # --- nodes --------------------------------------------------------------------------------------

    def attach(self, node, *addrs):
        """Attach ``node`` at ``addrs`` (added to its addresses if already attached). A node
        already at one of these addresses is detached from it (a device power-cycled in place)."""
        rec = self._by_id.get(id(node))
        if rec is None:
            self._attached += 1
            rec = _Node(node, self._attached)
            self._by_id[id(node)] = rec
        for a in addrs:
            old = self._by_addr.get(a)
            if old is rec:
                continue
            if old is not None:
                self._unbind(old, a)
            self._by_addr[a] = rec
            rec.addrs.append(a)
        self._resched(rec)
        return node

    def detach(self, addr):
        """Nothing is attached at ``addr`` any more; a node left without addresses stops waking."""
        rec = self._by_addr.get(addr)
        if rec is not None:
            self._unbind(rec, addr)

    def _unbind(self, rec, addr):
        del self._by_addr[addr]
        rec.addrs.remove(addr)
        if not rec.addrs:
            del self._by_id[id(rec.node)]
            rec.gen += 1
            rec.at = None
            rec.node = rec.drain = None  # its stale heap entries must not keep it alive

    def node_at(self, addr):
        rec = self._by_addr.get(addr)
        return None if rec is None else rec.node

    def touch(self, node):
        """Read ``node``'s deadline again: after calling it from outside the simulator."""
        rec = self._by_id.get(id(node))
        if rec is not None:
            self._resched(rec)

    def touch_all(self):
        for rec in list(self._by_id.values()):
            self._resched(rec)

    def _resched(self, rec):
        if rec.node is None:
            return  # detached meanwhile (by a script, a hook)
        d = rec.node.next_deadline()
        if d is None:
            if rec.at is not None:
                rec.gen += 1
                rec.at = None
            return
        dt = tdiff(d, self.now)
        at = self.t + dt if dt > 0 else self.t
        if at != rec.at:
            rec.gen += 1
            rec.at = at
            self._seq += 1
            heapq.heappush(self._heap, (at, _WAKE, rec.order, self._seq, rec, rec.gen, None))

    # --- network ------------------------------------------------------------------------------------

    def path(self, src, dst, delay=0, jitter=0, loss=0.0, both=False):
        """Set the path from ``src`` to ``dst`` (and back when ``both``); None is any address."""
        p = Path(delay, jitter, loss)
        self._paths[(src, dst)] = p
        if both:
            self._paths[(dst, src)] = p
        if src is None or dst is None:
            self._wild = True
        return p

    def set_default(self, delay=0, jitter=0, loss=0.0):
        self.default = Path(delay, jitter, loss)

    def _path(self, src, dst):
        p = self._paths.get((src, dst)) if self._paths else None
        if p is None and self._wild:
            p = self._paths.get((src, None)) or self._paths.get((None, dst))
        return p or self.default

    def cut(self, a, b=None):
        """Partition the addresses in ``a`` from those in ``b`` (from every other address when
        ``b`` is None), both ways, until ``restore``. Returns the cut, for ``restore(cut)``."""
        c = (set(a), None if b is None else set(b))
        self._cuts.append(c)
        return c

    def restore(self, c=None):
        """Undo one cut, or every cut."""
        if c is None:
            self._cuts = []
        elif c in self._cuts:
            self._cuts.remove(c)

    def is_cut(self, src, dst):
        for a, b in self._cuts:
            if b is None:
                if (src in a) != (dst in a):
                    return True
            elif (src in a and dst in b) or (src in b and dst in a):
                return True
        return False

    def capture(self, events=None):
        """A list that from now on receives (event, t, src, dst, data) for every datagram event
        (only those named in ``events``, when given): a capture of the run."""
        got = []
        if events is None:
            self.taps.append(lambda ev, t, src, dst, data: got.append((ev, t, src, dst, data)))
        else:
            keep = set(events)
            self.taps.append(lambda ev, t, src, dst, data: ev in keep and got.append((ev, t, src, dst, data)))
        return got

    def send(self, src, outs):
        """Put what a node returned on the network, from ``src``. The node at ``src`` (whoever
        produced ``outs`` from an outside call) has its deadline read again."""
        rec = self._by_addr.get(src)
        if rec is not None:
            self._resched(rec)
        self._send(src, outs)

    def _send(self, src, outs):
        c = self.counters
        for dst, data in outs:
            if type(data) is not bytes:
                data = bytes(data)  # the node may reuse its buffer
            c["sent"] += 1
            for tap in self.taps:
                tap("sent", self.t, src, dst, data)
            if self._cuts and self.is_cut(src, dst):
                self._fate("cut", src, dst, data)
                continue
            p = self._path(src, dst)
            if p.loss and self.rng.u32() < p.loss:
                self._fate("lost", src, dst, data)
                continue
            at = self.t + p.delay
            if p.jitter:
                at += self.rng.below(p.jitter + 1)
            self._seq += 1
            self._in_flight += 1
            heapq.heappush(self._heap, (at, _DELIVER, self._seq, self._seq, src, dst, data))

    def discard_in_flight(self):
        """Every datagram on its way is lost (counted "discarded"): a process restarting, a
        network swapped out under the nodes."""
        keep = []
        n = 0
        for e in self._heap:
            if e[1] == _DELIVER:
                n += 1
            else:
                keep.append(e)
        heapq.heapify(keep)
        self._heap = keep
        self._in_flight = 0
        self.counters["discarded"] += n
        return n

    def discard_actions(self):
        """Every scripted action not yet run is dropped."""
        self._heap = [e for e in self._heap if e[1] != _ACTION]
        heapq.heapify(self._heap)
        self._pending_actions = 0

    def _fate(self, what, src, dst, data):
        self.counters[what] += 1
        for tap in self.taps:
            tap(what, self.t, src, dst, data)

    # --- script -------------------------------------------------------------------------------------

    def at(self, t, fn):
        """Call ``fn()`` at virtual ms ``t`` (now if ``t`` has passed)."""
        if t < self.t:
            t = self.t
        self._seq += 1
        self._pending_actions += 1
        heapq.heappush(self._heap, (t, _ACTION, self._seq, self._seq, fn, None, None))

    def after(self, ms, fn):
        self.at(self.t + ms, fn)

    # --- running ------------------------------------------------------------------------------------

    def step(self):
        """Run the next event (and move the clock to it). False when there is none."""
        heap = self._heap
        while heap:
            e = heapq.heappop(heap)
            if e[1] == _WAKE and e[5] != e[4].gen:
                continue  # stale: the node's deadline moved since
            self._run(e)
            return True
        return False

    def _run(self, e):
        t = e[0]
        if t != self.t:
            self.t = t
            self.now = (self.start + t) & MASK
            self._instant = 0
        else:
            self._instant += 1
            if self._instant > self.max_same_instant:
                raise SimError("events never settle at t=%d ms" % t)
        c = self.counters
        c["events"] += 1
        kind = e[1]
        if kind == _DELIVER:
            self._in_flight -= 1
            src = e[4]
            dst = e[5]
            data = e[6]
            if self._cuts and self.is_cut(src, dst):
                self._fate("cut", src, dst, data)
                return
            if self.drop_if is not None and self.drop_if(src, dst, data):
                self._fate("lost", src, dst, data)
                return
            rec = self._by_addr.get(dst)
            if rec is None:
                self._fate("nowhere", src, dst, data)
                return
            c["delivered"] += 1
            for tap in self.taps:
                tap("delivered", t, src, dst, data)
            node = rec.node
            out = node.on_datagram(self.now, src, data)
            self._resched(rec)
            if self.on_events is not None and rec.drain is not None:
                self._drain(dst, rec)
            if self.after_call is not None:
                self.after_call(dst, node)
            if out:
                self._send(dst, out)
        elif kind == _WAKE:
            rec = e[4]
            rec.at = None  # this entry is spent; _resched pushes the next one
            c["wakes"] += 1
            addr = rec.addrs[0]
            node = rec.node
            out = node.poll(self.now)
            self._resched(rec)
            if self.on_events is not None and rec.drain is not None:
                self._drain(addr, rec)
            if self.after_call is not None:
                self.after_call(addr, node)
            if out:
                self._send(addr, out)
        else:
            self._pending_actions -= 1
            c["actions"] += 1
            e[4]()

    _instant = 0

    def _drain(self, addr, rec):
        if rec.drain is _LIST:
            node = rec.node
            evs = node.events
            if evs:
                node.events = []
        else:
            evs = rec.drain()
        if evs:
            self.on_events(addr, self.t, evs)

    def _next_live(self):
        # The time of the next event that will run, dropping stale wake entries on the way.
        heap = self._heap
        while heap:
            e = heap[0]
            if e[1] == _WAKE and e[5] != e[4].gen:
                heapq.heappop(heap)
                continue
            return e[0]
        return None

    def run_until(self, t):
        """Run every event up to and including virtual ms ``t``; the clock then reads ``t``."""
        heap = self._heap
        self._instant = 0
        while True:
            nt = self._next_live()
            if nt is None or nt > t:
                break
            self._run(heapq.heappop(heap))
        if t > self.t:
            self.t = t
            self.now = (self.start + t) & MASK
            self._instant = 0

    def run_for(self, ms):
        self.run_until(self.t + ms)

    def settle(self):
        """Run what is due now (datagrams sent at zero delay, deadlines reached)."""
        self.run_until(self.t)

    def idle(self):
        """No datagram in flight and no scripted action pending (nodes' timers do not count)."""
        return self._in_flight == 0 and self._pending_actions == 0

    def run_until_idle(self, limit_ms=60000):
        """Run until ``idle()``, timers firing as they fall, for at most ``limit_ms`` of virtual
        time. True when it went idle; False when the bound was reached first."""
        end = self.t + limit_ms
        heap = self._heap
        self._instant = 0
        while not self.idle():
            nt = self._next_live()
            if nt is None or nt > end:
                self.run_until(end)
                return self.idle()
            self._run(heapq.heappop(heap))
        return True

    def in_flight(self):
        return self._in_flight
