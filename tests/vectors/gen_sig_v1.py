"""Makes tests/vectors/sig_v1.json and sig_authvec_v1.json, and the generated parts of
docs/protocol.md (field tables, annotated vectors), from firmware/opmob/{sig,authvec}.py.

    .venv/bin/python tests/vectors/gen_sig_v1.py          # rewrite the three files
    .venv/bin/python tests/vectors/gen_sig_v1.py --check  # exit 1 if any is stale

The vectors pin the wire format: a change that alters any byte shows up as a stale file, and
re-running this script is the deliberate act of changing the format. tests/host/test_sig_vectors.py
re-checks the files against an independent implementation (Python's hmac, OpenSSL AES) and runs
``--check``.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT / "tests" / "fw")]

import sigjson  # noqa: E402
from opmob import authvec, sig  # noqa: E402

SIG_JSON = ROOT / "tests" / "vectors" / "sig_v1.json"
AUTHVEC_JSON = ROOT / "tests" / "vectors" / "sig_authvec_v1.json"
DOC = ROOT / "docs" / "protocol.md"

# Device secret and challenge: 3GPP TS 35.208 MILENAGE test set 1's K and RAND, for recognisability.
K = bytes.fromhex("465b5ce8b199b49faa5f0a2ee238a6bc")
RAND = bytes.fromhex("23553cbe9637a89d218ae64dae47bf35")
VID = 1000
NONCE = bytes.fromhex("7f1c3a9e5b2d4f6081a3c5e7092b4d6f")
RAND2 = bytes.fromhex("9a3f1e77c2b04d5e8f6a1b2c3d4e5f60")
DEVICE = "ola.nordmann@no"
HOME = "relay-tromso-1@no"
VISITED = "relay-kiruna-1@se"
PSK = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0")
NONCE_I = bytes.fromhex("c0ffee00112233445566778899aabbcc")
NONCE_R = bytes.fromhex("5eed5eed000102030405060708090a0b")
AGREEMENT = 0x4E4F5345  # "NOSE": the Norway-Sweden agreement
SESSION = 0x2F5E0C01
LINK_SESSION = 0x11A4C0DE
DEV_TX = 0x6B8B4567
RELAY_TX = 0x327B23C6
LINK_TX = 0x643C9869
HOME_TX = 0x66334873
CTRL_SEQ = 17

VEC = authvec.make_vector(K, RAND, VID)
SK = authvec.derive(VEC[3], RAND, NONCE)
LK = authvec.link_keys(PSK, VISITED, HOME, NONCE_I, NONCE_R, AGREEMENT)


def keyj(mac: bytes, enc: bytes) -> dict[str, str]:
    return {"mac": mac.hex(), "enc": enc.hex()}


DEV_UP = keyj(SK.sig_up_mac, SK.sig_up_enc)
DEV_DOWN = keyj(SK.sig_down_mac, SK.sig_down_enc)
LINK_UP = keyj(LK.sig_up_mac, LK.sig_up_enc)
LINK_DOWN = keyj(LK.sig_down_mac, LK.sig_down_enc)


def authvec_data() -> dict[str, Any]:
    res, ks = authvec.device_respond(K, RAND, VEC[4], VID)
    assert res == VEC[2] and ks == VEC[3]
    lk_i = authvec.link_proof(PSK, False, VISITED, HOME, NONCE_I, NONCE_R, AGREEMENT)
    lk_r = authvec.link_proof(PSK, True, VISITED, HOME, NONCE_I, NONCE_R, AGREEMENT)
    return {
        "comment": "OpMob v1 authentication vectors and key derivation: docs/protocol.md, Keys",
        "vectors": [
            {
                "k": K.hex(),
                "rand": r.hex(),
                "vid": vid,
                "xres": authvec.xres(K, r).hex(),
                "ks": authvec.session_key(K, r).hex(),
                "autn": authvec.autn(K, r, vid).hex(),
            }
            for r, vid in ((RAND, VID), (RAND2, VID + 1), (bytes(16), 0), (b"\xff" * 16, 0xFFFFFFFF))
        ],
        "auts": [{"k": K.hex(), "rand": RAND.hex(), "vid": 1200, "auts": authvec.auts(K, RAND, 1200).hex()}],
        "control": [
            {
                "k": K.hex(),
                "identity": DEVICE,
                "action": a,
                "seq": CTRL_SEQ,
                "proof": authvec.control_proof(K, DEVICE, a, CTRL_SEQ).hex(),
            }
            for a in (sig.CTRL_STUN, sig.CTRL_REVIVE, sig.CTRL_KILL)
        ],
        "derive": [
            {
                "ks": VEC[3].hex(),
                "rand": RAND.hex(),
                "nonce": NONCE.hex(),
                "keys": {n: v.hex() for n, v in SK.items()},
            }
        ],
        "link": [
            {
                "psk": PSK.hex(),
                "initiator": VISITED,
                "responder": HOME,
                "nonce_i": NONCE_I.hex(),
                "nonce_r": NONCE_R.hex(),
                "agreement": AGREEMENT,
                "proof_i": lk_i.hex(),
                "proof_r": lk_r.hex(),
                "keys": {n: v.hex() for n, v in LK.items()},
            }
        ],
    }


def M(t: int, txid: int, session: int, down: bool, **f: Any) -> sig.SigMsg:
    return sig.SigMsg(t, txid=txid, session=session, down=down, **f)


def messages() -> list[tuple[str, str, sig.SigMsg, dict[str, str] | None]]:
    """(name, direction, message, key) for every vector, in document order."""
    rel_vec2 = authvec.make_vector(K, RAND2, VID + 1)
    auts = authvec.auts(K, RAND, 1200)
    s, d, r, L, h = SESSION, DEV_TX, RELAY_TX, LINK_SESSION, HOME_TX
    lp_i = authvec.link_proof(PSK, False, VISITED, HOME, NONCE_I, NONCE_R, AGREEMENT)
    lp_r = authvec.link_proof(PSK, True, VISITED, HOME, NONCE_I, NONCE_R, AGREEMENT)
    big = [(f"talkgroup-{i:02d}-cross-border-operations-north@no", 10 + i, sig.AFF_SCAN) for i in range(21)]
    dev = "device -> relay"
    net = "relay -> device"
    li = "initiator relay -> responder relay"
    lr = "responder relay -> initiator relay"
    return [
        (
            "register",
            dev,
            M(
                sig.REGISTER,
                d,
                0,
                False,
                identity=DEVICE,
                nonce=NONCE,
                caps=sig.CAP_DVI4 | sig.CAP_CODEC2 | sig.CAP_LOCATION | sig.CAP_EMERGENCY,
                affiliations=[
                    ("fire-oslo@no", 100, sig.AFF_SELECTED),
                    ("ambulance-north@no", 50, sig.AFF_SCAN),
                ],
            ),
            None,
        ),
        ("challenge", net, M(sig.CHALLENGE, d, s, True, rand=RAND, autn=VEC[4], vid=VID), None),
        ("auth_response", dev, M(sig.AUTH_RESPONSE, d + 1, s, False, res=VEC[2]), DEV_UP),
        (
            "auth_failure_sync",
            dev,
            M(sig.AUTH_FAILURE, d + 1, s, False, cause=sig.CAUSE_SYNC_FAILURE, vid=1200, auts=auts),
            None,
        ),
        ("auth_failure_autn", dev, M(sig.AUTH_FAILURE, d + 1, s, False, cause=sig.CAUSE_AUTN_INVALID), None),
        (
            "register_ack",
            net,
            M(
                sig.REGISTER_ACK,
                d + 1,
                s,
                True,
                relay=VISITED,
                keepalive=30,
                expiry=3600,
                ssrc=0x5A17C0DE,
                key_id=1,
                results=[("fire-oslo@no", sig.AFF_OK), ("ambulance-north@no", sig.AFF_LOCAL_ONLY)],
            ),
            DEV_DOWN,
        ),
        (
            "register_reject",
            net,
            M(
                sig.REGISTER_REJECT,
                d,
                0,
                True,
                cause=sig.CAUSE_ROAMING_NOT_ALLOWED,
                retry_after=300,
                text="no roaming agreement with system de",
            ),
            None,
        ),
        ("deregister", dev, M(sig.DEREGISTER, d + 2, s, False, cause=sig.CAUSE_HANDOVER), DEV_UP),
        ("deregister_ack", net, M(sig.DEREGISTER_ACK, d + 2, s, True), DEV_DOWN),
        (
            "keepalive",
            dev,
            M(sig.KEEPALIVE, d + 3, s, False, location=(678558000, 202253000, 12, 3)),
            DEV_UP,
        ),
        ("keepalive_ack", net, M(sig.KEEPALIVE_ACK, d + 3, s, True, status=sig.KA_OK, expiry=3570), DEV_DOWN),
        ("keepalive_ack_stunned", net, M(sig.KEEPALIVE_ACK, d + 4, s, True, status=sig.KA_STUNNED), DEV_DOWN),
        (
            "affiliate",
            dev,
            M(
                sig.AFFILIATE,
                d + 5,
                s,
                False,
                affiliations=[
                    ("police-troms@no", 200, sig.AFF_SELECTED),
                    ("rescue-kiruna@se", 80, sig.AFF_SCAN),
                ],
            ),
            DEV_UP,
        ),
        (
            "affiliate_ack",
            net,
            M(
                sig.AFFILIATE_ACK,
                d + 5,
                s,
                True,
                results=[("police-troms@no", sig.AFF_OK), ("rescue-kiruna@se", sig.AFF_NOT_AUTHORIZED)],
            ),
            DEV_DOWN,
        ),
        ("deaffiliate", dev, M(sig.DEAFFILIATE, d + 6, s, False, groups=["ambulance-north@no"]), DEV_UP),
        (
            "deaffiliate_ack",
            net,
            M(sig.DEAFFILIATE_ACK, d + 6, s, True, results=[("ambulance-north@no", sig.AFF_OK)]),
            DEV_DOWN,
        ),
        ("affiliation_query", net, M(sig.AFFILIATION_QUERY, r, s, True), DEV_DOWN),
        (
            "affiliation_report",
            dev,
            M(
                sig.AFFILIATION_REPORT,
                r,
                s,
                False,
                identity=DEVICE,
                affiliations=[("fire-oslo@no", 100, sig.AFF_SELECTED), ("police-troms@no", 200, 0)],
            ),
            DEV_UP,
        ),
        (
            "call_setup",
            dev,
            M(
                sig.CALL_SETUP,
                d + 7,
                s,
                False,
                group="fire-oslo@no",
                call_type=sig.CALL_EMERGENCY,
                priority=255,
            ),
            DEV_UP,
        ),
        (
            "call_ack",
            net,
            M(
                sig.CALL_ACK,
                d + 7,
                s,
                True,
                call_id=0x00C0FFEE,
                ssrc=0x5A17C0DF,
                floor_ssrc=0xF100C0DE,
                addr=(bytes([192, 0, 2, 17]), 5004),
            ),
            DEV_DOWN,
        ),
        (
            "call_notify",
            net,
            M(
                sig.CALL_NOTIFY,
                r + 1,
                s,
                True,
                group="police-troms@no",
                call_id=0x00C0FFF0,
                call_type=sig.CALL_NORMAL,
                priority=100,
                floor_ssrc=0xF100C0E0,
                identity="kari.hansen@no",
                addr=(bytes.fromhex("20010db8000000000000000000000011"), 5004),
                key_id=7,
            ),
            DEV_DOWN,
        ),
        ("call_notify_ack", dev, M(sig.CALL_NOTIFY_ACK, r + 1, s, False), DEV_UP),
        (
            "call_end",
            dev,
            M(sig.CALL_END, d + 8, s, False, call_id=0x00C0FFEE, cause=sig.CAUSE_NORMAL),
            DEV_UP,
        ),
        ("call_end_ack", net, M(sig.CALL_END_ACK, d + 8, s, True), DEV_DOWN),
        (
            "emergency_alert",
            dev,
            M(
                sig.EMERGENCY_ALERT,
                d + 9,
                s,
                False,
                group="fire-oslo@no",
                location=(-339248000, 1512083000, 25, 0),
            ),
            DEV_UP,
        ),
        ("emergency_cancel", dev, M(sig.EMERGENCY_CANCEL, d + 10, s, False, group="fire-oslo@no"), DEV_UP),
        ("emergency_ack", net, M(sig.EMERGENCY_ACK, d + 10, s, True), DEV_DOWN),
        ("device_control_stun", net, M(sig.DEVICE_CONTROL, r + 2, s, True, action=sig.CTRL_STUN), DEV_DOWN),
        (
            "device_control_kill",
            net,
            M(
                sig.DEVICE_CONTROL,
                r + 3,
                s,
                True,
                action=sig.CTRL_KILL,
                identity=DEVICE,
                seq=CTRL_SEQ,
                proof=authvec.control_proof(K, DEVICE, sig.CTRL_KILL, CTRL_SEQ),
            ),
            DEV_DOWN,
        ),
        ("device_control_ack", dev, M(sig.DEVICE_CONTROL_ACK, r + 2, s, False, action=sig.CTRL_STUN), DEV_UP),
        (
            "link_hello",
            li,
            M(
                sig.LINK_HELLO,
                LINK_TX,
                0,
                False,
                relay=VISITED,
                peer=HOME,
                nonce=NONCE_I,
                agreement=AGREEMENT,
                caps=sig.CAP_DVI4 | sig.CAP_CODEC2,
            ),
            None,
        ),
        (
            "link_challenge",
            lr,
            M(sig.LINK_CHALLENGE, LINK_TX, L, True, relay=HOME, nonce=NONCE_R, proof=lp_r),
            None,
        ),
        ("link_auth", li, M(sig.LINK_AUTH, LINK_TX + 1, L, False, proof=lp_i), LINK_UP),
        (
            "link_ack",
            lr,
            M(
                sig.LINK_ACK,
                LINK_TX + 1,
                L,
                True,
                keepalive=10,
                expiry=86400,
                grants=sig.GRANT_ROAMING | sig.GRANT_GROUPS | sig.GRANT_VECTORS | sig.GRANT_EMERGENCY,
            ),
            LINK_DOWN,
        ),
        (
            "auth_vector_request",
            li,
            M(
                sig.AUTH_VECTOR_REQUEST,
                LINK_TX + 2,
                L,
                False,
                identity=DEVICE,
                count=2,
                resync=(RAND, 1200, auts),
            ),
            LINK_UP,
        ),
        (
            "auth_vector_response",
            lr,
            M(sig.AUTH_VECTOR_RESPONSE, LINK_TX + 2, L, True, vectors=[VEC, rel_vec2]),
            LINK_DOWN,
        ),
        (
            "roam_notify",
            li,
            M(sig.ROAM_NOTIFY, LINK_TX + 3, L, False, identity=DEVICE, relay=VISITED, vid=VID, expiry=3600),
            LINK_UP,
        ),
        ("roam_ack", lr, M(sig.ROAM_ACK, LINK_TX + 3, L, True, expiry=3600), LINK_DOWN),
        (
            "roam_cancel",
            lr,
            M(sig.ROAM_CANCEL, h, L, True, identity=DEVICE, relay=VISITED, cause=sig.CAUSE_HANDOVER),
            LINK_DOWN,
        ),
        ("roam_cancel_ack", li, M(sig.ROAM_CANCEL_ACK, h, L, False), LINK_UP),
        (
            "group_attach",
            li,
            M(sig.GROUP_ATTACH, LINK_TX + 4, L, False, group="fire-oslo@no", relay=VISITED, members=3),
            LINK_UP,
        ),
        (
            "group_attach_ack",
            lr,
            M(
                sig.GROUP_ATTACH_ACK,
                LINK_TX + 4,
                L,
                True,
                floor_ssrc=0xF100C0DE,
                ssrc=0x0E5C0001,
                call_id=0x00C0FFEE,
                addr=(bytes([198, 51, 100, 7]), 5004),
            ),
            LINK_DOWN,
        ),
        ("group_detach", li, M(sig.GROUP_DETACH, LINK_TX + 5, L, False, group="fire-oslo@no"), LINK_UP),
        ("group_detach_ack", lr, M(sig.GROUP_DETACH_ACK, LINK_TX + 5, L, True), LINK_DOWN),
        (
            "error",
            net,
            M(sig.ERROR, d + 3, s, True, cause=sig.CAUSE_UNKNOWN_SESSION, text="register again"),
            None,
        ),
        (
            "error_protected",
            net,
            M(sig.ERROR, d + 11, s, True, cause=sig.CAUSE_NO_RESOURCES, retry_after=5),
            DEV_DOWN,
        ),
        ("affiliate_large", dev, M(sig.AFFILIATE, d + 12, s, False, affiliations=big), DEV_UP),
        ("pending", net, M(sig.PENDING, d + 2, s, True), DEV_DOWN),
    ]


def tlv(t: int, v: bytes) -> bytes:
    if t >= sig.LONG_TLV:
        return bytes([t]) + struct.pack(">H", len(v)) + v
    return bytes([t, len(v)]) + v


def reg_body(extra: bytes = b"", ident: bytes = DEVICE.encode(), nonce: bytes = NONCE) -> bytes:
    return tlv(0x01, ident) + tlv(0x08, nonce) + extra


def decode_only() -> list[dict[str, Any]]:
    """Bytes a v1 decoder must accept although v1's encoder never makes them."""
    out = []
    # Unknown TLVs, short and long form, and a TLV this message does not define: all skipped.
    body = tlv(0x7E, b"future") + reg_body() + tlv(0xC5, bytes(300)) + tlv(0x15, b"\x00\x00\x00\x01")
    m = sig.SigMsg(sig.REGISTER, txid=5, identity=DEVICE, nonce=NONCE)
    out.append({"name": "unknown_tlvs_skipped", "hex": sig.frame(sig.REGISTER, body, 5).hex(), "key": None})
    out[-1]["message"] = sigjson.msg_to_json(m)
    # Field order is free.
    body = tlv(0x08, NONCE) + tlv(0x01, DEVICE.encode())
    out.append({"name": "fields_any_order", "hex": sig.frame(sig.REGISTER, body, 5).hex(), "key": None})
    out[-1]["message"] = sigjson.msg_to_json(m)
    # An open-type message may arrive protected.
    k = sigjson.key_from_json(DEV_DOWN)
    e = sig.SigMsg(sig.ERROR, txid=9, session=SESSION, down=True, cause=sig.CAUSE_BUSY)
    out.append({"name": "open_type_protected", "hex": sig.encode(e, k).hex(), "key": DEV_DOWN})
    out[-1]["message"] = sigjson.msg_to_json(e)
    out[-1]["protected"] = True
    return out


