"""The relay's signalling and media parts built from their parts, without a Relay, on both
runtimes: registration and affiliation on bytes and time, voice fan-out, per-session deadlines.

The bench is what a Relay would be, spelled out: the parts each part is given at construction
(sessions, groups, request layer, store adapter, event log, counters), nothing else."""

from fwtest import Rng
from opmob import mcpt, rtp, sig, txn
from opmob import relay_events as ev
from opmob.device import DeviceSession
from opmob.registry import Registry
from opmob.relay import COUNTERS
from opmob.relay_groups import LOCAL, Groups
from opmob.relay_media import Media
from opmob.relay_requests import Requests
from opmob.relay_session import REGISTERED, Drop
from opmob.relay_sessions import Sessions
from opmob.relay_sig import Signalling
from opmob.relay_store import RelayStore
from opmob.store import MemoryStore
from opmob.sim import Sim
from opmob.ticks import PERIOD, earliest, tadd, tdiff
from relaynet import G1, G2, RELAY, config, export_doc, ident, secret_of


class Parts:
    """Signalling and media of one relay, composed by hand; devices talk to them on bytes. It is
    a node of the simulator (opmob.sim) at RELAY, as a Relay would be, and the devices are nodes
    beside it."""

    def __init__(self, start=0, seed=3):
        self.sim = Sim(start=start)
        self.cfg = config()
        store = MemoryStore()
        Registry(store, "no").load_export(export_doc())
        self.registry = Registry(store, "no")
        self.store = store
        self.counters = dict((k, 0) for k in COUNTERS)  # the counters a relay starts with
        self.events = ev.EventLog()
        rand = Rng(seed).bytes
        self.kept = RelayStore(store, self.counters)
        self.sessions = Sessions(rand, self.kept, self.events, self.counters, self.cfg.keepalive_ms)
        self.groups = Groups(self.cfg.floor, self.events, self.sessions.by_ssrc, self.counters)
        self.requests = Requests(txn.ResponseCache())
        self.media = Media(self.sessions, self.groups, self.registry, self.events, self.counters)
        self.sessions.floors = self.media
        self.sig = Signalling(
            self.cfg,
            self.registry,
            rand,
            _srtp(),
            self.sessions,
            self.groups,
            self.requests,
            self.media,
            self.kept,
            self.events,
            self.counters,
        )
        self.devs = {}
        self.addr = {}
        self.drops = []
        self.sim.attach(self, RELAY)

    @property
    def now(self):
        return self.sim.now

    @now.setter
    def now(self, t):
        self.sim.run_for(tdiff(t, self.sim.now))  # the world runs to that reading

    def device(self, name, groups):
        addr = ("10.0.2.%d" % (len(self.devs) + 2), 5000)
        d = DeviceSession(ident(name), secret_of(name), RELAY, Rng(len(self.devs) + 40).bytes, groups=groups)
        self.devs[name] = d
        self.addr[name] = addr
        self.sim.attach(d, addr)
        self.send(addr, d.start(self.now))
        self.pump()
        return d

    def send(self, src, outs):
        self.sim.send(src, outs)

    def relay_in(self, src, data, now=None):
        """What the relay's dispatcher would do: the first byte picks the part."""
        if now is None:
            now = self.now
        try:
            if data[0] == 0x4F:
                return self.sig.on_sig(now, src, sig.peek(data), data)
            if 192 <= data[1] <= 223:
                return self.media.on_rtcp(now, src, data)
            return self.media.on_rtp(now, src, data)
        except Drop as e:
            self.drops.append(e.reason)
            return e.out or []

    # The node interface (opmob.sim): what Relay.on_datagram, poll and next_deadline would do.
    def on_datagram(self, now, src, data):
        return self.relay_in(src, data, now)

    def poll(self, now):
        out = list(self.sessions.poll_requests(now))
        if self.sig.next_deadline() is not None:
            out.extend(self.sig.poll(now))
        if self.sessions.sweep_due(now):
            out.extend(self.sessions.sweep(now))
        return out

    def next_deadline(self):
        return earliest(self.sessions.next_deadline(), self.sig.next_deadline())

    def pump(self):
        """Deliver what is on its way now."""
        self.sim.settle()

    def run(self, ms):
        """The clock ``ms`` on; every part's and device's timers run."""
        self.sim.run_for(ms)


def _srtp():
    from opmob import srtp

    return srtp.SrtpSession


