"""Wireshark for field engineers (issue 12), with tshark:

- the shipped Lua dissector (``opmob pcap lua``) names every signalling message of
  tests/vectors/sig_v1.json and shows every field of an open body with the vector's values (the
  protected vectors opened with their keys), a protected body as ciphertext and tag, and never a
  malformed packet;
- a real call through a relay started with ``--srtp-keylog`` (a warning at start, the file mode
  0600), captured live on ``lo``: ``opmob pcap decrypt`` turns capture + key log into a plain pcap
  in which tshark, with the dissector and no other option, shows every signalling message by name,
  every voice packet as RTP, and every floor message with its MCPT fields as the devices received
  them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from opmob import mcpt, sig
from opmob_host import resources
from opmob_host.pcap import write_pcap
from opmob_host.pcap_cmd import PcapError, SigOpener, read_frames, read_keylogs, udp_of
from relayproc import Output, RelayProc, close_all, expect, export_doc, short_dir, start_clients, toml
from test_relay_capture import Capture, subtype

TSHARK = shutil.which("tshark")
ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "sig_v1.json").read_text())
LUA = str(resources.wireshark_lua())
G = "fire-1@no"
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt install tshark)")


def tshark(pcap: Path, fields: list[str], *extra: str) -> list[list[str]]:
    assert TSHARK is not None
    cmd = [TSHARK, "-X", f"lua_script:{LUA}", "-r", str(pcap), *extra, "-T", "fields"]
    cmd += ["-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|"]
    for f in fields:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Lua" not in p.stderr, p.stderr
    return [line.split("\t") for line in p.stdout.splitlines()]


def open_message(wire: bytes, key: dict[str, str]) -> bytes:
    """A protected message as it would be sent open: SIV (docs/protocol.md §5) undone, tag checked."""
    head, body, tag = wire[:16], wire[16:-16], wire[-16:]
    dec = Cipher(algorithms.AES(bytes.fromhex(key["enc"])), modes.CTR(tag[:14] + b"\0\0")).decryptor()
    plain = dec.update(body) + dec.finalize()
    assert hmac.new(bytes.fromhex(key["mac"]), head + plain, hashlib.sha256).digest()[:16] == tag
    return head[:4] + bytes([head[4] & ~1]) + head[5:] + plain


def _num(v: str) -> int:
    return int(v, 0)


# vector field -> (tshark fields, how the vector's value reads there)
def expected(name: str, value: Any) -> dict[str, str]:
    if name in ("identity", "relay", "group", "prev_relay", "peer", "text"):
        return {f"opmob.{name}": value}
    if name == "groups":
        return {"opmob.group": "|".join(value)}
    if name in ("nonce", "rand", "autn", "res", "auts", "proof"):
        return {f"opmob.{name}": value}
    if name == "affiliations":
        return {
            "opmob.affiliation.group": "|".join(a[0] for a in value),
            "opmob.affiliation.priority": "|".join(str(a[1]) for a in value),
        }
    if name == "results":
        return {
            "opmob.result.group": "|".join(r[0] for r in value),
            "opmob.result.code": "|".join(str(r[1]) for r in value),
        }
    if name == "vectors":
        return {
            "opmob.vector.vid": "|".join(str(v[0]) for v in value),
            "opmob.vector.xres": "|".join(v[2] for v in value),
        }
    if name == "resync":
        return {
            "opmob.resync.rand": value[0],
            "opmob.resync.vid": str(value[1]),
            "opmob.resync.auts": value[2],
        }
    if name == "location":
        return {"opmob.location.lat": str(value[0]), "opmob.location.lon": str(value[1])}
    if name == "addr":
        return {"opmob.addr.port": str(value[1])}
    return {f"opmob.{name}": str(value)}  # a number


def test_the_dissector_shows_every_signalling_vector(tmp_path: Path) -> None:
    messages = VECTORS["messages"] + [dict(m, **m["message"]) for m in VECTORS["decode_only"]]
    raw = [bytes.fromhex(m["hex"]) for m in messages]
    opened = [open_message(w, m["key"]) if m.get("key") else w for w, m in zip(raw, messages, strict=True)]
    # opmob pcap decrypt opens each protected vector as this independent SIV does, with every
    # vector's key in its key log (it finds the one whose tag verifies).
    keys = list(
        {(bytes.fromhex(m["key"]["enc"]), bytes.fromhex(m["key"]["mac"])) for m in messages if m.get("key")}
    )
    opener = SigOpener(keys)
    assert len(keys) >= 2 and [opener.open(w) for w in raw] == opened
    wants = [
        {k: v for name, val in m["fields"].items() for k, v in expected(name, val).items()} for m in messages
    ]
    fields = sorted({k for w in wants for k in w})
    base = [
        "opmob.message",
        "opmob.txid",
        "opmob.flags.protected",
        "opmob.tag",
        "_ws.malformed",
        "_ws.expert.severity",
    ]
    write_pcap(tmp_path / "open.pcap", opened, 40000, 7700)
    rows = tshark(tmp_path / "open.pcap", base + fields)
    assert len(rows) == len(messages)
    for m, want, row in zip(messages, wants, rows, strict=True):
        got = dict(zip(base + fields, row, strict=True))
        assert got["opmob.message"] == m["type"], (m["name"], got)
        assert _num(got["opmob.txid"]) == m["txid"] and not got["_ws.malformed"], (m["name"], got)
        assert got["_ws.expert.severity"] == "", (m["name"], got)  # nothing wrong, nothing hidden
        for k, v in want.items():
            shown = got[k]
            if k.endswith(("caps", "grants", "ssrc", "floor_ssrc")):
                shown, v = str(_num(shown)), str(v)
            assert shown == v, (m["name"], k, shown, v)

    # As captured: the protected ones named, their body ciphertext with its tag, nothing malformed.
    write_pcap(tmp_path / "raw.pcap", raw, 40000, 7700)
    rows = tshark(
        tmp_path / "raw.pcap", ["opmob.message", "opmob.flags.protected", "opmob.tag", "_ws.malformed"]
    )
    for m, (name, prot, tag, malformed) in zip(messages, rows, strict=True):
        assert name == m["type"] and not malformed, (m["name"], name)
        assert (prot == "1" and len(tag) == 32) if m.get("key") else (prot == "0" and tag == ""), (
            m["name"],
            prot,
            tag,
        )

    # Bytes a decoder rejects: marked, never a Lua error (tshark() checks stderr).
    write_pcap(
        tmp_path / "reject.pcap", [bytes.fromhex(m["hex"]) or b"\0" for m in VECTORS["reject"]], 40000, 7700
    )
    assert len(tshark(tmp_path / "reject.pcap", ["frame.number"])) == len(VECTORS["reject"])


def tlv_types(body: bytes) -> list[int]:
    """The TLV types of an open body, in order (protocol.md §3: types from 0xC0 have 2 length bytes)."""
    out, i = [], 0
    while i < len(body):
        t = body[i]
        hl, n = (3, int.from_bytes(body[i + 1 : i + 3], "big")) if t >= 0xC0 else (2, body[i + 1])
        out.append(t)
        i += hl + n
    return out


def test_without_the_option_no_key_leaves_the_relay(tmp_path: Path) -> None:
    """No --srtp-keylog (the default): after a registration, none of the device's keys is in
    anything the relay wrote (its log, its state, its directory)."""
    with short_dir() as d:
        doc, secrets = export_doc({"ann": (100, [G])}, [G])
        with RelayProc(d, doc) as r:

            async def register() -> Any:
                cl = await start_clients(r, secrets, {"ann": [G]})
                close_all(cl)
                return cl

            clients = asyncio.run(asyncio.wait_for(register(), 60))
        ((_ssrc, k),) = clients["ann"].dev.key_log
        written = b"".join(f.read_bytes() for f in d.rglob("*") if f.is_file())
        written += "\n".join(r.out.seen).encode()
        relay_log = (d / "stderr.txt").read_text()
    assert "KEY LOG" not in relay_log, relay_log
    for name, value in k.items():
        assert value.hex().encode() not in written.lower() and value not in written, name


class KeylogRelay(RelayProc):
    """``opmob relay run --srtp-keylog FILE`` (RelayProc's relay, with the lab option)."""

    def __init__(self, *args: Any, keylog: Path, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.keylog = keylog

    def start(self) -> KeylogRelay:
        from test_relay_server import free_tcp_port

        (self.dir / "export.json").write_text(json.dumps(self.export))
        (self.dir / "export.json").chmod(0o600)  # it holds secrets: the relay refuses it open to all
        self._stderr = open(self.dir / "stderr.txt", "w+")  # noqa: SIM115 (closed in stop)
        self.status_port = free_tcp_port()
        self.config_path.write_text(toml(self.config()))
        cmd = [sys.executable, "-m", "opmob_host.cli", "relay", "run", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            [*cmd, "--srtp-keylog", str(self.keylog)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=self.dir,
        )
        self.out = Output(self.proc.stdout)
        line = self.out.wait_for(f"opmob relay {self.identity}: serving udp 127.0.0.1:")
        self.udp_port = int(line.split("serving udp 127.0.0.1:")[1].split(",")[0])
        return self


def test_a_real_call_decrypted_with_the_key_log(tmp_path: Path) -> None:
    keylog = tmp_path / "srtp-keys.log"
    with short_dir() as d:
        doc, secrets = export_doc({"ann": (100, [G]), "bob": (100, [G])}, [G])
        with KeylogRelay(d, doc, keylog=keylog) as r:
            cap = Capture(r.udp_port, tmp_path / "call.pcapng")
            cap.start()
            try:

                async def call() -> Any:
                    cl = await start_clients(r, secrets, {"ann": [G], "bob": [G]})
                    ann, bob = cl["ann"], cl["bob"]
                    ann.request()
                    await expect(
                        {ann: [("Granted", "ann@no", 0, "normal")], bob: [("Taken", "ann@no", 1, "normal")]},
                        G,
                    )
                    sent = await ann.talk(5)
                    bob.request(queue=False)
                    await expect({bob: [("Deny", mcpt.DENY_ANOTHER_HAS_PERMISSION, "normal")], ann: []}, G)
                    ann.release()
                    await expect({ann: [("Idle", "normal")], bob: [("Idle", "normal")]}, G)
                    await asyncio.sleep(0.3)
                    close_all(cl)
                    return cl, sent

                clients, sent = asyncio.run(asyncio.wait_for(call(), 60))
            finally:
                cap.stop()
        relay_log = (d / "stderr.txt").read_text()
    assert "SRTP KEY LOG ON" in relay_log and str(keylog) in relay_log, relay_log[-2000:]
    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
    # Each device's SRTP and signalling keys, both directions, named by label, identity and SSRC.
    logged = {tuple(line.split()[3:]): line.split()[:3] for line in keylog.read_text().splitlines()}
    for c in clients.values():
        ((ssrc, k),) = c.dev.key_log
        for label, tag, key, other in (
            ("device_up", "OPMOB_SRTP", k.srtp_up_key, k.srtp_up_salt),
            ("device_down", "OPMOB_SRTP", k.srtp_down_key, k.srtp_down_salt),
            ("sig_up", "OPMOB_SIG", k.sig_up_enc, k.sig_up_mac),
            ("sig_down", "OPMOB_SIG", k.sig_down_enc, k.sig_down_mac),
        ):
            assert logged[(label, c.identity, str(ssrc))] == [tag, key.hex(), other.hex()], (label, logged)

    out = tmp_path / "plain.pcap"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "opmob_host.cli",
            "pcap",
            "decrypt",
            "--keylog",
            str(keylog),
            str(cap.path),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=f"{ROOT / 'firmware'}:{ROOT / 'host_tools'}"),
        timeout=120,
    )
    assert p.returncode == 0 and "without a key" not in p.stdout, p.stdout + p.stderr
    protected = [u[4] for _, lt, f in read_frames(cap.path) if (u := udp_of(lt, f)) and sig.is_sig(u[4])]
    protected = [m for m in protected if m[4] & sig.FLAG_PROTECTED]
    assert len(protected) >= 4 and f"({len(protected)} protected ones opened)" in p.stdout, p.stdout
    mc = "rtcp.app_data.mcptt."
    fields = ["_ws.col.Protocol", "opmob.message", "udp.dstport", "rtp.ssrc", "rtp.payload", "rtcp.app.name",
              "rtcp.app.subtype", mc + "rej_cause", mc + "rej_cause.floor_deny", "rtcp.mcptt.granted_partys_id",
              mc + "floor_ind", mc + "priority", "_ws.malformed"]  # fmt: skip
    rows = [dict(zip(fields, row, strict=True)) for row in tshark(out, fields)]
    assert rows and not [x for x in rows if x["_ws.malformed"]]
    kinds = {x["_ws.col.Protocol"] for x in rows}
    assert kinds <= {"OpMob", "RTP", "RTCP"}, kinds  # every datagram: signalling, voice, floor
    assert {"REGISTER", "CHALLENGE", "AUTH_RESPONSE", "REGISTER_ACK"} <= {x["opmob.message"] for x in rows}
    # Every signalling message open, by name, with every field of its body and nothing amiss.
    sig_fields = ["opmob.message", "opmob.flags.protected", "opmob.tlv.type", "opmob.unknown", "_ws.expert"]
    shown = [dict(zip(sig_fields, r, strict=True)) for r in tshark(out, sig_fields, "-Y", "opmob")]
    plain = [u[4] for _, lt, f in read_frames(out) if (u := udp_of(lt, f)) and sig.is_sig(u[4])]
    assert len(shown) == len(plain) and plain, (len(shown), len(plain))
    for x, m in zip(shown, plain, strict=True):
        assert x["opmob.message"] == sig.type_name(m[3]), (x, m.hex())
        assert (
            x["opmob.flags.protected"] in ("False", "0") and not x["opmob.unknown"] and not x["_ws.expert"]
        ), x
        assert [int(t, 0) for t in x["opmob.tlv.type"].split("|") if t] == tlv_types(m[16:]), (x, m.hex())
        if sig.type_name(m[3]) == "REGISTER_ACK":
            assert len(tlv_types(m[16:])) >= 3, m.hex()  # session's fields, once ciphertext
    by_port = {c.port: c for c in clients.values()}
    down: dict[str, list[tuple[str, ...]]] = {n: [] for n in clients}
    for x in rows:
        if x["rtcp.app.name"] == "MCPT" and int(x["udp.dstport"]) in by_port:
            cause = x[mc + "rej_cause"] or x[mc + "rej_cause.floor_deny"]
            down[by_port[int(x["udp.dstport"])].name].append(
                (
                    x["rtcp.app.subtype"],
                    cause,
                    x["rtcp.mcptt.granted_partys_id"],
                    x[mc + "floor_ind"],
                    x[mc + "priority"],
                )  # fmt: skip
            )
    for n, c in clients.items():
        want = [
            (str(subtype(m)), "" if m.reject_cause is None else str(m.reject_cause), m.granted_party or "",
             "" if m.indicator is None else str(m.indicator), "" if m.priority is None else str(m.priority))
            for _, _, m in c.floor_log
        ]  # fmt: skip
        assert down[n] == want, (n, down[n], want)
    assert any(cause == str(mcpt.DENY_ANOTHER_HAS_PERMISSION) for _, cause, _, _, _ in down["bob"])
    assert any(prio for *_, prio in down["ann"]), down["ann"]  # Floor Granted names its priority
    voice_to_bob = [x["rtp.payload"].replace(":", "") for x in rows if x["_ws.col.Protocol"] == "RTP"
                    and int(x["udp.dstport"]) == clients["bob"].port]  # fmt: skip
    assert voice_to_bob == [p[12:].hex() for _, p in clients["bob"].voice_log]
    assert len(sent) == 5 and len(voice_to_bob) == 5


def test_the_key_log_reader_takes_both_kinds_and_names_a_bad_line(tmp_path: Path) -> None:
    log = tmp_path / "keys.log"
    srtp_line = f"OPMOB_SRTP {'11' * 16} {'22' * 14} device_up ann@no 305419896"
    sig_line = f"OPMOB_SIG {'33' * 16} {'44' * 32} sig_up ann@no 305419896"
    log.write_text(f"# comment\n{srtp_line}\n{sig_line}\n{sig_line}\n")
    assert read_keylogs(log) == ([(b"\x11" * 16, b"\x22" * 14)], [(b"\x33" * 16, b"\x44" * 32)])
    for bad in (
        f"OPMOB_SIG {'33' * 15} {'44' * 32}",
        "OPMOB_SIG zz 44",
        f"SOMETHING {'11' * 16} {'22' * 14}",
    ):
        log.write_text(f"{srtp_line}\n{bad}\n")
        with pytest.raises(PcapError, match=r"keys.log:2: not a key log line"):
            read_keylogs(log)
