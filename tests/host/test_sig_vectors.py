"""The committed signalling vectors, re-checked by an implementation that shares no code with
firmware/opmob: Python's hmac/hashlib for HMAC-SHA256, OpenSSL (``cryptography``) for AES-CTR,
``struct`` for the layout, following docs/protocol.md sections 2, 3, 5 and 6. Also: the vector files
and the generated parts of docs/protocol.md are what tests/vectors/gen_sig_v1.py makes today."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parents[2]
VEC = json.loads((ROOT / "tests" / "vectors" / "sig_v1.json").read_text())
AV = json.loads((ROOT / "tests" / "vectors" / "sig_authvec_v1.json").read_text())
DOC = (ROOT / "docs" / "protocol.md").read_text()

# docs/protocol.md §10 and §11, restated.
TYPE_CODES = {
    "REGISTER": 0x01, "AUTH_RESPONSE": 0x02, "AUTH_FAILURE": 0x03, "DEREGISTER": 0x04,
    "KEEPALIVE": 0x05, "AFFILIATE": 0x08, "DEAFFILIATE": 0x09, "AFFILIATION_QUERY": 0x0A,
    "CALL_SETUP": 0x10, "CALL_NOTIFY": 0x11, "CALL_END": 0x12, "EMERGENCY_ALERT": 0x14,
    "EMERGENCY_CANCEL": 0x15, "DEVICE_CONTROL": 0x18, "AUTH_VECTOR_REQUEST": 0x20,
    "ROAM_NOTIFY": 0x21, "ROAM_CANCEL": 0x22, "LINK_HELLO": 0x28, "LINK_AUTH": 0x29,
    "GROUP_ATTACH": 0x2C, "GROUP_DETACH": 0x2D, "CHALLENGE": 0x81, "REGISTER_ACK": 0x82,
    "REGISTER_REJECT": 0x83, "DEREGISTER_ACK": 0x84, "KEEPALIVE_ACK": 0x85, "AFFILIATE_ACK": 0x88,
    "DEAFFILIATE_ACK": 0x89, "AFFILIATION_REPORT": 0x8A, "CALL_ACK": 0x90, "CALL_NOTIFY_ACK": 0x91,
    "CALL_END_ACK": 0x92, "EMERGENCY_ACK": 0x94, "DEVICE_CONTROL_ACK": 0x98,
    "AUTH_VECTOR_RESPONSE": 0xA0, "ROAM_ACK": 0xA1, "ROAM_CANCEL_ACK": 0xA2, "LINK_CHALLENGE": 0xA8,
    "LINK_ACK": 0xA9, "GROUP_ATTACH_ACK": 0xAC, "GROUP_DETACH_ACK": 0xAD, "PENDING": 0xFE,
    "ERROR": 0xFF,
}  # fmt: skip


def ident(v: str) -> bytes:
    return v.encode()


def b16(v: str) -> bytes:
    b = bytes.fromhex(v)
    assert len(b) == 16
    return b


def u(fmt: str) -> Any:
    return lambda v: struct.pack(fmt, v)


FIELDS: dict[str, tuple[int, Any]] = {
    "identity": (0x01, ident),
    "relay": (0x02, ident),
    "groups": (0x03, ident),
    "group": (0x03, ident),
    "prev_relay": (0x04, ident),
    "peer": (0x05, ident),
    "nonce": (0x08, b16),
    "rand": (0x09, b16),
    "autn": (0x0A, b16),
    "res": (0x0B, b16),
    "auts": (0x0C, b16),
    "proof": (0x0D, b16),
    "vid": (0x10, u(">I")),
    "caps": (0x11, u(">I")),
    "expiry": (0x12, u(">I")),
    "ssrc": (0x13, u(">I")),
    "floor_ssrc": (0x14, u(">I")),
    "call_id": (0x15, u(">I")),
    "seq": (0x16, u(">I")),
    "agreement": (0x17, u(">I")),
    "grants": (0x18, u(">I")),
    "keepalive": (0x20, u(">H")),
    "key_id": (0x21, u(">H")),
    "cause": (0x22, u(">H")),
    "retry_after": (0x23, u(">H")),
    "members": (0x24, u(">H")),
    "status": (0x28, u(">B")),
    "call_type": (0x29, u(">B")),
    "priority": (0x2A, u(">B")),
    "action": (0x2B, u(">B")),
    "count": (0x2C, u(">B")),
    "affiliations": (0x30, lambda v: bytes([v[1], v[2]]) + v[0].encode()),
    "results": (0x31, lambda v: bytes([v[1]]) + v[0].encode()),
    "vectors": (0x32, lambda v: struct.pack(">I", v[0]) + b"".join(b16(x) for x in v[1:])),
    "resync": (0x33, lambda v: b16(v[0]) + struct.pack(">I", v[1]) + b16(v[2])),
    "location": (0x34, lambda v: struct.pack(">iiHH", *v)),
    "addr": (0x35, lambda v: struct.pack(">H", v[1]) + bytes.fromhex(v[0])),
    "text": (0x38, lambda v: v.encode("ascii")),
}


LIST_FIELDS = {"affiliations", "results", "vectors", "groups"}


def tlvs(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    while i < len(body):
        t = body[i]
        if t >= 0xC0:
            n = int.from_bytes(body[i + 1 : i + 3], "big")
            i += 3
        else:
            n = body[i + 1]
            i += 2
        out.append((t, body[i : i + n]))
        i += n
    assert i == len(body)
    return out


def siv_open(header: bytes, ct: bytes, tag: bytes, mac: bytes, enc: bytes) -> bytes:
    iv = tag[:14] + b"\x00\x00"
    plain = Cipher(algorithms.AES(enc), modes.CTR(iv)).decryptor().update(ct)
    want = hmac.new(mac, header + plain, hashlib.sha256).digest()[:16]
    assert hmac.compare_digest(want, tag)
    return plain


def test_message_vectors_independently() -> None:
    assert {v["type"] for v in VEC["messages"]} == set(TYPE_CODES)
    for v in VEC["messages"]:
        wire = bytes.fromhex(v["hex"])
        assert len(wire) <= 1200
        magic, ver, mtype, flags, rsvd, blen, txid, session = struct.unpack(">2sBBBBHII", wire[:16])
        assert (magic, ver, rsvd) == (b"OM", 1, 0)
        assert mtype == TYPE_CODES[v["type"]], v["name"]
        assert (txid, session) == (v["txid"], v["session"])
        assert flags == (1 if v["key"] else 0) | (2 if v["down"] else 0), v["name"]
        if v["key"]:
            assert len(wire) == 32 + blen
            body = siv_open(
                wire[:16],
                wire[16:-16],
                wire[-16:],
                bytes.fromhex(v["key"]["mac"]),
                bytes.fromhex(v["key"]["enc"]),
            )
        else:
            assert len(wire) == 16 + blen
            body = wire[16:]
        want = []
        for name, val in v["fields"].items():
            t, enc = FIELDS[name]
            for x in val if name in LIST_FIELDS else [val]:
                want.append((t, enc(x)))
        assert sorted(tlvs(body)) == sorted(want), v["name"]
        # The vector's key is the one section 6.4 derives for that direction.
        if v["key"]:
            sk = VEC["session_keys"]["link" if v["session"] == 0x11A4C0DE else "device"]
            assert v["key"] == sk["down" if v["down"] else "up"]


def prf(key: bytes, label: str, data: bytes) -> bytes:
    return hmac.new(key, b"OpMob v1 " + label.encode() + b"\x00" + data, hashlib.sha256).digest()


def lp(s: str) -> bytes:
    return bytes([len(s)]) + s.encode()


def test_authvec_vectors_independently() -> None:
    for v in AV["vectors"]:
        k, rand = bytes.fromhex(v["k"]), bytes.fromhex(v["rand"])
        assert prf(k, "RES", rand)[:16].hex() == v["xres"]
        assert prf(k, "KS", rand)[:16].hex() == v["ks"]
        assert prf(k, "AUTN", rand + struct.pack(">I", v["vid"]))[:16].hex() == v["autn"]
    a = AV["auts"][0]
    assert (
        prf(bytes.fromhex(a["k"]), "AUTS", bytes.fromhex(a["rand"]) + struct.pack(">I", a["vid"]))[:16].hex()
        == a["auts"]
    )
    for c in AV["control"]:
        data = lp(c["identity"]) + bytes([c["action"]]) + struct.pack(">I", c["seq"])
        assert prf(bytes.fromhex(c["k"]), "CTRL", data)[:16].hex() == c["proof"]
    sizes = {"mac": 32, "enc": 16, "key": 16, "salt": 14}

    def derive(ks: bytes, rand: bytes, nonce: bytes) -> dict[str, str]:
        out = {}
        for d in ("up", "down"):
            for purpose, label in (("sig_%s_mac", "SIG %s MAC"), ("sig_%s_enc", "SIG %s ENC"),
                                   ("srtp_%s_key", "SRTP %s KEY"), ("srtp_%s_salt", "SRTP %s SALT")):  # fmt: skip
                name = purpose % d
                out[name] = prf(ks, label % d.upper(), rand + nonce)[: sizes[name.rsplit("_", 1)[1]]].hex()
        return out

    d = AV["derive"][0]
    assert derive(bytes.fromhex(d["ks"]), bytes.fromhex(d["rand"]), bytes.fromhex(d["nonce"])) == d["keys"]
    lk = AV["link"][0]
    psk, ni, nr = bytes.fromhex(lk["psk"]), bytes.fromhex(lk["nonce_i"]), bytes.fromhex(lk["nonce_r"])
    t = lp(lk["initiator"]) + lp(lk["responder"]) + ni + nr + struct.pack(">I", lk["agreement"])
    assert prf(psk, "LINK PROOF I", t)[:16].hex() == lk["proof_i"]
    assert prf(psk, "LINK PROOF R", t)[:16].hex() == lk["proof_r"]
    assert derive(prf(psk, "LINK KS", t)[:16], nr, ni) == lk["keys"]
    # The device session keys in sig_v1.json are these.
    keys = d["keys"]
    dev = VEC["session_keys"]["device"]
    assert dev["up"] == {"mac": keys["sig_up_mac"], "enc": keys["sig_up_enc"]}
    assert dev["down"] == {"mac": keys["sig_down_mac"], "enc": keys["sig_down_enc"]}


def test_doc_shows_every_vector() -> None:
    flat = "".join(DOC.split())
    for v in VEC["messages"]:
        assert v["hex"] in flat, v["name"]
        assert "generated:vector:{} -->".format(v["name"]) in DOC


def test_generated_files_are_current() -> None:
    gen = ROOT / "tests" / "vectors" / "gen_sig_v1.py"
    proc = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