def reject() -> list[dict[str, Any]]:
    """Bytes a v1 decoder must refuse, with the error it must raise."""
    kd = sigjson.key_from_json(DEV_UP)
    good = sig.frame(sig.REGISTER, reg_body(), 5)
    prot = sig.encode(sig.SigMsg(sig.KEEPALIVE, txid=3, session=SESSION), kd)
    rows: list[tuple[str, bytes, str, dict[str, str] | None]] = []

    def add(name: str, b: bytes, err: str, key: dict[str, str] | None = None) -> None:
        rows.append((name, b, err, key))

    add("empty", b"", "Truncated")
    add("magic_only", b"OM", "Truncated")
    add("header_cut", good[:15], "Truncated")
    add("body_cut", good[:-1], "Truncated")
    add("trailing_byte", good + b"\x00", "BadValue")
    add("not_magic_rtp", bytes([0x80, 0x05]) + good[2:], "BadValue")
    add("bad_version_0", good[:2] + b"\x00" + good[3:], "BadVersion")
    add("bad_version_2", good[:2] + b"\x02" + good[3:], "BadVersion")
    add("oversized", good[:6] + struct.pack(">H", 1185) + good[8:16] + bytes(1185), "Oversized")
    add("unknown_flag", good[:4] + b"\x04" + good[5:], "BadValue")
    add("reserved_set", good[:5] + b"\x01" + good[6:], "BadValue")
    add("unknown_type", good[:3] + b"\x7f" + good[4:], "BadValue")
    add("missing_required", sig.frame(sig.REGISTER, tlv(0x01, DEVICE.encode()), 5), "BadValue")
    add("repeated_single", sig.frame(sig.REGISTER, reg_body(tlv(0x01, b"x@no")), 5), "BadValue")
    add("tlv_header_cut", sig.frame(sig.REGISTER, reg_body(b"\x30"), 5), "Truncated")
    add("long_tlv_header_cut", sig.frame(sig.REGISTER, reg_body(b"\xc5\x00"), 5), "Truncated")
    add("tlv_value_cut", sig.frame(sig.REGISTER, reg_body(b"\x11\x04\x00"), 5), "Truncated")
    add("ident_two_at", sig.frame(sig.REGISTER, reg_body(ident=b"ola@x@no"), 5), "BadValue")
    add("ident_no_at", sig.frame(sig.REGISTER, reg_body(ident=b"ola.no"), 5), "BadValue")
    add("ident_empty_name", sig.frame(sig.REGISTER, reg_body(ident=b"@no"), 5), "BadValue")
    add("ident_uppercase", sig.frame(sig.REGISTER, reg_body(ident=b"Ola@no"), 5), "BadValue")
    add("ident_utf8", sig.frame(sig.REGISTER, reg_body(ident="øyvind@no".encode()), 5), "BadValue")
    add("ident_bad_utf8", sig.frame(sig.REGISTER, reg_body(ident=b"\xff\xfe@no"), 5), "BadValue")
    add("ident_dot_in_system", sig.frame(sig.REGISTER, reg_body(ident=b"ola@n.o"), 5), "BadValue")
    add("ident_too_long", sig.frame(sig.REGISTER, reg_body(ident=b"a" * 62 + b"@no"), 5), "BadValue")
    add("nonce_short", sig.frame(sig.REGISTER, reg_body(nonce=bytes(15)), 5), "BadValue")
    add("u32_wrong_length", sig.frame(sig.REGISTER, reg_body(tlv(0x11, b"\x00\x01")), 5), "BadValue")
    add("aff_too_short", sig.frame(sig.REGISTER, reg_body(tlv(0x30, b"\x01")), 5), "BadValue")
    body = tlv(0x22, b"\x00\x01") + tlv(0x38, b"bad\x07bell")
    add("text_control_char", sig.frame(sig.ERROR, body, 5, down=True), "BadValue")
    body = tlv(0x03, b"fire@no") + tlv(0x29, b"\x04") + tlv(0x2A, b"\x01")
    add("call_type_unknown", sig.frame(sig.CALL_SETUP, body, 5, SESSION, key=kd), "BadValue", DEV_UP)
    body = tlv(0x01, DEVICE.encode()) + tlv(0x2C, b"\x09")
    add("count_over_8", sig.frame(sig.AUTH_VECTOR_REQUEST, body, 5, SESSION, key=kd), "BadValue", DEV_UP)
    body = body[:-1] + b"\x00"
    add("count_zero", sig.frame(sig.AUTH_VECTOR_REQUEST, body, 5, SESSION, key=kd), "BadValue", DEV_UP)
    body = tlv(0x34, struct.pack(">iiHH", 900000001, 0, 0, 0))
    add("location_out_of_range", sig.frame(sig.KEEPALIVE, body, 5, SESSION, key=kd), "BadValue", DEV_UP)
    body = tlv(0x15, bytes(4)) + tlv(0x13, bytes(4)) + tlv(0x14, bytes(4)) + tlv(0x35, bytes(6))
    add("addr_port_zero", sig.frame(sig.CALL_ACK, body, 5, SESSION, key=kd), "BadValue", DEV_UP)
    body = tlv(0x2B, b"\x01") + tlv(0x16, bytes(4))
    add(
        "control_seq_without_proof",
        sig.frame(sig.DEVICE_CONTROL, body, 5, SESSION, key=kd),
        "BadValue",
        DEV_UP,
    )
    add("sync_failure_without_auts", sig.frame(sig.AUTH_FAILURE, tlv(0x22, b"\x00\x11"), 5), "BadValue")
    add("affiliate_empty", sig.frame(sig.AFFILIATE, b"", 5, SESSION, key=kd), "BadValue", DEV_UP)
    body = tlv(0x20, bytes(2)) + tlv(0x12, bytes(4)) + tlv(0x18, bytes(4))
    add("keepalive_zero", sig.frame(sig.LINK_ACK, body, 5, SESSION, key=kd), "BadValue", DEV_UP)
    add("protected_type_sent_open", sig.frame(sig.KEEPALIVE, b"", 3, SESSION), "AuthFailed", DEV_UP)
    add("protected_no_key", prot, "UnknownStream")
    add("wrong_key_direction", prot, "AuthFailed", DEV_DOWN)
    add("tag_flipped", prot[:-1] + bytes([prot[-1] ^ 1]), "AuthFailed", DEV_UP)
    add("txid_changed", prot[:8] + b"\x00\x00\x00\x04" + prot[12:], "AuthFailed", DEV_UP)
    add("down_flag_flipped", prot[:4] + bytes([prot[4] ^ sig.FLAG_DOWN]) + prot[5:], "AuthFailed", DEV_UP)
    add("protection_stripped", prot[:4] + b"\x00" + prot[5:-16], "AuthFailed", DEV_UP)
    return [{"name": n, "hex": b.hex(), "error": e, "key": k} for n, b, e, k in rows]


