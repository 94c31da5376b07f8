"""Relay-to-relay links in memory: two relay cores of one system, their devices, a virtual clock.

Relay A ("relay-a@no") controls every group; relay B ("relay-b@no") attaches fire-1 over the link
and initiates it. The link codec is "dvi4" so that this runs under both runtimes (no Codec2);
tests/host/test_relay_link.py runs real processes with Codec2.
"""

from fwtest import Rng
from opmob import mcpt, rtp, sig
from opmob.device import DeviceSession
from opmob.registry import Registry
from opmob.relay import Relay
from opmob.relay_config import ConfigError, RelayConfig
from opmob.sim import Sim
from opmob.store import MemoryStore
from opmob.ticks import MASK, PERIOD, tadd
from relaynet import G1, export_doc, floor_view, ident, secret_of, ssrc_of

RA = ("10.0.0.1", 7700)
RB = ("10.0.0.2", 7700)
PSK = bytes(range(32))
KA = 2  # keep-alive, s (relay.toml's unit)
KA_MS = KA * 1000


def link_cfg(me, peer, attach=(), initiate=False, codec="dvi4"):
    d = {
        "relay": {"identity": me},
        "registry": {"path": "unused"},
        "timers": {"keepalive": KA, "expiry": 600},
        "floor": {"t1": 8.0, "t2": 30.0},
        "link": [{"peer": peer, "key_file": "k", "codec": codec, "attach": list(attach)}],
    }
    if initiate:
        d["link"][0]["host"] = RA[0]
        d["link"][0]["port"] = RA[1]
    return RelayConfig.from_dict(d)


class Net:
    """Relays A and B and their devices in an ``opmob.sim.Sim`` (instant delivery, send order);
    ``cut = True`` partitions the two relays from each other. A session put in ``devs`` by hand
    must be attached too: ``n.sim.attach(d, addr)``."""

    def __init__(self, psk_a=PSK, psk_b=PSK, groups=None, seed=5, start=0):
        self.sim = Sim(seed, start)
        self.start = self.sim.start
        self._cut = None
        self.relays = {}
        self.devs = {}
        self.addr = {}
        self.home = {}
        self.seq = {}
        for name, addr, cfg, psk in (
            ("a", RA, link_cfg("relay-a@no", "relay-b@no"), psk_a),
            ("b", RB, link_cfg("relay-b@no", "relay-a@no", [G1], True), psk_b),
        ):
            cfg.links[0].psk = psk
            store = MemoryStore()
            doc = export_doc()
            if groups is not None:
                doc["groups"] = groups
            Registry(store, "no").load_export(doc)
            self.relays[addr] = Relay(cfg, Registry(store, "no"), store, Rng(seed).bytes, self.now)
            self.sim.attach(self.relays[addr], addr)
            seed += 11
        self.a = self.relays[RA]
        self.b = self.relays[RB]

    @property
    def now(self):
        return self.sim.now

    @property
    def cut(self):
        return self._cut is not None

    @cut.setter
    def cut(self, on):
        if on and self._cut is None:
            self._cut = self.sim.cut([RA], [RB])
        elif not on and self._cut is not None:
            self.sim.restore(self._cut)
            self._cut = None

    def device(self, name, relay, groups):
        n = len(self.devs) + 2
        addr = ("10.0.1.%d" % n, 5000)
        d = DeviceSession(ident(name), secret_of(name), relay, Rng(100 + n).bytes, groups=groups)
        self.devs[name] = d
        self.addr[name] = addr
        self.home[name] = relay
        self.sim.attach(d, addr)
        self.send(addr, d.start(self.now))
        self.step(10)
        return d

    def send(self, src, outs):
        self.sim.send(src, outs)

    def pump(self):
        self.sim.settle()

    def run(self, until):
        """Run the clock to ``until``, a reading of the clock (modulo 2^30)."""
        self.sim.touch_all()  # a test may have called a core directly
        t = self.sim.abs_of(until & MASK)
        self.sim.run_until(t if t > self.sim.t else self.sim.t)

    def step(self, dt):
        """Run the clock ``dt`` ms on."""
        self.run(tadd(self.now, dt))

    def at(self, ms):
        return tadd(self.start, ms)

    def act(self, name, out):
        self.send(self.addr[name], out)
        self.pump()

    def request(self, name, prio=None, ind=None):
        flags = (ind or 0) | mcpt.IND_QUEUEING_SUPPORTED
        m = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, priority=prio, indicator=flags)
        self.act(name, self.devs[name].send_floor(self.now, m, G1))

    def release(self, name):
        self.act(name, self.devs[name].send_floor(self.now, mcpt.FloorMsg(mcpt.FLOOR_RELEASE), G1))

    def talk(self, name, packets):
        sent = []
        for _ in range(packets):
            seq = self.seq.get(name, 1000)
            self.seq[name] = seq + 1
            payload = bytes((seq * 7 + i) & 0xFF for i in range(84))
            p = rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, seq & 0xFFFF, seq * 160, 0), payload)
            sent.append(payload)
            self.act(name, self.devs[name].send_voice(self.now, p))
            self.step(20)
        return sent

    def floors(self, name):
        d = self.devs[name]
        out = [floor_view(e[1], e[2]) for e in d.events if e[0] == "floor"]
        d.events = [e for e in d.events if e[0] != "floor"]
        return out

    def heard(self, name):
        d = self.devs[name]
        out = [e[1] for e in d.events if e[0] == "voice"]
        d.events = [e for e in d.events if e[0] != "voice"]
        return out

    def clear(self):
        for d in self.devs.values():
            d.events = []

    def link(self, r):
        return r.status()["links"][0]

    def check_counters(self):
        for r in self.relays.values():
            c = r.counters
            assert c["rx_datagrams"] == c["accepted"] + r.dropped(), c


