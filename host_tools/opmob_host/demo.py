"""``opmob demo``: a push-to-talk exchange on this machine, end to end, with real packets.

Until the relay and the accessory land, the demo drives the protocol core directly: members
register with home-made authentication vectors, a controlling floor server arbitrates a talk group
(grant, busy deny, pre-emption, emergency), and real recorded speech travels as DVI4 in RTP over
SRTP on loopback UDP sockets to every listener, who decodes it to a WAV file. Every datagram is
also written to a pcap and decoded by tshark, so what the demo prints is checked by a tool we did
not write.
"""

from __future__ import annotations

import argparse
import math
import os
import select
import shutil
import socket
import struct
import subprocess
import time
import wave
from pathlib import Path

from opmob import authvec, dvi4, mcpt, rtp, srtp
from opmob.floor_server import FloorConfig, FloorServer

from opmob_host.pcap import write_records

GROUP = "fire-1@no"


class Member:
    """One accessory: its socket, its keys with the controller, and what it heard."""

    def __init__(self, pid: int, user: str, priority: int, home_secret: bytes) -> None:
        self.pid = pid
        self.user = user
        self.priority = priority
        self.ssrc = 0x0A000000 + pid
        self.secret = home_secret
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heard = bytearray()
        self.events: list[str] = []
        self.event_times: list[float] = []
        self.tx: srtp.SrtpSession | None = None  # device -> network
        self.rx: srtp.SrtpSession | None = None  # network -> device