def sig_data() -> dict[str, Any]:
    vecs = []
    for name, direction, m, key in messages():
        k = sigjson.key_from_json(key)
        b = sig.encode(m, k)
        j = sigjson.msg_to_json(m)
        j.update({"name": name, "direction": direction, "key": key, "hex": b.hex()})
        vecs.append(j)
    return {
        "comment": "OpMob signalling v1 test vectors: docs/protocol.md. Made by tests/vectors/gen_sig_v1.py.",
        "session_keys": {
            "device": {"up": DEV_UP, "down": DEV_DOWN},
            "link": {"up": LINK_UP, "down": LINK_DOWN},
        },
        "messages": vecs,
        "decode_only": decode_only(),
        "reject": reject(),
    }


# --- docs/protocol.md ---------------------------------------------------------------------------

KIND_SIZE = {
    sig.K_IDENT: "3..64",
    sig.K_B16: "16",
    sig.K_U8: "1",
    sig.K_U16: "2",
    sig.K_U32: "4",
    sig.K_TEXT: "0..128",
    sig.K_AFF: "2 + 3..64",
    sig.K_RESULT: "1 + 3..64",
    sig.K_VECTOR: "68",
    sig.K_RESYNC: "36",
    sig.K_LOCATION: "12",
    sig.K_ADDR: "6 or 18",
}