def _kinds(log, kind):
    return [e for e in log if e[0] == kind]


def test_signalling_alone_registers_and_affiliates_on_bytes():
    p = Parts(start=PERIOD - 2000)  # the clock wraps during the registration's life
    a = p.device("ann", [G1, G2])
    b = p.device("bob", [G1])
    assert a.state == "registered" and b.state == "registered" and a.ssrc != b.ssrc
    s = p.sessions.by_identity["ann@no"]
    assert s.state == REGISTERED and [x[0] for x in s.affs] == [G1, G2]
    assert sorted(p.groups.floors) == [G1, G2] and p.groups.where(G1) == LOCAL
    assert p.groups.floors[G1].members == ["ann@no", "bob@no"]
    log = p.events.drain()
    assert [e[1] for e in _kinds(log, ev.REGISTERED)] == ["ann@no", "bob@no"]
    assert (ev.AFFILIATED, "ann@no", G2, sig.AFF_OK) in log
    # Kept in the store through the adapter (never a key).
    assert p.store.get("registration", "ann@no")["ssrc"] == a.ssrc
    # A retransmitted request gets the same bytes from the request layer, and no second action.
    d = p.devs["bob"]
    out = d.affiliate(p.now, [G1, G2])
    req = out[0][1]
    p.send(p.addr["bob"], out)
    p.pump()
    again = p.relay_in(p.addr["bob"], req)
    assert len(again) == 1 and p.counters["sig_retransmits"] == 1
    assert p.groups.floors[G2].members == ["ann@no", "bob@no"]
    assert p.drops == []


def test_signalling_alone_expires_a_silent_registration_on_time():
    p = Parts(start=PERIOD - 1000)
    p.device("ann", [G1])
    p.device("bob", [G1])
    p.events.drain()
    ka = p.cfg.keepalive_ms
    # Both keep alive for a while; then ann's device goes quiet (its timers stop).
    p.run(4 * ka)
    assert len(p.sessions.by_identity) == 2 and p.counters.get("sessions_expired", 0) == 0
    quiet = p.devs.pop("ann")
    p.sim.detach(p.addr.pop("ann"))
    last = p.sessions.by_identity["ann@no"].last_seen
    p.run(4 * ka)
    assert quiet.state == "registered"  # it never heard: the relay decided alone, on time
    assert "ann@no" not in p.sessions.by_identity and "bob@no" in p.sessions.by_identity
    gone = _kinds(p.events.drain(), ev.DEREGISTERED)
    assert gone == [(ev.DEREGISTERED, "ann@no", "expired")]
    assert p.groups.floors[G1].members == ["bob@no"] and p.store.get("registration", "ann@no") is None
    # Expired at the silence limit after its last word, not at some other session's deadline.
    assert tdiff(p.now, last) >= p.sessions.silent_ms


def test_media_alone_fans_voice_out_to_every_other_member():
    p = Parts()
    for n in ("ann", "bob", "cat"):
        p.device(n, [G1])
    p.device("eve", [G2])
    ann = p.devs["ann"]
    p.send(p.addr["ann"], ann.send_floor(p.now, mcpt.FloorMsg(mcpt.FLOOR_REQUEST)))
    p.pump()
    assert p.groups.floors[G1].holder == "ann@no"
    sent = []
    for i in range(3):
        pkt = rtp.encode(
            rtp.RtpHeader(rtp.PT_DVI4_8K, 700 + i, 160 * i, 0), bytes((i + k) & 0xFF for k in range(84))
        )
        sent.append(pkt)
        p.send(p.addr["ann"], ann.send_voice(p.now, pkt))
        p.now += 20
        p.pump()
    for n in ("bob", "cat"):
        heard = [e[1] for e in p.devs[n].events if e[0] == "voice"]
        assert [bytes(h)[12:] for h in heard] == [x[12:] for x in sent], n
    assert [e for e in p.devs["eve"].events if e[0] == "voice"] == []
    assert p.counters["voice_in"] == 3 and p.counters["voice_out"] == 6
    assert (ev.VOICE_STARTED, G1, "ann@no") in p.events.drain()


