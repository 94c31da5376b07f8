"""Two relays of one system as real ``opmob relay run`` processes on loopback, joined by a link.

Relay A ("relay-a@no") controls fire-1; relay B ("relay-b@no") initiates the link and attaches
fire-1, so its members' floor messages go to A's one floor server and the group's voice crosses
the link once, in the link's codec. ann and bob are at A, cat and dan at B (scripted
DeviceSessions). Speech is /usr/share/codec2/raw/hts1a.raw, DVI4-encoded by the talker; what a
listener hears is decoded and compared with what was said by the normalized cross-correlation of
the two 10 ms energy envelopes (Codec2 is parametric: it keeps the envelope, not the waveform, so
a sample-by-sample NCC says little). Measured end to end through both relays: codec2_3200 0.96
(both directions), codec2_1600 0.93; Codec2 3200 of one second of speech against another second
scores about 0.1. The threshold is ENV_NCC_MIN.
"""

from __future__ import annotations

import array
import asyncio
import math
import os
from pathlib import Path
from typing import Any

import pytest
from opmob import mcpt, rtp
from relayproc import RelayProc, arun, export_doc, short_dir, start_clients, wait_for

opmob_c = pytest.importorskip("opmob_c")

SPEECH = Path("/usr/share/codec2/raw/hts1a.raw")
G1 = "fire-1@no"
A_ID = "relay-a@no"
B_ID = "relay-b@no"
PEOPLE = {"ann": (100, [G1]), "bob": (100, [G1]), "cat": (200, [G1]), "dan": (50, [G1])}
ENV_NCC_MIN = 0.8
FRAMES = 100  # 2 s of speech
FRAME = 320  # bytes of 16-bit PCM in 20 ms at 8 kHz
# Codec2 payload bytes per RTP packet on the link: 3200 bit/s x 20 ms, 1600 bit/s x 40 ms.
CODEC2_PAYLOAD = {"codec2_3200": 8, "codec2_1600": 8}

pytestmark = pytest.mark.skipif(not SPEECH.exists(), reason="codec2 speech samples not installed")


def envelope(pcm: bytes, frame: int = 80) -> list[float]:
    a = array.array("h", pcm)
    return [
        math.sqrt(sum(x * x for x in a[i : i + frame]) / frame) for i in range(0, len(a) - frame + 1, frame)
    ]


def envelope_ncc(src: bytes, got: bytes, max_lag: int = 40) -> float:
    """Best NCC of the 10 ms RMS envelopes of ``src`` and ``got`` over lags 0..max_lag (x 10 ms)."""
    e1, e2 = envelope(src), envelope(got)
    best = -1.0
    for lag in range(max_lag + 1):
        n = min(len(e1), len(e2) - lag)
        if n < 20:
            break
        x, y = e1[:n], e2[lag : lag + n]
        mx, my = sum(x) / n, sum(y) / n
        sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
        sx = math.sqrt(sum((a - mx) ** 2 for a in x))
        sy = math.sqrt(sum((b - my) ** 2 for b in y))
        if sx and sy:
            best = max(best, sxy / (sx * sy))
    return best


def speech_packets(ssrc: int, seq0: int) -> tuple[bytes, list[bytes]]:
    pcm = SPEECH.read_bytes()[: FRAMES * FRAME]
    enc = opmob_c.Dvi4Encoder()
    pkts = []
    for f in range(FRAMES):
        payload = bytes(enc.encode(pcm[f * FRAME : (f + 1) * FRAME]))
        pkts.append(
            rtp.encode(rtp.RtpHeader(rtp.PT_DVI4_8K, (seq0 + f) & 0xFFFF, (seq0 + f) * 160, ssrc), payload)
        )
    return pcm, pkts


def decode_heard(pkts: list[bytes]) -> bytes:
    dec = opmob_c.Dvi4Decoder()
    by_seq = sorted(pkts, key=lambda p: (p[2] << 8) | p[3])
    return b"".join(bytes(dec.decode(p[12:])) for p in by_seq)