KIND_DESC = {
    sig.K_IDENT: "identity `name@system` (see Identities)",
    sig.K_B16: "16 bytes",
    sig.K_U8: "unsigned 8-bit",
    sig.K_U16: "unsigned 16-bit, big-endian",
    sig.K_U32: "unsigned 32-bit, big-endian",
    sig.K_TEXT: "printable ASCII (0x20..0x7E)",
    sig.K_AFF: "priority (8) · flags (8) · group identity",
    sig.K_RESULT: "result code (8) · group identity",
    sig.K_VECTOR: "vid (32) · RAND (16 B) · XRES (16 B) · KS (16 B) · AUTN (16 B)",
    sig.K_RESYNC: "RAND (16 B) · device's highest vid (32) · AUTS (16 B)",
    sig.K_LOCATION: "latitude, longitude (signed 32, 1e-7 degree) · accuracy m (16) · fix age s (16)",
    sig.K_ADDR: "port (16) · IPv4 (4 B) or IPv6 (16 B) address",
}


def field_registry() -> str:
    rows = ["| TLV | field | list name | value | length | range |", "| --- | --- | --- | --- | --- | --- |"]
    for t in sorted(sig.FIELDS):
        name, plural, kind, lo, hi = sig.FIELDS[t]
        rng = "" if lo is None else f"{lo}..{hi}"
        rows.append(
            "| 0x{:02X} | `{}` | {} | {} | {} | {} |".format(
                t, name, f"`{plural}`" if plural else "", KIND_DESC[kind], KIND_SIZE[kind], rng
            )
        )
    return "\n".join(rows)


