"""Two relay cores of one system joined by a link, in memory: the whole voice chain as the relays
run it, for the quality measurement and the link benchmark.

Accessory "ann" is registered at relay A, accessory "bob" at relay B; relay B attaches the group
over the link to A, which controls its floor. ann takes the floor and talks; her DVI4 RTP goes

    ann --SRTP--> relay A: unprotect, floor gate, DVI4 -> Codec2 (the link's transcoder slot),
                  protect with the link key --link--> relay B: unprotect, Codec2 -> DVI4,
                  re-protect for each listener --SRTP--> bob

through ``Relay.on_datagram`` of both cores, built as ``opmob relay run`` builds them
(``relay_cmd``: the backend's SRTP class, fan-out and ``link_codec``). Nothing is skipped or
stubbed: registration, mutual authentication, the link handshake, affiliation, the floor, every
hop's SRTP. Time is virtual; the CPU time each relay spends on the talker's packets is recorded.
"""

from __future__ import annotations

import time
from typing import Any

from opmob_host.bench_core import Rand, one_group_store

RELAY_A = ("10.0.0.1", 7700)
RELAY_B = ("10.0.0.2", 7700)
GROUP = "chain@no"
FRAME_BYTES = 320  # 20 ms of 8 kHz s16le, one DVI4 packet
_PT_DVI4 = 5
_LINK_PSK = bytes(range(32))


def _cfg(me: str, peer: str, codec: str, attach: list[str], initiate: bool) -> Any:
    from opmob.relay_config import RelayConfig

    link: dict[str, Any] = {"peer": peer, "key_file": "unused", "codec": codec, "attach": attach}
    if initiate:
        link["host"], link["port"] = RELAY_A
    cfg = RelayConfig.from_dict(
        {
            "relay": {"identity": me},
            "registry": {"path": "unused"},
            # One burst as long as the speech, and no keep-alive falling due inside it.
            "timers": {"keepalive": 2, "expiry": 65535},
            "floor": {"t2": 65535},
            "link": [link],
        }
    )
    cfg.links[0].psk = _LINK_PSK  # what load_link_keys reads from key_file
    return cfg