def payload(pkt):
    return bytes(pkt[12:])


def up_net(**kw):
    n = Net(**kw)
    n.run(n.at(1000))
    assert n.link(n.a)["state"] == "up", n.link(n.a)
    assert n.link(n.b)["state"] == "up", n.link(n.b)
    return n


def two_sites(**kw):
    """ann and bob at A, cat and dan at B, all in fire-1; B has attached fire-1."""
    n = up_net(**kw)
    n.device("ann", RA, [G1])
    n.device("bob", RA, [G1])
    n.device("cat", RB, [G1])
    n.device("dan", RB, [G1])
    n.step(KA_MS + 100)  # the next keep-alive tick at least: B attaches the group
    assert n.link(n.b)["attached"] == [G1], n.link(n.b)
    assert n.link(n.a)["served"] == [G1], n.link(n.a)
    n.clear()
    return n


# --- configuration ------------------------------------------------------------------------------


def test_link_config_checked():
    cfg = link_cfg("relay-b@no", "relay-a@no", [G1], True, codec="codec2_1600")
    lk = cfg.links[0]
    assert lk.initiator and lk.mode() == "1600" and lk.attach == [G1]
    assert (
        RelayConfig.from_dict(
            {
                "relay": {"identity": "relay-a@no"},
                "registry": {"path": "x"},
                "link": [{"peer": "relay-b@no", "key_file": "k"}],
            }
        )
        .links[0]
        .codec
        == "codec2_3200"
    )
    bad = {
        "relay": {"identity": "relay-a@no"},
        "registry": {"path": "x"},
        "link": [
            {"peer": "relay-a@no", "key_file": "k"},
            {"peer": "relay-c@no", "key_file": "k", "codec": "opus", "host": "10.0.0.3"},
            {"peer": "relay-d@no", "attach": ["Bad"], "keyfile": "k"},
        ],
    }
    try:
        RelayConfig.from_dict(bad)
        raise AssertionError("accepted")
    except ConfigError as e:
        keys = [p[0] for p in e.problems]
    assert "link[0].peer" in keys and "link[1].codec" in keys and "link[1]" in keys, keys
    assert "link[2].keyfile" in keys and "link[2].key_file" in keys and "link[2].attach" in keys, keys


def test_codec2_link_refused_without_transcoder():
    cfg = link_cfg("relay-a@no", "relay-b@no", codec="codec2_3200")
    cfg.links[0].psk = PSK
    store = MemoryStore()
    Registry(store, "no").load_export(export_doc())
    try:
        Relay(cfg, Registry(store, "no"), store, Rng(1).bytes, 0)
        raise AssertionError("accepted")
    except ValueError as e:
        assert "relay-b@no" in str(e) and "codec2_3200" in str(e)


# --- handshake ---------------------------------------------------------------------------------------


def test_link_comes_up_and_keeps_alive():
    n = up_net()
    la, lb = n.link(n.a), n.link(n.b)
    assert la["role"] == "responder" and lb["role"] == "initiator"
    assert la["counters"]["challenges"] == 1 and lb["counters"]["ups"] == 1
    n.step(10 * KA_MS)
    assert n.link(n.a)["state"] == "up" and n.link(n.b)["state"] == "up"
    assert n.link(n.a)["counters"]["keepalives"] >= 9
    n.check_counters()