def type_table() -> str:
    rows = ["| type | message | protection | answered by |", "| --- | --- | --- | --- |"]
    for t in sorted(sig.MESSAGES):
        name, prot, _ = sig.MESSAGES[t]
        ans = ", ".join(sig.type_name(a) for a in sig.ANSWERS.get(t, ())) + (
            ", ERROR" if t in sig.ANSWERS else ""
        )
        rows.append(
            "| 0x{:02X} | {} | {} | {} |".format(
                t, name, "required" if prot else "optional", ans or "(response)"
            )
        )
    return "\n".join(rows)


def fields_table(mtype: int) -> str:
    fl = sig.message_fields(mtype)
    name, prot, _ = sig.MESSAGES[mtype]
    head = "Type 0x{:02X}, {}; protection {}.".format(
        mtype, "response" if mtype & 0x80 else "request", "required" if prot else "optional"
    )
    if not fl:
        return head + " Body: no fields."
    rows = [head, "", "| TLV | field | presence |", "| --- | --- | --- |"]
    for attr, t, pres in fl:
        rows.append(f"| 0x{t:02X} | `{attr}` | {sig.PRESENCE_NAMES[pres]} |")
    return "\n".join(rows)


def wrap(h: str, width: int = 64) -> list[str]:
    return [h[i : i + width] for i in range(0, len(h), width)] or [""]