class Demo:
    def __init__(self, out: Path, speech: Path) -> None:
        self.out = out
        self.speech = speech
        self.t0 = time.monotonic()
        self.ctrl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ctrl.bind(("127.0.0.1", 0))
        self.ctrl_port = self.ctrl.getsockname()[1]
        self.server = FloorServer(GROUP, FloorConfig(t1=1.0, t2=30.0), server_ssrc=0x0C000001)
        self.members: dict[int, Member] = {}
        self.net_rx: dict[int, srtp.SrtpSession] = {}  # controller's view of each uplink
        self.net_tx: dict[int, srtp.SrtpSession] = {}
        self.pcap: list[tuple[float, int, int, bytes]] = []
        self.timeline: list[str] = []
        self.access_ms: list[tuple[str, float]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, line: str) -> None:
        self.timeline.append(f"  t={self.now() * 1000:8.1f} ms  {line}")

    # --- registration -------------------------------------------------------------------------
    def register(self, m: Member) -> None:
        """Home registry makes a vector; the device checks AUTN and answers; both derive keys."""
        rand = os.urandom(authvec.RAND_LEN)
        vid, rand, xres, ks, autn = authvec.make_vector(m.secret, rand, 1)
        nonce = os.urandom(authvec.NONCE_LEN)
        res, ks_dev = authvec.device_respond(m.secret, rand, autn, vid)
        if not authvec.ct_equal(res, xres):
            raise RuntimeError(f"{m.user}: RES does not match XRES")
        net_keys = authvec.derive(ks, rand, nonce)
        dev_keys = authvec.derive(ks_dev, rand, nonce)
        m.tx = srtp.SrtpSession(dev_keys.srtp_up_key, dev_keys.srtp_up_salt)
        m.rx = srtp.SrtpSession(dev_keys.srtp_down_key, dev_keys.srtp_down_salt)
        self.net_rx[m.pid] = srtp.SrtpSession(net_keys.srtp_up_key, net_keys.srtp_up_salt)
        self.net_tx[m.pid] = srtp.SrtpSession(net_keys.srtp_down_key, net_keys.srtp_down_salt)
        self.members[m.pid] = m
        self.log(f"{m.user:<10} registered: AUTN verified by the device, RES verified by the network")
        self.deliver(self.server.join(self.now(), m.pid, m.user, m.ssrc, ceiling=m.priority))

    # --- floor control over SRTCP on loopback -------------------------------------------------
    def send_floor(self, m: Member, msg: mcpt.FloorMsg) -> None:
        assert m.tx is not None
        pkt = m.tx.protect_rtcp(mcpt.encode(msg))
        m.sock.sendto(pkt, ("127.0.0.1", self.ctrl_port))
        self.pcap.append((self.now(), m.port, self.ctrl_port, mcpt.encode(msg)))
        self.log(f"{m.user:<10} -> {msg.name}" + (f" (priority {msg.priority})" if msg.priority else ""))
        self.pump()

    def pump(self, wait: float = 0.05) -> None:
        """Move every datagram in flight: controller first, then each member."""
        deadline = time.monotonic() + wait
        while True:
            socks = [self.ctrl] + [m.sock for m in self.members.values()]
            r, _, _ = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return
            for s in r:
                data, addr = s.recvfrom(2048)
                if s is self.ctrl:
                    self.on_controller(data, addr[1])
                else:
                    self.on_member(next(m for m in self.members.values() if m.sock is s), data)

    def on_controller(self, data: bytes, port: int) -> None:
        m = next(m for m in self.members.values() if m.port == port)
        if data[1] in (200, 201, 202, 203, 204):
            plain = self.net_rx[m.pid].unprotect_rtcp(data)
            for msg in mcpt.decode_compound(plain):
                self.deliver(self.server.on_message(self.now(), m.pid, msg))
            return
        plain = self.net_rx[m.pid].unprotect(data)
        out = self.server.on_media(self.now(), m.pid)
        self.deliver(out)
        if not self.server.may_send_media(m.pid):
            return
        hdr, payload = rtp.decode(plain)
        for other in self.members.values():
            if other.pid != m.pid:
                other_pkt = self.net_tx[other.pid].protect(rtp.encode(hdr, payload))
                self.ctrl.sendto(other_pkt, ("127.0.0.1", other.port))

    def deliver(self, outs: list[tuple[int, mcpt.FloorMsg]]) -> None:
        for pid, msg in outs:
            m = self.members.get(pid)
            if m is None:
                continue
            wire = mcpt.encode(msg)
            self.pcap.append((self.now(), self.ctrl_port, m.port, wire))
            self.ctrl.sendto(self.net_tx[pid].protect_rtcp(wire), ("127.0.0.1", m.port))

    def on_member(self, m: Member, data: bytes) -> None:
        assert m.rx is not None
        if data[1] in (200, 201, 202, 203, 204):
            for msg in mcpt.decode_compound(m.rx.unprotect_rtcp(data)):
                extra = ""
                if msg.kind in (mcpt.FLOOR_DENY, mcpt.FLOOR_REVOKE):
                    extra = f" (cause {msg.reject_cause})"
                elif msg.granted_party:
                    extra = f" ({msg.granted_party})"
                if msg.indicator and msg.indicator & mcpt.IND_EMERGENCY:
                    extra += " [EMERGENCY]"
                self.log(f"{m.user:<10} <- {msg.name}{extra}")
                m.events.append(msg.name)
                m.event_times.append(time.perf_counter())
                if msg.ack_req:
                    ack = mcpt.FloorMsg(mcpt.FLOOR_ACK, m.ssrc, msg_type=msg.kind | 0x10, source=0)
                    m.sock.sendto(m.tx.protect_rtcp(mcpt.encode(ack)), ("127.0.0.1", self.ctrl_port))  # type: ignore[union-attr]
            return
        _, payload = rtp.decode(m.rx.unprotect(data))
        m.heard += dvi4.decode_frame(payload)

    def request(self, m: Member, indicator: int = mcpt.IND_NORMAL) -> None:
        before = len(m.events)
        t = time.perf_counter()
        self.send_floor(
            m, mcpt.FloorMsg(mcpt.FLOOR_REQUEST, m.ssrc, priority=m.priority, indicator=indicator)
        )
        if len(m.events) > before:
            answer, ms = m.events[before], (m.event_times[before] - t) * 1000
            self.access_ms.append((f"{m.user} ({answer})", ms))
        else:
            self.access_ms.append((f"{m.user} (no answer)", float("nan")))

    # --- voice ---------------------------------------------------------------------------------
    def talk(self, m: Member, pcm: bytes, seconds: float) -> int:
        assert m.tx is not None
        enc = dvi4.Dvi4Encoder()
        frame = 2 * dvi4.FRAME_SAMPLES
        n = min(len(pcm) // frame, int(seconds * 50))
        for i in range(n):
            payload = bytes(enc.encode(pcm[i * frame : (i + 1) * frame]))
            hdr = rtp.RtpHeader(rtp.PT_DVI4_8K, i, i * dvi4.FRAME_SAMPLES, m.ssrc, marker=(i == 0))
            plain = rtp.encode(hdr, payload)
            if i < 3 or i == n - 1:
                self.pcap.append((self.now(), m.port, self.ctrl_port + 1, plain))
            m.sock.sendto(m.tx.protect(plain), ("127.0.0.1", self.ctrl_port))
            self.pump(wait=0.0)
            time.sleep(0.020)  # real time: 50 packets a second
        self.pump()
        return n


def _snr_db(ref: bytes, got: bytes) -> float:
    """SNR of decoded speech against the source, over the part both hold."""
    n = min(len(ref), len(got)) // 2
    a = struct.unpack(f"<{n}h", ref[: 2 * n])
    b = struct.unpack(f"<{n}h", got[: 2 * n])
    sig = sum(x * x for x in a)
    noise = sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) or 1
    return 10 * math.log10(sig / noise)