async def say(client: Any) -> tuple[bytes, list[bytes]]:
    pcm, pkts = speech_packets(client.dev.ssrc, client._seq)
    client._seq += FRAMES
    for p in pkts:
        client.send_voice(p)
        await asyncio.sleep(0.02)
    return pcm, pkts


class Pair:
    def __init__(self, d: Path, codec: str, psk_b: bytes | None = None, e2e: bool = False) -> None:
        self.export, self.secrets = export_doc(PEOPLE, [G1])
        if e2e:
            self.export["groups"][0]["e2e"] = True
            self.export["groups"][0]["key_ids"] = [1]
        psk = os.urandom(32)
        (d / "a").mkdir()
        (d / "b").mkdir()
        self.a = RelayProc(
            d / "a",
            self.export,
            identity=A_ID,
            links=[{"peer": B_ID, "key_file": "link.key", "codec": codec, "psk": psk}],
        )
        self.a.start()
        self.b = RelayProc(
            d / "b",
            self.export,
            identity=B_ID,
            links=[
                {
                    "peer": A_ID,
                    "host": "127.0.0.1",
                    "port": self.a.udp_port,
                    "key_file": "link.key",
                    "codec": codec,
                    "attach": [G1],
                    "psk": psk if psk_b is None else psk_b,
                }
            ],
        )
        self.b.start()

    def stop(self) -> None:
        self.b.stop()
        self.a.stop()

    async def up(self) -> None:
        async def both_up() -> bool:
            sa, sb = await self.a.astatus(), await self.b.astatus()
            return sa["links"][0]["state"] == "up" and sb["links"][0]["state"] == "up"

        for _ in range(100):
            if await both_up():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("link not up within 5 s")

    async def sites(self) -> dict[str, Any]:
        await self.up()
        ca = await start_clients(self.a, self.secrets, {"ann": [G1], "bob": [G1]})
        cb = await start_clients(self.b, self.secrets, {"cat": [G1], "dan": [G1]})
        for _ in range(100):
            sb = await self.b.astatus()
            if sb["links"][0]["attached"] == [G1]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"B did not attach {G1}: {sb['links']}")
        await asyncio.sleep(0.2)
        clients = {**ca, **cb}
        for c in clients.values():
            c.floors()
            c.heard()
        return clients


def link_counters(st: dict[str, Any]) -> dict[str, int]:
    c: dict[str, int] = st["links"][0]["counters"]
    return c


async def _granted(c: Any) -> None:
    await c.until(lambda: any(m.kind == mcpt.FLOOR_GRANTED for _, _, m in c.pending_floors()), 5, "granted")


async def _a_to_b(codec: str) -> None:
    with short_dir() as d:
        p = Pair(d, codec)
        try:
            cl = await p.sites()
            ann, cat, dan = cl["ann"], cl["cat"], cl["dan"]
            ann.request()
            await _granted(ann)
            await cat.until(lambda: len(cat.pending_floors()) >= 1, 5, "cat: floor taken")
            assert cat.floors() == [("Taken", "ann@no", 1, "normal")]
            pcm, _ = await say(ann)
            await wait_for(lambda: len(dan.heard()) >= 0 and len(cat.voice_log) >= FRAMES - 2, 5, "cat hears")
            ncc = envelope_ncc(pcm, decode_heard(cat.heard()))
            assert ncc >= ENV_NCC_MIN, f"{codec}: envelope NCC {ncc:.3f} < {ENV_NCC_MIN}"
            sa = await p.a.astatus()
            # The transcoding and every hop's SRTP ran on the C extension in both relay processes.
            assert sa["driver"]["accel"] == "c", sa["driver"]
            assert (await p.b.astatus())["driver"]["accel"] == "c"
            lc = link_counters(sa)
            # Once per link (not per remote member), in Codec2-sized packets.
            per_packet = 2 if codec == "codec2_1600" else 1
            assert FRAMES // per_packet - 2 <= lc["voice_out"] <= FRAMES // per_packet, lc
            assert lc["voice_payload_out"] == CODEC2_PAYLOAD[codec] * lc["voice_out"], lc
            assert lc["transcode_errors"] == 0
            # The operator sees the link in the monitor.
            from opmob_host.monitor import render

            view = render(sa, "http://relay-a", "now")
            assert "LINKS" in view and B_ID in view and codec in view and G1 in view, view
        finally:
            p.stop()