def render_value(attr: str, v: Any) -> str:
    kind = sig.FIELDS[sig.FIELD_IDS[attr]][2]
    if kind in (sig.K_IDENT, sig.K_TEXT):
        return f'"{v}"'
    if kind in (sig.K_U8, sig.K_U16, sig.K_U32):
        return f"{v} (0x{v:X})"
    if kind == sig.K_B16:
        return "(bytes)"
    return json.dumps(sigjson.value_to_json(kind, v))


def annotate(name: str, direction: str, m: sig.SigMsg, key: dict[str, str] | None) -> str:
    k = sigjson.key_from_json(key)
    wire = sig.encode(m, k)
    body = sig.encode_body(m)
    flags = wire[4]
    lines = ["```", f"{name}: {m.name}, {direction}"]
    h = wire[:16].hex()
    cuts = ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 16), (16, 24), (24, 32))
    lines.append("header " + " ".join(h[a:b] for a, b in cuts))
    fl = "+".join(n for b, n in ((sig.FLAG_PROTECTED, "P"), (sig.FLAG_DOWN, "D")) if flags & b) or "-"
    lines.append(
        f'       "OM" v1 type=0x{m.type:02X} flags={fl} body={len(body)} txid=0x{m.txid:08X} session=0x{m.session:08X}'
    )
    lines.append("body" + (" (plaintext; encrypted on the wire)" if k else ""))
    i = 0
    while i < len(body):
        t = body[i]
        if t >= sig.LONG_TLV:
            n = (body[i + 1] << 8) | body[i + 2]
            hl = 3
        else:
            n = body[i + 1]
            hl = 2
        attr = sig.FIELDS[t][0]
        v = sig._dec_value(
            sig.FIELDS[t][2], sig.FIELDS[t][3], sig.FIELDS[t][4], body[i + hl : i + hl + n], attr
        )
        chunks = wrap(body[i + hl : i + hl + n].hex())
        lines.append(f"  {body[i : i + hl].hex()} {chunks[0]}  {attr} = {render_value(attr, v)}")
        for c in chunks[1:]:
            lines.append("  {} {}".format(" " * (2 * hl), c))
        i += hl + n
    if k:
        lines.append(f"tag    {wire[-16:].hex()}")
    lines.append(f"wire ({len(wire)} bytes)")
    lines += ["  " + c for c in wrap(wire.hex())]
    lines.append("```")
    return "\n".join(lines)