def _write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    speech = Path(args.speech)
    if not speech.exists():
        print(f"opmob demo: speech file {speech} not found (install Debian's codec2-examples: make setup)")
        return 2
    pcm = speech.read_bytes()
    d = Demo(out, speech)
    alice = Member(1, "alice@no", 5, os.urandom(16))
    bob = Member(2, "bob@se", 5, os.urandom(16))
    chief = Member(3, "chief@fi", 200, os.urandom(16))

    print(f"OpMob demo: talk group {GROUP}, three members from three systems, real UDP on loopback\n")
    for m in (alice, bob, chief):
        d.register(m)
    d.pump()

    d.request(alice)
    sent = d.talk(alice, pcm, 2.0)
    d.log(f"alice@no   spoke {sent} packets ({sent * 20} ms) of real speech")
    d.request(bob)  # busy, no queueing asked: denied
    d.request(chief)  # higher priority: pre-empts alice
    d.send_floor(alice, mcpt.FloorMsg(mcpt.FLOOR_RELEASE, alice.ssrc))
    d.pump(0.1)
    d.talk(chief, pcm[32000:], 1.0)
    d.request(bob, mcpt.IND_EMERGENCY)  # emergency pre-empts even the chief
    d.send_floor(chief, mcpt.FloorMsg(mcpt.FLOOR_RELEASE, chief.ssrc))
    d.pump(0.1)
    d.talk(bob, pcm[48000:], 1.0)
    d.send_floor(bob, mcpt.FloorMsg(mcpt.FLOOR_RELEASE, bob.ssrc))
    d.pump(0.1)

    print("Floor timeline (as each member saw it):")
    print("\n".join(d.timeline))
    print("\nAccess time, Floor Request sent -> first answer received (loopback, SRTCP both ways):")
    for who, ms in d.access_ms:
        print(f"  {who:<40} {ms:6.2f} ms")

    print("\nReceived audio (DVI4 decoded on the listener):")
    for m in (alice, bob, chief):
        path = out / f"{m.user.split('@')[0]}-heard.wav"
        _write_wav(path, bytes(m.heard))
        print(f"  {m.user:<10} heard {len(m.heard) / 16000:4.2f} s -> {path}")
    snr = _snr_db(pcm[: 2 * 2 * 8000], bytes(bob.heard[: 2 * 2 * 8000]))
    print(f"  SNR of alice's speech as bob heard it: {snr:.1f} dB (DVI4 round trip, no loss)")

    cap = write_records(out / "floor.pcap", d.pcap)
    print(f"\nEvery floor message in clear (and the first voice packets) written to {cap}")
    tshark = shutil.which("tshark")
    if tshark:
        decode = ["-d", f"udp.port=={d.ctrl_port},rtcp", "-d", f"udp.port=={d.ctrl_port + 1},rtp"]
        proc: subprocess.CompletedProcess[str] = subprocess.run(
            [tshark, "-r", str(cap), *decode, "-T", "fields", "-e", "frame.number", "-e", "_ws.col.Info"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = proc.stdout.splitlines()
        print(f"tshark decodes {len(lines)} packets; the first twelve:")
        for line in lines[:12]:
            print("  " + line.replace("\t", "  "))
    return 0