def test_a_to_b_codec2_3200() -> None:
    arun(_a_to_b("codec2_3200"))


def test_a_to_b_codec2_1600() -> None:
    arun(_a_to_b("codec2_1600"))


def test_b_to_a_queue_and_preemption() -> None:
    async def main() -> None:
        with short_dir() as d:
            p = Pair(d, "codec2_3200")
            try:
                cl = await p.sites()
                ann, bob, cat, dan = cl["ann"], cl["bob"], cl["cat"], cl["dan"]
                # The reverse direction: cat at B talks, ann at A hears.
                cat.request()
                await _granted(cat)
                await ann.until(lambda: len(ann.pending_floors()) >= 1, 5, "ann: floor taken")
                assert ann.floors() == [("Taken", "cat@no", 1, "normal")]
                pcm, _ = await say(cat)
                await wait_for(lambda: len(ann.voice_log) >= FRAMES - 2, 5, "ann hears")
                ncc = envelope_ncc(pcm, decode_heard(ann.heard()))
                assert ncc >= ENV_NCC_MIN, f"B->A envelope NCC {ncc:.3f}"
                assert len(dan.heard()) >= FRAMES - 2  # B's own member, fanned out at B
                cat.release()
                await ann.until(
                    lambda: any(m.kind == mcpt.FLOOR_IDLE for _, _, m in ann.pending_floors()), 5, "idle"
                )
                for c in cl.values():
                    c.floors()
                # ann at A talks; dan at B (lower ceiling) is queued; cat's emergency pre-empts ann.
                ann.request()
                await _granted(ann)
                dan.request()
                await dan.until(
                    lambda: any(m.kind == mcpt.FLOOR_QUEUE_POSITION_INFO for _, _, m in dan.pending_floors()),
                    5,
                    "dan queued",
                )
                assert ("Queue", 1) in dan.floors()
                cat.request(prio=200, ind=mcpt.IND_EMERGENCY)
                await ann.until(
                    lambda: any(m.kind == mcpt.FLOOR_REVOKE for _, _, m in ann.pending_floors()),
                    5,
                    "ann revoked",
                )
                assert ("Revoke", mcpt.REVOKE_PREEMPTED, "emergency") in ann.floors()
                ann.release()
                await _granted(cat)
                st = await p.a.astatus()
                grp = [g for g in st["groups"] if g["identity"] == G1][0]
                assert grp["holder"] == "cat@no", grp  # its user identity; its route is kept beside it
                assert bob.floors()  # A's own listener followed it all
            finally:
                p.stop()

    arun(main())


def test_e2e_group_crosses_byte_identical() -> None:
    async def main() -> None:
        with short_dir() as d:
            p = Pair(d, "codec2_3200", e2e=True)
            try:
                cl = await p.sites()
                ann, cat = cl["ann"], cl["cat"]
                ann.request()
                await _granted(ann)
                _, sent = await say(ann)
                await wait_for(lambda: len(cat.voice_log) >= FRAMES, 5, "cat hears")
                heard = sorted(cat.heard(), key=lambda q: (q[2] << 8) | q[3])
                assert [q[12:] for q in heard] == [s[12:] for s in sent]
                lc = link_counters(await p.a.astatus())
                assert lc["voice_payload_out"] == sum(len(s) - 12 for s in sent)
            finally:
                p.stop()

    arun(main())


