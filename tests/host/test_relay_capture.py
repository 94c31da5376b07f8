"""A call through a real relay process, captured live on ``lo`` with tshark and decoded by tshark.

Floor control travels in SRTCP and voice in SRTP, which tshark cannot read. The test decrypts the
capture offline with the session keys its own devices derived (read from the ``DeviceSession``s,
in test code only: fresh ``opmob.srtp.SrtpSession``s per device and direction), writes the
plaintext datagrams to pcap files with the capture's timestamps and ports, and has tshark decode
them as RTCP (floor control) and RTP (voice). Per device, tshark's MCPT subtype sequence (ack bit
included), reject causes, granted parties and Floor Indicators must equal what the device
received, and what it sent must be what the script had it send; tshark's RTP (SSRC, sequence
number, payload type, payload) must equal what each device sent and heard.

The call: ann, bob and cat join fire-1 (Floor Idle each); ann asks for the floor (Granted to ann,
Taken to the others), talks, bob asks without queueing (Deny 1), ann releases (Floor Idle to all).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from opmob import mcpt, sig, srtp
from opmob_host.pcap import write_records
from relayproc import Client, Output, RelayProc, close_all, expect, export_doc, short_dir, start_clients

TSHARK = shutil.which("tshark")
G = "fire-1@no"
NORMAL = "normal"
MCPT = "rtcp.app_data.mcptt."
FLOOR_FIELDS = [
    "udp.srcport",
    "udp.dstport",
    "rtcp.app.name",
    "rtcp.app.subtype",
    MCPT + "rej_cause",
    MCPT + "rej_cause.floor_deny",
    MCPT + "rej_cause.floor_revoke",
    "rtcp.mcptt.granted_partys_id",
    MCPT + "floor_ind",
]
VOICE_FIELDS = ["udp.srcport", "udp.dstport", "rtp.ssrc", "rtp.seq", "rtp.p_type", "rtp.payload"]

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt install tshark)")


def tshark_fields(args: list[str], fields: list[str]) -> list[list[str]]:
    assert TSHARK is not None
    cmd = [TSHARK, *args, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [line.split("\t") for line in p.stdout.splitlines() if line]


class Capture:
    """tshark capturing ``udp port PORT`` on lo into ``path``, from ``start`` until ``stop``."""

    def __init__(self, port: int, path: Path) -> None:
        self.port = port
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        assert TSHARK is not None
        self.proc = subprocess.Popen(
            [TSHARK, "-i", "lo", "-f", f"udp port {self.port}", "-w", str(self.path), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        err = Output(self.proc.stderr)
        try:
            err.wait_for("Capturing on ", timeout=15)
        except AssertionError:
            self.proc.kill()
            self.proc.wait()
            why = " ".join(err.seen)[-300:]
            pytest.skip(f"cannot capture on lo with tshark (needs root or CAP_NET_RAW): {why}")
        time.sleep(0.5)  # dumpcap has opened lo and set the filter; give it a margin

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def datagrams(self) -> list[tuple[float, int, int, bytes]]:
        rows = tshark_fields(
            ["-r", str(self.path)], ["frame.time_epoch", "udp.srcport", "udp.dstport", "udp.payload"]
        )
        return [(float(t), int(s), int(d), bytes.fromhex(p)) for t, s, d, p in rows]


def decrypt(
    records: list[tuple[float, int, int, bytes]], relay_port: int, clients: list[Client]
) -> tuple[list[tuple[float, int, int, bytes]], list[tuple[float, int, int, bytes]]]:
    """The captured SRTCP and SRTP as plaintext (floor, voice), with capture times (from the first
    datagram) and ports. Signalling is left out: it has no standard dissector."""
    up: dict[int, srtp.SrtpSession] = {}
    down: dict[int, srtp.SrtpSession] = {}
    for c in clients:
        assert len(c.dev.key_log) == 1, "one registration per device during the call"
        _ssrc, k = c.dev.key_log[0]
        up[c.port] = srtp.SrtpSession(k.srtp_up_key, k.srtp_up_salt)
        down[c.port] = srtp.SrtpSession(k.srtp_down_key, k.srtp_down_salt)
    t0 = records[0][0]
    floor, voice = [], []
    for t, sport, dport, data in records:
        if sig.is_sig(data):
            continue
        if dport == relay_port:
            sess = up[sport]
        else:
            assert sport == relay_port
            sess = down[dport]
        if 192 <= data[1] <= 223:
            floor.append((t - t0, sport, dport, sess.unprotect_rtcp(data)))
        else:
            voice.append((t - t0, sport, dport, sess.unprotect(data)))
    return floor, voice


def subtype(m: Any) -> int:
    return int(m.kind | (mcpt.ACK_REQUESTED if m.ack_req else 0))


def cause_text(m: Any) -> str:
    return "" if m.reject_cause is None else str(m.reject_cause)


def test_tshark_decodes_the_captured_call_as_the_devices_received_it(tmp_path: Path) -> None:
    with short_dir() as d:
        doc, secrets = export_doc({"ann": (100, [G]), "bob": (100, [G]), "cat": (100, [G])}, [G])
        with RelayProc(d, doc) as r:
            cap = Capture(r.udp_port, tmp_path / "call.pcapng")
            cap.start()
            try:

                async def call() -> tuple[dict[str, Client], list[bytes]]:
                    cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
                    ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
                    ann.request()
                    await expect(
                        {
                            ann: [("Granted", "ann@no", 0, NORMAL)],
                            bob: [("Taken", "ann@no", 1, NORMAL)],
                            cat: [("Taken", "ann@no", 1, NORMAL)],
                        },
                        G,
                    )
                    sent = await ann.talk(5)
                    bob.request(queue=False)
                    await expect(
                        {bob: [("Deny", mcpt.DENY_ANOTHER_HAS_PERMISSION, NORMAL)], ann: [], cat: []}, G
                    )
                    ann.release()
                    await expect(
                        {ann: [("Idle", NORMAL)], bob: [("Idle", NORMAL)], cat: [("Idle", NORMAL)]}, G
                    )
                    await asyncio.sleep(0.3)
                    close_all(cl)
                    return cl, sent

                clients, sent = asyncio.run(asyncio.wait_for(call(), 60))
            finally:
                cap.stop()
        records = cap.datagrams()

    by_port = {c.port: c for c in clients.values()}
    floor, voice = decrypt(records, r.udp_port, list(clients.values()))
    write_records(tmp_path / "floor.pcap", floor)
    write_records(tmp_path / "voice.pcap", voice)
    rows = tshark_fields(
        ["-r", str(tmp_path / "floor.pcap"), "-d", f"udp.port=={r.udp_port},rtcp"], FLOOR_FIELDS
    )
    assert len(rows) == len(floor)
    got_down: dict[str, list[tuple[str, ...]]] = {n: [] for n in clients}
    got_up: dict[str, list[int]] = {n: [] for n in clients}
    for sport, dport, name, sub, cause, deny, revoke, party, ind in rows:
        assert name == "MCPT", name  # one MCPT packet per datagram
        if sport == str(r.udp_port):
            got_down[by_port[int(dport)].name].append((sub, cause or deny or revoke, party, ind))
        else:
            got_up[by_port[int(sport)].name].append(int(sub))

    for n, c in clients.items():
        # What tshark read off the wire is what the device received, in the same order.
        want = [
            (
                str(subtype(m)),
                cause_text(m),
                m.granted_party or "",
                "" if m.indicator is None else str(m.indicator),
            )
            for _, _, m in c.floor_log
        ]
        assert got_down[n] == want, (n, got_down[n], want)
    A = mcpt.ACK_REQUESTED
    assert [int(x[0]) for x in got_down["ann"]] == [
        mcpt.FLOOR_IDLE | A,
        mcpt.FLOOR_GRANTED | A,
        mcpt.FLOOR_IDLE | A,
    ]
    assert [int(x[0]) for x in got_down["bob"]] == [
        mcpt.FLOOR_IDLE | A,
        mcpt.FLOOR_TAKEN,
        mcpt.FLOOR_DENY,
        mcpt.FLOOR_IDLE | A,
    ]
    assert [int(x[0]) for x in got_down["cat"]] == [
        mcpt.FLOOR_IDLE | A,
        mcpt.FLOOR_TAKEN,
        mcpt.FLOOR_IDLE | A,
    ]
    assert got_down["bob"][2][1] == str(mcpt.DENY_ANOTHER_HAS_PERMISSION)
    assert got_down["bob"][1][2] == "ann@no"
    # Uplink: each Floor Ack the server asked for, and the script's requests and release.
    ack, req, rel = mcpt.FLOOR_ACK, mcpt.FLOOR_REQUEST, mcpt.FLOOR_RELEASE
    assert got_up["ann"] == [ack, req, ack, rel, ack]
    assert got_up["bob"] == [ack, req, ack]
    assert got_up["cat"] == [ack, ack]

    # Voice: ann's five packets, once up to the relay and once down to each of bob and cat.
    rows = tshark_fields(
        ["-r", str(tmp_path / "voice.pcap"), "-d", f"udp.port=={r.udp_port},rtp"], VOICE_FIELDS
    )
    assert len(rows) == len(voice) == 15

    def as_tshark(pkt: bytes) -> tuple[str, str, str, str]:
        return (
            f"0x{int.from_bytes(pkt[8:12], 'big'):08x}",
            str(int.from_bytes(pkt[2:4], "big")),
            str(pkt[1] & 0x7F),
            pkt[12:].hex(),
        )

    streams: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for sport, dport, ssrc, seq, pt, payload in rows:
        streams.setdefault((sport, dport), []).append((ssrc, seq, pt, payload.replace(":", "")))
    relay = str(r.udp_port)
    assert streams[(str(clients["ann"].port), relay)] == [as_tshark(p) for p in sent]
    for n in ("bob", "cat"):
        heard = [p for _, p in clients[n].voice_log]
        assert heard == sent
        assert streams[(relay, str(clients[n].port))] == [as_tshark(p) for p in heard]
    assert set(streams) == {(str(clients["ann"].port), relay)} | {
        (relay, str(clients[n].port)) for n in ("bob", "cat")
    }
    assert all(pt == "5" for s in streams.values() for _, _, pt, _ in s)  # DVI4