def test_sessions_sweep_touches_only_the_sessions_due():
    # 200 registrations restored from a store (stale, no keys): one deadline each in the heap.
    from opmob.relay_session import Session

    ss = Sessions(Rng(5).bytes, keepalive_ms=1000)
    for i in range(200):
        s = Session("d%03d@no" % i, ss.new_sid(), ("10.0.3.1", 1000 + i), PERIOD - 5 + i)
        s.ssrc = ss.new_ssrc()
        ss.restore(s)
    assert len(ss.due) == 200
    first = ss.next_deadline()
    assert first == tadd(PERIOD - 5, ss.silent_ms)
    # Ten of them have come due; one of those was heard from since: it is filed again, later.
    ss.by_identity["d003@no"].last_seen = tadd(PERIOD - 5, 100)
    now = tadd(first, 9)
    out = ss.sweep(now)
    assert out == [] and len(ss.by_identity) == 191 and ss.counters["sessions_expired"] == 9
    assert "d003@no" in ss.by_identity and "d010@no" in ss.by_identity
    assert ss.due.get(ss.by_identity["d003@no"].sid) == tadd(PERIOD - 5 + 100, ss.silent_ms)
    assert ss.next_deadline() == tadd(first, 10) and not ss.sweep_due(now)


class AttachingLinks:
    """The links part's one question the signalling part asks (``attaching``): here, every
    group of ``slow`` is being attached over a link whose peer has not answered yet."""

    def __init__(self, slow):
        self.slow = slow

    def attaching(self, g):
        return g in self.slow


def test_affiliate_kept_open_until_the_peer_answers_retransmissions_pending():
    p = Parts(start=PERIOD - 300)
    p.sig.links = AttachingLinks([G1])
    d = p.device("ann", [])
    p.send(p.addr["ann"], d.affiliate(p.now, [G1, G2]))
    p.pump()
    # Kept open: no AFFILIATE_ACK yet, though the membership is in force here.
    assert p.counters["requests_held"] == 1 and p.requests.waiting() == 1
    assert "ann@no" in p.groups.floors[G1].members and [e for e in d.events if e[0] == "affiliation"] == []
    # The device's retransmission (at 0.5 s) gets PENDING: it keeps waiting, its next one comes
    # at the longest interval (4 s) and gets PENDING again.
    p.run(1600)
    assert p.counters["sig_pending"] == 1 and d.counters["pending_rx"] == 1 and p.drops == []
    p.run(3000)
    assert p.counters["sig_pending"] == 2 and d.counters["pending_rx"] == 2
    # The peer relay answered GROUP_ATTACH: the one answer, with every group's result.
    p.send(RELAY, p.sig.attach_resolved(p.now, G1, True))
    p.pump()
    assert [e for e in d.events if e[0] == "affiliation"] == [
        ("affiliation", G1, sig.AFF_OK),
        ("affiliation", G2, sig.AFF_OK),
    ]
    assert p.requests.waiting() == 0 and p.sig.next_deadline() is None
    # A retransmission after the answer gets the answer's bytes again, not PENDING.
    n = p.counters["sig_retransmits"]
    p.run(30000)
    assert p.counters["sig_pending"] == 2 and p.counters["sig_retransmits"] == n


def test_affiliate_kept_open_is_answered_local_only_when_the_peer_never_answers():
    from opmob.relay_sig import ATTACH_WAIT

    p = Parts()
    p.sig.links = AttachingLinks([G1])
    d = p.device("ann", [])
    t0 = p.now
    p.send(p.addr["ann"], d.affiliate(p.now, [G1]))
    p.pump()
    p.run(ATTACH_WAIT - 1)
    assert [e for e in d.events if e[0] == "affiliation"] == []
    p.run(2)
    assert [e for e in d.events if e[0] == "affiliation"] == [("affiliation", G1, sig.AFF_LOCAL_ONLY)]
    assert p.counters["requests_timed_out"] == 1 and tdiff(p.now, t0) == ATTACH_WAIT + 1
    assert d.affiliated == [G1]  # LOCAL_ONLY is affiliated: this relay arbitrates meanwhile
    # A late answer from the peer finds nobody waiting.
    assert p.sig.attach_resolved(p.now, G1, True) == []


def test_pending_for_a_session_gone_is_never_sent():
    p = Parts()
    p.sig.links = AttachingLinks([G1])
    d = p.device("ann", [])
    p.send(p.addr["ann"], d.affiliate(p.now, [G1]))
    p.pump()
    s = p.sessions.by_identity["ann@no"]
    p.sessions.end(p.now, s, False)
    assert p.sig.attach_resolved(p.now, G1, True) == [] and p.requests.waiting() == 0