def test_wrong_psk_refused_and_counted():
    n = Net(psk_b=bytes(32))
    n.run(n.at(5000))
    assert n.link(n.a)["state"] == "down" and n.link(n.b)["state"] == "connecting"
    assert n.b.counters.get("drop_link_auth_failed", 0) >= 1
    assert n.link(n.b)["counters"]["auth_failed"] >= 1
    # It keeps trying, with back-off: 1 + 2 s after the first failure.
    assert 2 <= n.link(n.b)["counters"]["hellos"] <= 4, n.link(n.b)
    n.check_counters()


def test_unknown_peer_hello_dropped():
    n = up_net()
    m = sig.SigMsg(
        sig.LINK_HELLO, txid=9, relay="relay-x@no", peer="relay-a@no", nonce=b"\x01" * 16, agreement=0
    )
    assert n.a.on_datagram(n.now, ("10.9.9.9", 1), sig.encode(m)) == []
    assert n.a.counters["drop_link_unknown_peer"] == 1
    m = sig.SigMsg(
        sig.LINK_HELLO, txid=9, relay="relay-b@no", peer="relay-z@no", nonce=b"\x01" * 16, agreement=0
    )
    assert n.a.on_datagram(n.now, ("10.9.9.9", 1), sig.encode(m)) == []
    assert n.a.counters["drop_link_wrong_peer"] == 1
    n.check_counters()


def test_replayed_hello_and_auth_do_not_disturb_the_link():
    n = Net()
    seen = []

    def tap(ev, t, src, dst, data):
        if ev == "sent" and sig.is_sig(data) and data[3] in (sig.LINK_HELLO, sig.LINK_AUTH):
            seen.append((src, data))

    n.sim.taps.append(tap)
    n.run(n.at(1000))
    assert n.link(n.a)["state"] == "up"
    hello = [d for s, d in seen if d[3] == sig.LINK_HELLO][0]
    auth = [d for s, d in seen if d[3] == sig.LINK_AUTH][0]
    # A retransmitted HELLO is answered from the cache; the link stays up.
    out = n.a.on_datagram(n.now, RB, hello)
    assert len(out) == 1 and out[0][1][3] == sig.LINK_CHALLENGE
    assert n.a.counters["sig_retransmits"] == 1
    # The AUTH again: answered from the cache too, not executed twice.
    out = n.a.on_datagram(n.now, RB, auth)
    assert len(out) == 1 and out[0][1][3] == sig.LINK_ACK and n.link(n.a)["counters"]["ups"] == 1
    # Long after (cache gone), a replayed AUTH finds no challenge for its session.
    n.step(40000)
    n.a.on_datagram(n.now, RB, auth)
    assert n.a.counters["drop_link_unknown_session"] == 1
    assert n.link(n.a)["state"] == "up" and n.link(n.a)["counters"]["ups"] == 1
    n.check_counters()


def test_link_down_then_back():
    n = up_net()
    assert n.a.events() == [("link_up", "relay-b@no")] and n.b.events() == [("link_up", "relay-a@no")]
    n.cut = True
    n.step(5 * KA_MS)
    assert n.link(n.a)["state"] == "down" and n.link(n.b)["state"] == "connecting"
    assert n.a.events() == [("link_down", "relay-b@no")] and n.b.events() == [("link_down", "relay-a@no")]
    n.cut = False
    n.step(40000)
    assert n.link(n.a)["state"] == "up" and n.link(n.b)["state"] == "up"
    assert n.link(n.b)["counters"]["ups"] == 2
    assert n.b.events() == [("link_up", "relay-a@no")]
    n.check_counters()


# --- groups and floor control across the link --------------------------------------------------------


def test_attach_and_detach():
    n = two_sites()
    assert n.link(n.a)["counters"]["attaches"] == 1
    for name in ("cat", "dan"):
        n.act(name, n.devs[name].deaffiliate(n.now, [G1]))
    n.step(100)
    assert n.link(n.b)["attached"] == [] and n.link(n.a)["served"] == []
    assert n.link(n.a)["counters"]["detaches"] == 1
    n.check_counters()


