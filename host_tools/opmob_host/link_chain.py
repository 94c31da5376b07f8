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
hop's SRTP. The four run in an ``opmob.sim.Sim`` (instant delivery, in send order; time virtual);
the CPU time each relay spends on the datagrams it receives is recorded.
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


class _Timed:
    """A relay core as the simulator's node, with the CPU time of its ``on_datagram`` counted."""

    def __init__(self, core: Any, cpu: dict[Any, float], addr: Any) -> None:
        self.core = core
        self.cpu = cpu
        self.addr = addr

    def on_datagram(self, now: int, src: Any, data: bytes) -> Any:
        t0 = time.process_time()
        out = self.core.on_datagram(now, src, data)
        self.cpu[self.addr] += time.process_time() - t0
        return out

    def poll(self, now: int) -> Any:
        return self.core.poll(now)

    def next_deadline(self) -> int | None:
        d: int | None = self.core.next_deadline()
        return d


class LinkChain:
    """``codec``: the link's codec ("codec2_3200", "codec2_1600", "codec2_700c", "dvi4");
    ``accel``: the backend ("c" or "pure"; Codec2 links need "c")."""

    def __init__(self, codec: str = "codec2_3200", accel: str = "c") -> None:
        from opmob import mcpt
        from opmob.device import DeviceSession
        from opmob.registry import Registry
        from opmob.relay import Relay
        from opmob.sim import Sim

        from opmob_host import accel as accel_mod
        from opmob_host.relay_cmd import fanout_for

        backend = accel_mod.select(accel)
        self.backend = backend.name
        # Instant delivery in send order; the clock as the cores see it never nears the wrap.
        self.sim = Sim(seed=1, start=0)
        self.relays: dict[tuple[str, int], Any] = {}
        self.cpu = {RELAY_A: 0.0, RELAY_B: 0.0}
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
                self.sim.now,
                srtp=backend.SrtpSession,
                fanout=fanout_for(backend),
                codec=backend.link_codec() if cfg.links[0].transcodes else None,
            )
            self.sim.attach(_Timed(self.relays[addr], self.cpu, addr), addr)
        self.sim.run_for(1000)
        for addr, r in self.relays.items():
            state = r.status()["links"][0]["state"]
            if state != "up":
                raise RuntimeError(f"link chain: the link at {addr} is {state}, not up")
        self.devs = {
            "ann": DeviceSession("ann@no", bytes(15) + b"\x01", RELAY_A, Rand(101), groups=[GROUP]),
            "bob": DeviceSession("bob@no", bytes(15) + b"\x02", RELAY_B, Rand(102), groups=[GROUP]),
        }
        for name, d in self.devs.items():
            self.sim.attach(d, self.addr[name])
            self.sim.send(self.addr[name], d.start(self.sim.now))
        self.sim.run_for(2500)  # registration, then B attaches the group at its next keep-alive
        for name, d in self.devs.items():
            if d.state != "registered":
                raise RuntimeError(f"link chain: {name} did not register ({d.state})")
        attached = self.relays[RELAY_B].status()["links"][0]["attached"]
        if attached != [GROUP]:
            raise RuntimeError(f"link chain: relay B attached {attached}, not {GROUP}")
        ann = self.devs["ann"]
        req = mcpt.FloorMsg(mcpt.FLOOR_REQUEST, indicator=mcpt.IND_QUEUEING_SUPPORTED)
        self.sim.send(self.addr["ann"], ann.send_floor(self.sim.now, req, GROUP))
        self.sim.run_for(100)
        granted = [e for e in ann.events if e[0] == "floor" and e[2].kind == mcpt.FLOOR_GRANTED]
        if not granted:
            raise RuntimeError("link chain: ann was not granted the floor")
        for d in self.devs.values():
            d.events = []
        self.cpu[RELAY_A] = self.cpu[RELAY_B] = 0.0

    @property
    def now(self) -> int:
        """The cores' clock (int ms modulo 2^30)."""
        now: int = self.sim.now
        return now

    def talk(self, payloads: list[bytes], ssrc: int = 0xA1) -> list[bytes]:
        """Send each DVI4 payload as ann's RTP, 20 ms apart; the DVI4 payloads bob received."""
        from opmob import rtp

        ann, bob = self.devs["ann"], self.devs["bob"]
        heard: list[bytes] = []
        seq = 1000
        for i, payload in enumerate(payloads):
            pkt = rtp.encode(rtp.RtpHeader(_PT_DVI4, (seq + i) & 0xFFFF, 160 * (seq + i), ssrc), payload)
            self.sim.send(self.addr["ann"], ann.send_voice(self.sim.now, pkt))
            self.sim.run_for(20)
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