def authvec_section(a: dict[str, Any]) -> str:
    v = a["vectors"][0]
    d = a["derive"][0]
    lk = a["link"][0]
    out = ["```"]
    out += ["K      {}".format(v["k"]), "RAND   {}".format(v["rand"]), f"vid    {v['vid']}"]
    out += ["XRES   {}".format(v["xres"]), "KS     {}".format(v["ks"]), "AUTN   {}".format(v["autn"])]
    au = a["auts"][0]
    out += [f"AUTS(vid={au['vid']}) {au['auts']}"]
    out += ["nonce  {}".format(d["nonce"])]
    for n, h in d["keys"].items():
        out.append(f"{n:<15} {h}")
    out += [
        "",
        "link: {} -> {}, agreement 0x{:08X}".format(lk["initiator"], lk["responder"], lk["agreement"]),
    ]
    out += [
        "PSK    {}".format(lk["psk"]),
        "nonce_i {}".format(lk["nonce_i"]),
        "nonce_r {}".format(lk["nonce_r"]),
    ]
    out += ["proof_i {}".format(lk["proof_i"]), "proof_r {}".format(lk["proof_r"])]
    for n, h in lk["keys"].items():
        out.append(f"{n:<15} {h}")
    c = a["control"][2]
    out += [
        "",
        f"control proof: {c['identity']} action={c['action']} seq={c['seq']} -> {c['proof']}",
    ]
    out.append("```")
    return "\n".join(out)