def test_talker_at_a_heard_at_b_once_per_link():
    n = two_sites()
    n.request("ann")
    assert n.floors("ann") == [("Granted", "fire-1", "ann")]
    assert n.floors("cat") == [("Taken", "fire-1", "ann")]
    assert n.floors("dan") == [("Taken", "fire-1", "ann")]
    sent = n.talk("ann", 5)
    for who in ("bob", "cat", "dan"):
        assert [payload(p) for p in n.heard(who)] == sent, who
    assert n.link(n.a)["counters"]["voice_out"] == 5  # once per link, not per remote member
    n.release("ann")
    n.step(100)
    assert ("Idle", "fire-1") in n.floors("cat")
    n.check_counters()


def test_link_across_the_clock_wrap_keeps_alive_and_carries_voice():
    # Both relays' clocks wrap 1.5 s in: the handshake before, keep-alives and voice after.
    n = two_sites(start=PERIOD - 1500)
    assert n.now < 10000
    n.step(10 * KA_MS)
    assert n.link(n.a)["state"] == "up" and n.link(n.b)["state"] == "up"
    assert n.link(n.a)["counters"]["downs"] == 0 and n.link(n.a)["counters"]["keepalives"] >= 9
    n.request("cat")
    assert n.floors("ann") == [("Taken", "fire-1", "cat")]
    sent = n.talk("cat", 4)
    for who in ("ann", "bob", "dan"):
        assert [payload(p) for p in n.heard(who)] == sent, who
    # Silence: T1 (8 s) ends the burst at the controlling relay, to the ms after the last voice.
    last = n.now - 20
    n.run(last + 7999)
    assert ("Idle", "fire-1") not in n.floors("ann")
    n.step(1)
    assert ("Idle", "fire-1") in n.floors("ann")
    n.check_counters()


def _taken_and_voice_ssrcs(n, name):
    """(SSRC named by the last Floor Taken ``name`` heard, SSRCs of the voice it heard since)."""
    d = n.devs[name]
    taken = [e[2].ssrc_field for e in d.events if e[0] == "floor" and e[2].kind == mcpt.FLOOR_TAKEN]
    voice = [ssrc_of(e[1]) for e in d.events if e[0] == "voice"]
    d.events = []
    return (taken[-1] if taken else None), voice


def test_floor_taken_names_the_ssrc_each_listener_hears_the_talker_under():
    # An accessory plays only the stream Floor Taken names (accessory/ptt.py, app.py): at either
    # relay, whichever side the talker is on, Floor Taken must name the SSRC of the voice that
    # relay sends its devices, and so must the late entrant's Floor Taken.
    for talker, listeners, other_side in (
        ("ann", ("bob", "cat", "dan"), RB),
        ("cat", ("ann", "bob", "dan"), RA),
    ):
        n = two_sites()
        n.request(talker)
        n.talk(talker, 3)
        for who in listeners:
            taken, voice = _taken_and_voice_ssrcs(n, who)
            assert len(voice) == 3 and taken is not None, (talker, who, voice)
            assert set(voice) == {taken}, (talker, who, hex(taken), [hex(v) for v in voice])
        # A late entrant at the relay across the link from the talker (kim: receive-only, so its
        # Floor Taken is a copy of its own) hears the state, then the voice under that SSRC.
        n.device("kim", other_side, [G1])
        n.talk(talker, 2)
        taken, voice = _taken_and_voice_ssrcs(n, "kim")
        assert len(voice) == 2 and set(voice) == {taken}, (talker, taken, voice)
        n.check_counters()


def test_talker_at_b_via_track_info():
    n = two_sites()
    n.request("cat")
    assert n.floors("cat") == [("Granted", "fire-1", "cat")]
    assert n.floors("ann") == [("Taken", "fire-1", "cat")]
    assert n.floors("dan") == [("Taken", "fire-1", "cat")]
    st = n.a.status()
    grp = [g for g in st["groups"] if g["identity"] == G1][0]
    # The remote talker is a participant under its user identity (its route is kept beside it).
    assert grp["holder"] == "cat@no", grp
    sent = n.talk("cat", 4)
    for who in ("ann", "bob", "dan"):
        assert [payload(p) for p in n.heard(who)] == sent, who
    n.check_counters()