class LinkChain:
    """``codec``: the link's codec ("codec2_3200", "codec2_1600", "codec2_700c", "dvi4");
    ``accel``: the backend ("c" or "pure"; Codec2 links need "c")."""

    def __init__(self, codec: str = "codec2_3200", accel: str = "c") -> None:
        from opmob import mcpt
        from opmob.device import DeviceSession
        from opmob.registry import Registry
        from opmob.relay import Relay

        from opmob_host import accel as accel_mod
        from opmob_host.relay_cmd import fanout_for

        backend = accel_mod.select(accel)
        self.backend = backend.name
        self.now = 0  # the cores' clock: int ms (it never nears the 2^30 wrap here)
        self.relays: dict[tuple[str, int], Any] = {}
        self.cpu = {RELAY_A: 0.0, RELAY_B: 0.0}
        self.queue: list[tuple[Any, Any, bytes]] = []
        self.addr = {"ann": ("10.0.1.2", 5000), "bob": ("10.0.2.2", 5000)}
        self.devs: dict[str, Any] = {}  # none until the link is up
        for addr, cfg, seed in (
            (RELAY_A, _cfg("relay-a@no", "relay-b@no", codec, [], False), 7),
            (RELAY_B, _cfg("relay-b@no", "relay-a@no", codec, [GROUP], True), 8),
        ):
            store = one_group_store(("ann", "bob"), GROUP)
            self.relays[addr] = Relay(
                cfg,
                Registry(store, "no"),
                store,
                Rand(seed),
                self.now,
                srtp=backend.SrtpSession,
                fanout=fanout_for(backend),
                codec=backend.link_codec() if cfg.links[0].transcodes else None,
            )
        self.run(1000)
        for addr, r in self.relays.items():
            state = r.status()["links"][0]["state"]
            if state != "up":
                raise RuntimeError(f"link chain: the link at {addr} is {state}, not up")
        self.devs = {
            "ann": DeviceSession("ann@no", bytes(15) + b"\x01", RELAY_A, Rand(101), groups=[GROUP]),
            "bob": DeviceSession("bob@no", bytes(15) + b"\x02", RELAY_B, Rand(102), groups=[GROUP]),
        }
        for name, d in self.devs.items():
            self.send(self.addr[name], d.start(self.now))
        self.run(self.now + 2500)  # registration, then B attaches the group at its next keep-alive
        for name, d in self.devs.items():
            if d.state != "registered":
                raise RuntimeError(f"link chain: {name} did not register ({d.state})")
        attached = self.relays[RELAY_B].status()["links"][0]["attached"]
        if attached != [GROUP]:
            raise RuntimeError(f"link chain: relay B attached {attached}, not {GROUP}")
        ann = self.devs["ann"]
        req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_QUEUEING_SUPPORTED)
        self.send(self.addr["ann"], ann.send_floor(self.now, req, GROUP))
        self.run(self.now + 100)
        granted = [e for e in ann.events if e[0] == "floor" and e[2].kind == mcpt.FLOOR_GRANTED]
        if not granted:
            raise RuntimeError("link chain: ann was not granted the floor")
        for d in self.devs.values():
            d.events = []
        self.cpu = {RELAY_A: 0.0, RELAY_B: 0.0}

    def send(self, src: Any, outs: list[tuple[Any, bytes]]) -> None:
        for dst, data in outs:
            self.queue.append((src, dst, data))

    def pump(self) -> None:
        by_addr = {a: n for n, a in self.addr.items()}
        while self.queue:
            src, dst, data = self.queue.pop(0)
            r = self.relays.get(dst)
            if r is not None:
                t0 = time.process_time()
                out = r.on_datagram(self.now, src, data)
                self.cpu[dst] += time.process_time() - t0
                self.send(dst, out)
            elif dst in by_addr:
                self.send(dst, self.devs[by_addr[dst]].on_datagram(self.now, src, data))

    def _parties(self) -> list[tuple[Any, Any]]:
        return list(self.relays.items()) + [(self.addr[n], d) for n, d in self.devs.items()]

    def run(self, until: int) -> None:
        """Deliver everything and fire every timer up to ``until`` (virtual ms)."""
        for _ in range(100000):
            self.pump()
            due = [t for _, x in self._parties() if (t := x.next_deadline()) is not None and t <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for addr, x in self._parties():
                self.send(addr, x.poll(self.now))
        else:
            raise RuntimeError("link chain: timers never settle")
        self.now = max(self.now, until)
        self.pump()

    def talk(self, payloads: list[bytes], ssrc: int = 0xA1) -> list[bytes]:
        """Send each DVI4 payload as ann's RTP, 20 ms apart; the DVI4 payloads bob received."""
        from opmob import rtp

        ann, bob = self.devs["ann"], self.devs["bob"]
        heard: list[bytes] = []
        seq = 1000
        for i, payload in enumerate(payloads):
            pkt = rtp.encode(rtp.RtpHeader(_PT_DVI4, (seq + i) & 0xFFFF, 160 * (seq + i), ssrc), payload)
            self.send(self.addr["ann"], ann.send_voice(self.now, pkt))
            self.run(self.now + 20)
            heard += [rtp.decode(e[1])[1] for e in bob.events if e[0] == "voice"]
            bob.events = [e for e in bob.events if e[0] != "voice"]
        return heard


def through_relays(pcm: bytes, codec: str = "codec2_3200") -> tuple[bytes, LinkChain]:
    """``pcm`` (8 kHz s16le, whole 20 ms frames) from ann's DVI4 encoder to bob's DVI4 decoder
    through the two relays; the PCM bob would play, and the chain (for its CPU figures)."""
    import opmob_c

    chain = LinkChain(codec)
    enc, dec = opmob_c.Dvi4Encoder(), opmob_c.Dvi4Decoder()
    frames = [pcm[o : o + FRAME_BYTES] for o in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    heard = chain.talk([bytes(enc.encode(f)) for f in frames])
    if len(heard) != len(frames):
        raise RuntimeError(f"link chain: bob heard {len(heard)} of {len(frames)} packets")
    return b"".join(bytes(dec.decode(p)) for p in heard), chain