def render_doc(text: str, a: dict[str, Any]) -> str:
    blocks: dict[str, str] = {
        "field-registry": field_registry(),
        "type-table": type_table(),
        "authvec": authvec_section(a),
    }
    for t, (name, _p, _s) in sig.MESSAGES.items():
        blocks["fields:" + name] = fields_table(t)
    for vname, direction, m, key in messages():
        blocks["vector:" + vname] = annotate(vname, direction, m, key)
    seen = set()

    def sub(mo: re.Match[str]) -> str:
        name = mo.group(1)
        if name not in blocks:
            raise SystemExit(f"docs/protocol.md names an unknown generated block {name!r}")
        seen.add(name)
        return f"<!-- generated:{name} -->\n{blocks[name]}\n<!-- /generated -->"

    out = re.sub(r"<!-- generated:(\S+) -->.*?<!-- /generated -->", sub, text, flags=re.S)
    missing = sorted(set(blocks) - seen)
    if missing:
        raise SystemExit("docs/protocol.md lacks generated blocks: {}".format(", ".join(missing)))
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    a = authvec_data()
    want = {SIG_JSON: dump(sig_data()), AUTHVEC_JSON: dump(a), DOC: render_doc(DOC.read_text(), a)}
    stale = [p for p, s in want.items() if not p.exists() or p.read_text() != s]
    if check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run tests/vectors/gen_sig_v1.py)")
        return 1 if stale else 0
    for p in stale:
        p.write_text(want[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