def test_a_talker_keeps_its_floor_identity_when_it_moves_between_relays():
    n = two_sites()
    n.request("cat")
    n.release("cat")
    n.step(100)
    grp = [g for g in n.a.status()["groups"] if g["identity"] == G1][0]
    assert "cat@no" in [m[0] for m in grp["members"]]
    # cat leaves relay B and registers at relay A (a device of the same system moving on).
    n.act("cat", n.devs["cat"].deregister(n.now))
    cat = DeviceSession(ident("cat"), secret_of("cat"), RA, Rng(777).bytes, groups=[G1])
    n.devs["cat"] = cat
    n.home["cat"] = RA
    n.sim.attach(cat, n.addr["cat"])  # in place of its old session, on the same address
    n.send(n.addr["cat"], cat.start(n.now))
    n.step(100)
    assert cat.state == "registered"
    grp = [g for g in n.a.status()["groups"] if g["identity"] == G1][0]
    assert [m[0] for m in grp["members"]].count("cat@no") == 1
    assert n.link(n.a)["remote_members"] == 0  # its route over the link ended
    n.clear()
    n.request("cat")
    assert n.floors("cat") == [("Granted", "fire-1", "cat")]
    assert [g for g in n.a.status()["groups"] if g["identity"] == G1][0]["holder"] == "cat@no"
    sent = n.talk("cat", 3)
    for who in ("ann", "bob", "dan"):
        assert [payload(p) for p in n.heard(who)] == sent, who
    n.check_counters()


def test_queue_and_preemption_across_relays():
    n = two_sites()
    n.request("ann")
    n.step(50)
    n.clear()
    n.request("dan")  # dan's ceiling is 50: queued behind ann
    assert n.floors("dan") == [("Queue", "fire-1", 1)]
    n.request("cat", prio=200, ind=mcpt.IND_EMERGENCY)  # cat's ceiling 200, emergency: pre-empts
    n.step(100)
    assert ("Revoke", "fire-1", mcpt.REVOKE_PREEMPTED) in n.floors("ann")
    n.release("ann")
    n.step(500)
    assert ("Granted", "fire-1", "cat") in n.floors("cat")
    n.check_counters()


def test_e2e_payload_untouched():
    groups = [dict(g) for g in export_doc()["groups"]]
    for g in groups:
        if g["identity"] == G1:
            g["e2e"] = True
            g["key_ids"] = [1]
    n = two_sites(groups=groups)
    n.request("ann")
    sent = n.talk("ann", 3)
    assert [payload(p) for p in n.heard("cat")] == sent
    n.check_counters()


def test_link_down_mid_burst_falls_back_and_reattaches():
    n = two_sites()
    n.request("cat")
    n.talk("cat", 2)
    n.clear()
    n.cut = True
    n.step(5 * KA_MS)  # B notices: its own floor server takes over fire-1
    assert n.link(n.b)["attached"] == []
    assert ("Idle", "fire-1") in n.floors("dan")
    grp = [g for g in n.a.status()["groups"] if g["identity"] == G1][0]
    assert grp["holder"] is None, grp  # no floor stuck at A either
    n.request("dan")
    assert n.floors("dan") == [("Granted", "fire-1", "dan")]
    n.release("dan")
    n.cut = False
    n.step(40000)
    assert n.link(n.b)["attached"] == [G1] and n.link(n.a)["served"] == [G1]
    n.clear()
    n.request("dan")
    assert n.floors("dan") == [("Granted", "fire-1", "dan")]
    assert n.floors("ann") == [("Taken", "fire-1", "dan")]
    n.check_counters()


def test_remote_holder_leaving_releases_the_floor():
    n = two_sites()
    n.request("cat")
    assert n.floors("cat") == [("Granted", "fire-1", "cat")]
    n.act("cat", n.devs["cat"].deaffiliate(n.now, [G1]))
    n.step(100)
    grp = [g for g in n.a.status()["groups"] if g["identity"] == G1][0]
    assert grp["holder"] is None, grp
    assert ("Idle", "fire-1") in n.floors("ann")
    assert ("Idle", "fire-1") in n.floors("dan")
    n.check_counters()


def test_floor_messages_on_the_link_carry_track_info():
    n = two_sites()
    cat = n.devs["cat"]
    seen = []
    a = n.a.links  # the relay's links part
    orig = a._floor_from_participating

    def spy(now, link, lg, msgs):
        # What A decrypted from the link, before it strips Track Info.
        for m in msgs:
            seen.append((m.kind, m.ssrc, m.user_id, m.track_info.refs if m.track_info else None, lg.ssrc))
        return orig(now, link, lg, msgs)

    a._floor_from_participating = spy
    n.request("cat")
    req = seen[0]
    assert req[0] == mcpt.FLOOR_REQUEST and req[3] == (cat.ssrc,), seen
    assert req[1] == req[4] and req[2] == ident("cat"), seen
    n.check_counters()