def test_wrong_link_key_refused() -> None:
    async def main() -> None:
        with short_dir() as d:
            p = Pair(d, "codec2_3200", psk_b=os.urandom(32))
            try:
                for _ in range(60):
                    sb = await p.b.astatus()
                    if sb["counters"].get("drop_link_auth_failed", 0) >= 1:
                        break
                    await asyncio.sleep(0.05)
                sa = await p.a.astatus()
                assert sb["counters"]["drop_link_auth_failed"] >= 1, sb["counters"]
                assert link_counters(sb)["auth_failed"] >= 1
                assert sb["links"][0]["state"] == "connecting"
                assert sa["links"][0]["state"] == "down" and link_counters(sa)["ups"] == 0
            finally:
                p.stop()

    arun(main())


def test_link_key_file_and_codec_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    key = os.urandom(32).hex()
    kf = tmp_path / "link.key"
    kf.write_text(key + "\n")
    kf.chmod(0o644)

    def check(codec: str, accel: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "relay.toml").write_text(
            f'[relay]\nidentity = "{A_ID}"\n[registry]\npath = "state/r.sqlite"\n'
            f'[[link]]\npeer = "{B_ID}"\nkey_file = "link.key"\ncodec = "{codec}"\n'
        )
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "opmob_host.cli",
                "relay",
                "check",
                "--config",
                str(tmp_path / "relay.toml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, OPMOB_ACCEL=accel),
        )

    r = check("codec2_3200", "c")
    assert r.returncode == 2 and "link[0].key_file" in r.stderr and "chmod 600" in r.stderr, r.stderr
    assert key not in r.stdout + r.stderr
    kf.chmod(0o600)
    assert check("codec2_3200", "c").returncode == 0
    r = check("codec2_700c", "pure")
    assert r.returncode == 2 and f"link[0] to {B_ID}" in r.stderr and "codec2_700c" in r.stderr, r.stderr
    r = check("dvi4", "pure")
    assert r.returncode == 0, r.stderr
    assert key not in r.stdout + r.stderr


def test_micropython_relay_on_a_dvi4_link() -> None:
    """B is the MicroPython relay (no Codec2): a "dvi4" link works, voice crosses untranscoded."""
    from relayproc import MICROPYTHON

    if not MICROPYTHON.exists():
        pytest.skip("MicroPython unix port not installed")

    async def main() -> None:
        with short_dir() as d:
            export, secrets = export_doc(PEOPLE, [G1])
            psk = os.urandom(32)
            (d / "a").mkdir()
            (d / "b").mkdir()
            a = RelayProc(
                d / "a",
                export,
                identity=A_ID,
                links=[{"peer": B_ID, "key_file": "k", "codec": "dvi4", "psk": psk}],
            )
            a.start()
            b = RelayProc(
                d / "b",
                export,
                runtime="micropython",
                identity=B_ID,
                links=[
                    {
                        "peer": A_ID,
                        "host": "127.0.0.1",
                        "port": a.udp_port,
                        "key_file": "k",
                        "codec": "dvi4",
                        "attach": [G1],
                        "psk": psk,
                    }
                ],
            )
            b.start()
            try:
                for _ in range(100):
                    if (await a.astatus())["links"][0]["state"] == "up":
                        break
                    await asyncio.sleep(0.05)
                ann = (await start_clients(a, secrets, {"ann": [G1]}))["ann"]
                cat = (await start_clients(b, secrets, {"cat": [G1]}))["cat"]
                for _ in range(100):
                    if (await a.astatus())["links"][0]["served"] == [G1]:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                cat.floors()
                ann.request()
                await _granted(ann)
                try:
                    await cat.until(lambda: len(cat.pending_floors()) >= 1, 5, "cat: floor taken")
                except TimeoutError:
                    raise AssertionError(f"A: {await a.astatus()}\nB: {b.output()[-3000:]}") from None
                assert cat.floors() == [("Taken", "ann@no", 1, "normal")]
                sent = await ann.talk(20)
                await wait_for(lambda: len(cat.voice_log) >= 20, 5, "cat hears")
                heard = sorted(cat.heard(), key=lambda q: (q[2] << 8) | q[3])
                assert [q[12:] for q in heard] == [s[12:] for s in sent]
            finally:
                b.stop()
                a.stop()

    arun(main())
