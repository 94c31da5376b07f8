"""OpMob signalling message set, version 1: encode and decode, sans-I/O.

Registration, authentication, affiliation, call set-up, keep-alive, roaming and relay-to-relay
interconnect travel as compact binary messages over UDP. Each message is

    header (16 bytes) | body: TLVs (body_len bytes) | tag (16 bytes, when protected)

    0      2    3     4      5      6         8       12       16
    | "OM" | ver | type | flags | rsvd | body_len | txid | session |

A *protected* message (flag P) has its body encrypted and the whole message authenticated with the
session's signalling key for that direction (SIV: tag = HMAC-SHA256(mac key, header || plain
body)[:16], body encrypted in AES-128-CTR under the tag). Byte layouts, field tables, flows and
test vectors: docs/protocol.md.

API: ``SigMsg(type, txid=, session=, down=, **fields)``, ``encode(msg, key=None)``,
``decode(buf, key=None)``, ``peek(buf)``, ``SigKey``/``keys(session_keys, owner)``,
``answers(request_type, response_type)``, ``frame(...)`` for raw bodies.
"""

import struct

from opmob.authvec import ct_equal
from opmob.compat import AesCtr, HmacSha256
from opmob.errors import AuthFailed, BadValue, BadVersion, Oversized, Truncated, UnknownStream

MAGIC = b"OM"
VERSION = 1
HEADER_LEN = 16
TAG_LEN = 16
MAX_MESSAGE = 1200  # below any path MTU (IPv6 minimum 1280 - 40 - 8), so never fragmented

FLAG_PROTECTED = 0x01
FLAG_DOWN = 0x02  # sent by the side that allocated the session id (relay; link responder)
_KNOWN_FLAGS = FLAG_PROTECTED | FLAG_DOWN
RESPONSE_BIT = 0x80  # message types >= 0x80 are responses

MAX_IDENT = 64
MAX_TEXT = 128
MAX_VECTORS = 8

# --- message types --------------------------------------------------------------------------
# requests (device <-> relay)
REGISTER = 0x01
AUTH_RESPONSE = 0x02
AUTH_FAILURE = 0x03
DEREGISTER = 0x04
KEEPALIVE = 0x05
AFFILIATE = 0x08
DEAFFILIATE = 0x09
AFFILIATION_QUERY = 0x0A
CALL_SETUP = 0x10
CALL_NOTIFY = 0x11
CALL_END = 0x12
EMERGENCY_ALERT = 0x14
EMERGENCY_CANCEL = 0x15
DEVICE_CONTROL = 0x18
# requests (relay <-> relay)
AUTH_VECTOR_REQUEST = 0x20
ROAM_NOTIFY = 0x21
ROAM_CANCEL = 0x22
LINK_HELLO = 0x28
LINK_AUTH = 0x29
GROUP_ATTACH = 0x2C
GROUP_DETACH = 0x2D
# responses
CHALLENGE = 0x81
REGISTER_ACK = 0x82
REGISTER_REJECT = 0x83
DEREGISTER_ACK = 0x84
KEEPALIVE_ACK = 0x85
AFFILIATE_ACK = 0x88
DEAFFILIATE_ACK = 0x89
AFFILIATION_REPORT = 0x8A
CALL_ACK = 0x90
CALL_NOTIFY_ACK = 0x91
CALL_END_ACK = 0x92
EMERGENCY_ACK = 0x94
DEVICE_CONTROL_ACK = 0x98
AUTH_VECTOR_RESPONSE = 0xA0
ROAM_ACK = 0xA1
ROAM_CANCEL_ACK = 0xA2
LINK_CHALLENGE = 0xA8
LINK_ACK = 0xA9
GROUP_ATTACH_ACK = 0xAC
GROUP_DETACH_ACK = 0xAD
PENDING = 0xFE  # "your request arrived and is being worked on": keep waiting (protocol.md §7)
ERROR = 0xFF

# --- code points ----------------------------------------------------------------------------
# cause (16 bits): REGISTER_REJECT, ERROR, AUTH_FAILURE, DEREGISTER, CALL_END, ROAM_CANCEL.
# Receivers treat an unknown cause as CAUSE_UNSPECIFIED.
CAUSE_UNSPECIFIED = 0
CAUSE_BAD_REQUEST = 1
CAUSE_UNSUPPORTED = 2
CAUSE_AUTH_FAILED = 3
CAUSE_UNKNOWN_SESSION = 4
CAUSE_UNKNOWN_IDENTITY = 5
CAUSE_HOME_UNREACHABLE = 6
CAUSE_ROAMING_NOT_ALLOWED = 7
CAUSE_STUNNED = 8
CAUSE_KILLED = 9
CAUSE_NO_RESOURCES = 10
CAUSE_NOT_AUTHORIZED = 11
CAUSE_UNKNOWN_GROUP = 12
CAUSE_UNKNOWN_CALL = 13
CAUSE_BUSY = 14
CAUSE_INTERNAL_ERROR = 15
CAUSE_AUTN_INVALID = 16
CAUSE_SYNC_FAILURE = 17
CAUSE_POWER_OFF = 18
CAUSE_HANDOVER = 19
CAUSE_EXPIRED = 20
CAUSE_NORMAL = 21
CAUSE_PREEMPTED = 22
CAUSE_LINK_DOWN = 23

# call_type (strict: a v1 receiver refuses a type it does not know)
CALL_NORMAL = 0
CALL_EMERGENCY = 1
CALL_IMMINENT_PERIL = 2
CALL_BROADCAST = 3

# action of DEVICE_CONTROL (strict)
CTRL_STUN = 1
CTRL_REVIVE = 2
CTRL_KILL = 3

# status of KEEPALIVE_ACK (strict)
KA_OK = 0
KA_STUNNED = 1
KA_REREGISTER = 2

# per-group result code in AFFILIATE_ACK / DEAFFILIATE_ACK / REGISTER_ACK (non-zero = not done;
# an unknown non-zero code is a failure)
AFF_OK = 0
AFF_UNKNOWN_GROUP = 1
AFF_NOT_AUTHORIZED = 2
AFF_LIMIT_REACHED = 3
AFF_NOT_AFFILIATED = 4
AFF_LOCAL_ONLY = 5  # affiliated, but the group's controlling relay is unreachable: local floor

# affiliation flags (bits; unknown bits are carried, not refused)
AFF_SCAN = 0x01
AFF_SELECTED = 0x02

# caps (bits)
CAP_DVI4 = 0x01
CAP_CODEC2 = 0x02
CAP_E2E = 0x04
CAP_LOCATION = 0x08
CAP_EMERGENCY = 0x10
CAP_DISPATCH = 0x20

# grants of a link's roaming agreement (bits)
GRANT_ROAMING = 0x01
GRANT_GROUPS = 0x02
GRANT_VECTORS = 0x04
GRANT_CONTROL = 0x08
GRANT_EMERGENCY = 0x10

# --- fields ---------------------------------------------------------------------------------
# TLV: type (8) | length (8; 16 when type >= 0xC0, as TS 24.380's fields) | value.
LONG_TLV = 0xC0

K_IDENT = "ident"
K_B16 = "b16"
K_U8 = "u8"
K_U16 = "u16"
K_U32 = "u32"
K_TEXT = "text"
K_AFF = "aff"
K_RESULT = "result"
K_VECTOR = "vector"
K_RESYNC = "resync"
K_LOCATION = "location"
K_ADDR = "addr"

# tlv: (name, plural name for list fields, kind, lowest, highest)
FIELDS = {
    0x01: ("identity", None, K_IDENT, None, None),
    0x02: ("relay", None, K_IDENT, None, None),
    0x03: ("group", "groups", K_IDENT, None, None),
    0x04: ("prev_relay", None, K_IDENT, None, None),
    0x05: ("peer", None, K_IDENT, None, None),
    0x08: ("nonce", None, K_B16, None, None),
    0x09: ("rand", None, K_B16, None, None),
    0x0A: ("autn", None, K_B16, None, None),
    0x0B: ("res", None, K_B16, None, None),
    0x0C: ("auts", None, K_B16, None, None),
    0x0D: ("proof", None, K_B16, None, None),
    0x10: ("vid", None, K_U32, 0, 0xFFFFFFFF),
    0x11: ("caps", None, K_U32, 0, 0xFFFFFFFF),
    0x12: ("expiry", None, K_U32, 0, 0xFFFFFFFF),
    0x13: ("ssrc", None, K_U32, 0, 0xFFFFFFFF),
    0x14: ("floor_ssrc", None, K_U32, 0, 0xFFFFFFFF),
    0x15: ("call_id", None, K_U32, 0, 0xFFFFFFFF),
    0x16: ("seq", None, K_U32, 0, 0xFFFFFFFF),
    0x17: ("agreement", None, K_U32, 0, 0xFFFFFFFF),
    0x18: ("grants", None, K_U32, 0, 0xFFFFFFFF),
    0x20: ("keepalive", None, K_U16, 1, 0xFFFF),
    0x21: ("key_id", None, K_U16, 0, 0xFFFF),
    0x22: ("cause", None, K_U16, 0, 0xFFFF),
    0x23: ("retry_after", None, K_U16, 0, 0xFFFF),
    0x24: ("members", None, K_U16, 0, 0xFFFF),
    0x28: ("status", None, K_U8, KA_OK, KA_REREGISTER),
    0x29: ("call_type", None, K_U8, CALL_NORMAL, CALL_BROADCAST),
    0x2A: ("priority", None, K_U8, 0, 255),
    0x2B: ("action", None, K_U8, CTRL_STUN, CTRL_KILL),
    0x2C: ("count", None, K_U8, 1, MAX_VECTORS),
    0x30: ("affiliation", "affiliations", K_AFF, None, None),
    0x31: ("result", "results", K_RESULT, None, None),
    0x32: ("vector", "vectors", K_VECTOR, None, None),
    0x33: ("resync", None, K_RESYNC, None, None),
    0x34: ("location", None, K_LOCATION, None, None),
    0x35: ("addr", None, K_ADDR, None, None),
    0x38: ("text", None, K_TEXT, None, None),
}

# presence of a field in a message
REQ = 1  # exactly one
OPT = 2  # at most one
LIST = 3  # any number (attribute: the plural name, a list)
LIST1 = 4  # at least one

PRESENCE_NAMES = {REQ: "required", OPT: "optional", LIST: "list", LIST1: "list, >= 1"}

_OPEN = False  # may be sent unprotected (before a session key exists)
_PROT = True  # must be protected

# type: (name, must be protected, ((tlv, presence), ...) in encoding order)
MESSAGES = {
    REGISTER: ("REGISTER", _OPEN, ((0x01, REQ), (0x08, REQ), (0x11, OPT), (0x30, LIST), (0x04, OPT))),
    CHALLENGE: ("CHALLENGE", _OPEN, ((0x09, REQ), (0x0A, REQ), (0x10, REQ))),
    AUTH_RESPONSE: ("AUTH_RESPONSE", _PROT, ((0x0B, REQ),)),
    AUTH_FAILURE: ("AUTH_FAILURE", _OPEN, ((0x22, REQ), (0x10, OPT), (0x0C, OPT))),
    REGISTER_ACK: (
        "REGISTER_ACK",
        _PROT,
        ((0x02, REQ), (0x20, REQ), (0x12, REQ), (0x13, REQ), (0x21, REQ), (0x31, LIST)),
    ),
    REGISTER_REJECT: ("REGISTER_REJECT", _OPEN, ((0x22, REQ), (0x23, OPT), (0x38, OPT))),
    DEREGISTER: ("DEREGISTER", _PROT, ((0x22, OPT),)),
    DEREGISTER_ACK: ("DEREGISTER_ACK", _PROT, ()),
    KEEPALIVE: ("KEEPALIVE", _PROT, ((0x34, OPT),)),
    KEEPALIVE_ACK: ("KEEPALIVE_ACK", _PROT, ((0x28, REQ), (0x12, OPT))),
    AFFILIATE: ("AFFILIATE", _PROT, ((0x30, LIST1),)),
    AFFILIATE_ACK: ("AFFILIATE_ACK", _PROT, ((0x31, LIST1),)),
    DEAFFILIATE: ("DEAFFILIATE", _PROT, ((0x03, LIST1),)),
    DEAFFILIATE_ACK: ("DEAFFILIATE_ACK", _PROT, ((0x31, LIST1),)),
    AFFILIATION_QUERY: ("AFFILIATION_QUERY", _PROT, ((0x01, OPT),)),
    AFFILIATION_REPORT: ("AFFILIATION_REPORT", _PROT, ((0x01, OPT), (0x30, LIST))),
    CALL_SETUP: (
        "CALL_SETUP",
        _PROT,
        ((0x03, REQ), (0x29, REQ), (0x2A, REQ), (0x01, OPT), (0x21, OPT)),
    ),
    CALL_ACK: ("CALL_ACK", _PROT, ((0x15, REQ), (0x13, REQ), (0x14, REQ), (0x35, OPT))),
    CALL_NOTIFY: (
        "CALL_NOTIFY",
        _PROT,
        (
            (0x03, REQ),
            (0x15, REQ),
            (0x29, REQ),
            (0x2A, REQ),
            (0x14, REQ),
            (0x01, OPT),
            (0x35, OPT),
            (0x21, OPT),
        ),
    ),
    CALL_NOTIFY_ACK: ("CALL_NOTIFY_ACK", _PROT, ()),
    CALL_END: ("CALL_END", _PROT, ((0x15, REQ), (0x22, OPT))),
    CALL_END_ACK: ("CALL_END_ACK", _PROT, ()),
    EMERGENCY_ALERT: ("EMERGENCY_ALERT", _PROT, ((0x03, OPT), (0x01, OPT), (0x34, OPT))),
    EMERGENCY_CANCEL: ("EMERGENCY_CANCEL", _PROT, ((0x03, OPT), (0x01, OPT))),
    EMERGENCY_ACK: ("EMERGENCY_ACK", _PROT, ()),
    DEVICE_CONTROL: ("DEVICE_CONTROL", _PROT, ((0x2B, REQ), (0x01, OPT), (0x16, OPT), (0x0D, OPT))),
    DEVICE_CONTROL_ACK: ("DEVICE_CONTROL_ACK", _PROT, ((0x2B, REQ),)),
    AUTH_VECTOR_REQUEST: ("AUTH_VECTOR_REQUEST", _PROT, ((0x01, REQ), (0x2C, REQ), (0x33, OPT))),
    AUTH_VECTOR_RESPONSE: ("AUTH_VECTOR_RESPONSE", _PROT, ((0x32, LIST1),)),
    ROAM_NOTIFY: ("ROAM_NOTIFY", _PROT, ((0x01, REQ), (0x02, REQ), (0x10, OPT), (0x12, OPT))),
    ROAM_ACK: ("ROAM_ACK", _PROT, ((0x12, OPT),)),
    ROAM_CANCEL: ("ROAM_CANCEL", _PROT, ((0x01, REQ), (0x02, OPT), (0x22, OPT))),
    ROAM_CANCEL_ACK: ("ROAM_CANCEL_ACK", _PROT, ()),
    LINK_HELLO: ("LINK_HELLO", _OPEN, ((0x02, REQ), (0x05, OPT), (0x08, REQ), (0x17, REQ), (0x11, OPT))),
    LINK_CHALLENGE: ("LINK_CHALLENGE", _OPEN, ((0x02, REQ), (0x08, REQ), (0x0D, REQ))),
    LINK_AUTH: ("LINK_AUTH", _PROT, ((0x0D, REQ),)),
    LINK_ACK: ("LINK_ACK", _PROT, ((0x20, REQ), (0x12, REQ), (0x18, REQ))),
    GROUP_ATTACH: ("GROUP_ATTACH", _PROT, ((0x03, REQ), (0x02, OPT), (0x24, OPT))),
    GROUP_ATTACH_ACK: (
        "GROUP_ATTACH_ACK",
        _PROT,
        ((0x14, REQ), (0x13, REQ), (0x15, OPT), (0x35, OPT)),
    ),
    GROUP_DETACH: ("GROUP_DETACH", _PROT, ((0x03, REQ),)),
    GROUP_DETACH_ACK: ("GROUP_DETACH_ACK", _PROT, ()),
    PENDING: ("PENDING", _OPEN, ()),
    ERROR: ("ERROR", _OPEN, ((0x22, REQ), (0x23, OPT), (0x38, OPT))),
}

# request type -> the response types that may answer it (ERROR answers any request)
ANSWERS = {
    REGISTER: (CHALLENGE, REGISTER_REJECT),
    AUTH_RESPONSE: (REGISTER_ACK, REGISTER_REJECT),
    AUTH_FAILURE: (CHALLENGE, REGISTER_REJECT),
    DEREGISTER: (DEREGISTER_ACK,),
    KEEPALIVE: (KEEPALIVE_ACK,),
    AFFILIATE: (AFFILIATE_ACK,),
    DEAFFILIATE: (DEAFFILIATE_ACK,),
    AFFILIATION_QUERY: (AFFILIATION_REPORT,),
    CALL_SETUP: (CALL_ACK,),
    CALL_NOTIFY: (CALL_NOTIFY_ACK,),
    CALL_END: (CALL_END_ACK,),
    EMERGENCY_ALERT: (EMERGENCY_ACK,),
    EMERGENCY_CANCEL: (EMERGENCY_ACK,),
    DEVICE_CONTROL: (DEVICE_CONTROL_ACK,),
    AUTH_VECTOR_REQUEST: (AUTH_VECTOR_RESPONSE,),
    ROAM_NOTIFY: (ROAM_ACK,),
    ROAM_CANCEL: (ROAM_CANCEL_ACK,),
    LINK_HELLO: (LINK_CHALLENGE,),
    LINK_AUTH: (LINK_ACK,),
    GROUP_ATTACH: (GROUP_ATTACH_ACK,),
    GROUP_DETACH: (GROUP_DETACH_ACK,),
}


def answers(request_type, response_type):
    """Whether a response of ``response_type`` may complete a request of ``request_type``."""
    if response_type == ERROR:
        return request_type in ANSWERS
    return response_type in ANSWERS.get(request_type, ())


def type_name(mtype):
    m = MESSAGES.get(mtype)
    return m[0] if m else "type 0x%02x" % mtype


def must_protect(mtype):
    return MESSAGES[mtype][1]


# name -> tlv, and per message: tlv -> (attribute, presence), attribute -> (tlv, presence)
FIELD_IDS = {}
for _t, _f in FIELDS.items():
    FIELD_IDS[_f[0]] = _t
    if _f[1]:
        FIELD_IDS[_f[1]] = _t


def _attr(tlv, presence):
    f = FIELDS[tlv]
    return f[1] if presence in (LIST, LIST1) else f[0]


_BY_TLV = {}
_BY_ATTR = {}
for _m, _spec in MESSAGES.items():
    _bt = {}
    _ba = {}
    for _t, _p in _spec[2]:
        _a = _attr(_t, _p)
        _bt[_t] = (_a, _p)
        _ba[_a] = (_t, _p)
    _BY_TLV[_m] = _bt
    _BY_ATTR[_m] = _ba


def message_fields(mtype):
    """``[(attribute, tlv, presence), ...]`` of a message type, in encoding order."""
    return [(_attr(t, p), t, p) for t, p in MESSAGES[mtype][2]]


# --- value codecs ---------------------------------------------------------------------------
# Identity charset: lowercase ASCII, so identities compare byte for byte without Unicode
# normalisation (which MicroPython lacks); the system part is a DNS-label-like system code.
_LOCAL_OK = 1
_SYSTEM_OK = 2
_CHARS = bytearray(256)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789-":
    _CHARS[_c] = _LOCAL_OK | _SYSTEM_OK
for _c in b"._":
    _CHARS[_c] = _LOCAL_OK


def _check_ident(b):
    n = len(b)
    if n > MAX_IDENT:
        raise BadValue("identity longer than %d bytes" % MAX_IDENT)
    at = -1
    for i in range(n):
        if b[i] == 0x40:
            if at >= 0:
                raise BadValue("identity has more than one '@'")
            at = i
    if at <= 0 or at == n - 1:
        raise BadValue("identity must be name@system with both parts non-empty")
    for i in range(n):
        if i == at:
            continue
        need = _LOCAL_OK if i < at else _SYSTEM_OK
        if not _CHARS[b[i]] & need:
            raise BadValue("identity has a character outside its charset")


def valid_identity(s):
    """True for a well-formed ``name@system`` identity (str)."""
    if not isinstance(s, str):
        return False
    try:
        _check_ident(s.encode())
    except BadValue:
        return False
    return True


def system_of(identity):
    """The system part of ``name@system``: the identity's (or group's) home system."""
    return identity[identity.index("@") + 1 :]


def _enc_ident(v):
    if not isinstance(v, str):
        raise BadValue("identity must be a str")
    b = v.encode()
    _check_ident(b)
    return b


def _dec_ident(b):
    _check_ident(b)
    return bytes(b).decode()


def _int(v, lo, hi, what):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadValue("%s must be an integer in %d..%d" % (what, lo, hi))
    return v


def _b16(v, what):
    if not isinstance(v, (bytes, bytearray)) or len(v) != 16:
        raise BadValue("%s must be 16 bytes" % what)
    return bytes(v)


def _tuple(v, n, what):
    if not isinstance(v, (tuple, list)) or len(v) != n:
        raise BadValue("%s must be a %d-tuple" % (what, n))
    return v


def _enc_value(kind, lo, hi, v, what):
    if kind == K_IDENT:
        return _enc_ident(v)
    if kind == K_B16:
        return _b16(v, what)
    if kind == K_U8:
        return bytes((_int(v, lo, hi, what),))
    if kind == K_U16:
        return struct.pack(">H", _int(v, lo, hi, what))
    if kind == K_U32:
        return struct.pack(">I", _int(v, lo, hi, what))
    if kind == K_TEXT:
        if not isinstance(v, str):
            raise BadValue("text must be a str")
        b = v.encode()
        _check_text(b)
        return b
    if kind == K_AFF:
        g, prio, flags = _tuple(v, 3, what)
        return bytes((_int(prio, 0, 255, "priority"), _int(flags, 0, 255, "flags"))) + _enc_ident(g)
    if kind == K_RESULT:
        g, code = _tuple(v, 2, what)
        return bytes((_int(code, 0, 255, "result code"),)) + _enc_ident(g)
    if kind == K_VECTOR:
        vid, rand, xres, ks, autn = _tuple(v, 5, what)
        return (
            struct.pack(">I", _int(vid, 0, 0xFFFFFFFF, "vid"))
            + _b16(rand, "RAND")
            + _b16(xres, "XRES")
            + _b16(ks, "KS")
            + _b16(autn, "AUTN")
        )
    if kind == K_RESYNC:
        rand, vid, auts = _tuple(v, 3, what)
        return _b16(rand, "RAND") + struct.pack(">I", _int(vid, 0, 0xFFFFFFFF, "vid")) + _b16(auts, "AUTS")
    if kind == K_LOCATION:
        lat, lon, acc, age = _tuple(v, 4, what)
        return struct.pack(
            ">iiHH",
            _int(lat, -900000000, 900000000, "latitude (1e-7 deg)"),
            _int(lon, -1800000000, 1800000000, "longitude (1e-7 deg)"),
            _int(acc, 0, 0xFFFF, "accuracy"),
            _int(age, 0, 0xFFFF, "age"),
        )
    if kind == K_ADDR:
        ip, port = _tuple(v, 2, what)
        if not isinstance(ip, (bytes, bytearray)) or len(ip) not in (4, 16):
            raise BadValue("address must be 4 (IPv4) or 16 (IPv6) bytes")
        return struct.pack(">H", _int(port, 1, 0xFFFF, "port")) + bytes(ip)
    raise BadValue("unknown field kind %r" % kind)


def _check_text(b):
    if len(b) > MAX_TEXT:
        raise BadValue("text longer than %d bytes" % MAX_TEXT)
    for c in b:
        if c < 0x20 or c > 0x7E:
            raise BadValue("text must be printable ASCII")


_FIXED = {K_B16: 16, K_U8: 1, K_U16: 2, K_U32: 4, K_VECTOR: 68, K_RESYNC: 36, K_LOCATION: 12}


def _dec_value(kind, lo, hi, b, what):
    n = len(b)
    want = _FIXED.get(kind)
    if want is not None and n != want:
        raise BadValue("%s: length %d, expected %d" % (what, n, want))
    if kind == K_IDENT:
        return _dec_ident(b)
    if kind == K_B16:
        return bytes(b)
    if kind in (K_U8, K_U16, K_U32):
        v = int.from_bytes(bytes(b), "big")
        if not lo <= v <= hi:
            raise BadValue("%s = %d out of range %d..%d" % (what, v, lo, hi))
        return v
    if kind == K_TEXT:
        _check_text(b)
        return bytes(b).decode()
    if kind == K_AFF:
        if n < 2:
            raise BadValue("affiliation too short")
        return (_dec_ident(b[2:]), b[0], b[1])
    if kind == K_RESULT:
        if n < 1:
            raise BadValue("result too short")
        return (_dec_ident(b[1:]), b[0])
    if kind == K_VECTOR:
        b = bytes(b)
        return (struct.unpack(">I", b[0:4])[0], b[4:20], b[20:36], b[36:52], b[52:68])
    if kind == K_RESYNC:
        b = bytes(b)
        return (b[0:16], struct.unpack(">I", b[16:20])[0], b[20:36])
    if kind == K_LOCATION:
        lat, lon, acc, age = struct.unpack(">iiHH", bytes(b))
        if not -900000000 <= lat <= 900000000 or not -1800000000 <= lon <= 1800000000:
            raise BadValue("location out of range")
        return (lat, lon, acc, age)
    if kind == K_ADDR:
        if n not in (6, 18):
            raise BadValue("address must be 6 or 18 bytes")
        b = bytes(b)
        port = (b[0] << 8) | b[1]
        if port == 0:
            raise BadValue("port 0")
        return (b[2:], port)
    raise BadValue("unknown field kind %r" % kind)


def _check_message(mtype, get):
    """Rules that tie fields together; ``get(attr)`` gives a field's value or None."""
    if mtype == AUTH_FAILURE and get("cause") == CAUSE_SYNC_FAILURE:
        if get("auts") is None or get("vid") is None:
            raise BadValue("AUTH_FAILURE sync failure needs auts and vid")
    if mtype == DEVICE_CONTROL and (get("seq") is None) != (get("proof") is None):
        raise BadValue("DEVICE_CONTROL seq and proof go together")
    if mtype == AUTH_VECTOR_RESPONSE and len(get("vectors") or ()) > MAX_VECTORS:
        raise BadValue("more than %d vectors" % MAX_VECTORS)


# --- messages -------------------------------------------------------------------------------


class SigMsg:
    """One signalling message. Fields are keyword arguments named as in docs/protocol.md; list
    fields take their plural name (``affiliations=[("fire@no", 10, AFF_SCAN)]``). Reading an
    absent optional field gives None, an absent list field []. ``protected`` tells whether a
    decoded message arrived protected (authenticated and encrypted)."""

    def __init__(self, type, txid=0, session=0, down=False, **fields):
        spec = _BY_ATTR.get(type)
        if spec is None:
            raise BadValue("unknown message type 0x%02x" % type if isinstance(type, int) else "bad type")
        self.type = type
        self.txid = txid
        self.session = session
        self.down = bool(down)
        self.protected = False
        f = {}
        for k, v in fields.items():
            s = spec.get(k)
            if s is None:
                raise TypeError("%s has no field %r" % (MESSAGES[type][0], k))
            if v is None:
                continue
            if s[1] in (LIST, LIST1):
                if isinstance(v, (str, bytes, bytearray)):
                    raise TypeError("%s.%s takes a list" % (MESSAGES[type][0], k))
                v = [tuple(x) if isinstance(x, list) else x for x in v]
                if not v:
                    continue  # an empty list is the same message as an absent one
            elif isinstance(v, list):
                v = tuple(v)
            f[k] = v
        self._f = f

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        spec = _BY_ATTR[self.type].get(name)
        if spec is None:
            raise AttributeError("%s has no field %r" % (MESSAGES[self.type][0], name))
        v = self._f.get(name)
        if v is None and spec[1] in (LIST, LIST1):
            return []
        return v

    @property
    def name(self):
        return MESSAGES[self.type][0]

    @property
    def is_response(self):
        return bool(self.type & RESPONSE_BIT)

    def fields(self):
        """{attribute: value} of the fields present."""
        return dict(self._f)

    def __eq__(self, other):
        return (
            isinstance(other, SigMsg)
            and self.type == other.type
            and self.txid == other.txid
            and self.session == other.session
            and self.down == other.down
            and self._f == other._f
        )

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "SigMsg(%s, txid=%d, session=%d%s%s, %r)" % (
            self.name,
            self.txid,
            self.session,
            ", down" if self.down else "",
            ", protected" if self.protected else "",
            self._f,
        )

    def reply(self, type, **fields):
        """A response to this request: same transaction id and session, the other direction."""
        if self.is_response:
            raise BadValue("%s is a response; it has no reply" % self.name)
        if not answers(self.type, type) and not (type == PENDING and self.type in ANSWERS):
            raise BadValue("%s does not answer %s" % (type_name(type), self.name))
        return SigMsg(type, txid=self.txid, session=self.session, down=not self.down, **fields)


class Header:
    """The fixed header, as ``peek`` reads it before any key is known."""

    __slots__ = ("type", "flags", "txid", "session", "length")

    def __init__(self, mtype, flags, txid, session, length):
        self.type = mtype
        self.flags = flags
        self.txid = txid
        self.session = session
        self.length = length  # body length

    @property
    def protected(self):
        return bool(self.flags & FLAG_PROTECTED)

    @property
    def down(self):
        return bool(self.flags & FLAG_DOWN)

    @property
    def is_response(self):
        return bool(self.type & RESPONSE_BIT)

    def __repr__(self):
        return "Header(%s, flags=0x%02x, txid=%d, session=%d, length=%d)" % (
            type_name(self.type),
            self.flags,
            self.txid,
            self.session,
            self.length,
        )


# --- keys and protection --------------------------------------------------------------------


class SigKey:
    """One direction's signalling key: HMAC-SHA256 key (32 bytes) and AES-128 key (16 bytes)."""

    def __init__(self, mac_key, enc_key):
        if len(mac_key) < 16 or len(enc_key) != 16:
            raise ValueError("SigKey needs a >= 16-byte MAC key and a 16-byte AES key")
        self._mac = HmacSha256(bytes(mac_key))
        self._ctr = AesCtr(bytes(enc_key))

    def tag(self, header, body):
        return self._mac.digest(header, body)[:TAG_LEN]

    def crypt(self, tag, data):
        """AES-CTR under IV = tag[:14] || 0x0000; its own inverse."""
        out = bytearray(len(data))
        iv = bytearray(16)
        iv[0:14] = tag[0:14]
        step = 1024  # keeps each call inside AesCtr.MAX; the counter resumes in the IV's low 16 bits
        i = 0
        while i < len(data):
            chunk = data[i : i + step]
            blk = i >> 4
            iv[14] = blk >> 8
            iv[15] = blk & 0xFF
            part = bytearray(len(chunk))
            self._ctr.xor(iv, chunk, part)
            out[i : i + len(chunk)] = part
            i += step
        return bytes(out)


def keys(session_keys, owner):
    """``(tx, rx)`` SigKeys for one side of a session from ``authvec.SessionKeys``.

    ``owner``: this side allocated the session id (the relay for a device, the responder of a
    link); it sends *down* and receives *up*. The other side the reverse.
    """
    up = SigKey(session_keys.sig_up_mac, session_keys.sig_up_enc)
    down = SigKey(session_keys.sig_down_mac, session_keys.sig_down_enc)
    return (down, up) if owner else (up, down)


def _u32(v, what):
    if not isinstance(v, int) or not 0 <= v <= 0xFFFFFFFF:
        raise BadValue("%s must be a 32-bit unsigned integer" % what)
    return v


def frame(mtype, body, txid=0, session=0, down=False, key=None):
    """Header + ``body`` (raw TLV bytes, not checked) [+ protection with ``key``]."""
    if not isinstance(mtype, int) or not 0 <= mtype <= 255:
        raise BadValue("message type must be 0..255")
    flags = FLAG_DOWN if down else 0
    if key is not None:
        flags |= FLAG_PROTECTED
    n = HEADER_LEN + len(body) + (TAG_LEN if key is not None else 0)
    if n > MAX_MESSAGE:
        raise Oversized("%s would be %d bytes, over %d" % (type_name(mtype), n, MAX_MESSAGE))
    hdr = struct.pack(
        ">BBBBBBHII",
        MAGIC[0],
        MAGIC[1],
        VERSION,
        mtype,
        flags,
        0,
        len(body),
        _u32(txid, "txid"),
        _u32(session, "session"),
    )
    body = bytes(body)
    if key is None:
        return hdr + body
    tag = key.tag(hdr, body)
    return hdr + key.crypt(tag, body) + tag


def _tlv(t, value):
    n = len(value)
    if t >= LONG_TLV:
        if n > 0xFFFF:
            raise BadValue("TLV too long")
        return bytes((t, n >> 8, n & 0xFF)) + value
    if n > 0xFF:
        raise BadValue("TLV 0x%02x value longer than 255 bytes" % t)
    return bytes((t, n)) + value


def encode_body(msg):
    """The TLV body of ``msg``, after checking every field."""
    mtype = msg.type
    name = MESSAGES[mtype][0]
    out = []
    f = msg._f
    for t, pres in MESSAGES[mtype][2]:
        attr = _attr(t, pres)
        _fname, _pl, kind, lo, hi = FIELDS[t]
        v = f.get(attr)
        if pres in (LIST, LIST1):
            v = v or []
            if not isinstance(v, (list, tuple)):
                raise BadValue("%s.%s must be a list" % (name, attr))
            if pres == LIST1 and not v:
                raise BadValue("%s needs at least one %s" % (name, FIELDS[t][0]))
            for x in v:
                out.append(_tlv(t, _enc_value(kind, lo, hi, x, attr)))
        elif v is None:
            if pres == REQ:
                raise BadValue("%s needs %s" % (name, attr))
        else:
            out.append(_tlv(t, _enc_value(kind, lo, hi, v, attr)))
    _check_message(mtype, f.get)
    return b"".join(out)


def encode(msg, key=None):
    """Bytes of ``msg``; protected with ``key`` (this side's *tx* SigKey) when given.

    Raises BadValue for a field the format does not allow, or for a message type that must be
    protected given no key; Oversized when over MAX_MESSAGE.
    """
    if key is None and MESSAGES[msg.type][1]:
        raise BadValue("%s must be protected: give the session's tx key" % msg.name)
    return frame(msg.type, encode_body(msg), msg.txid, msg.session, msg.down, key)


def is_sig(buf):
    """Cheap demultiplexing on a shared port: an OpMob signalling message, not RTP/RTCP/STUN."""
    return len(buf) >= 2 and buf[0] == MAGIC[0] and buf[1] == MAGIC[1]


def peek(buf):
    """The header of ``buf``, checked for framing only (no key, no body, type not looked up):
    what a driver needs to find the session key and answer duplicates."""
    n = len(buf)
    if n > MAX_MESSAGE:
        raise Oversized("signalling message of %d bytes, over %d" % (n, MAX_MESSAGE))
    if n < 2:
        raise Truncated("shorter than the magic")
    if buf[0] != MAGIC[0] or buf[1] != MAGIC[1]:
        raise BadValue("not an OpMob signalling message (magic)")
    if n < 3:
        raise Truncated("no version")
    if buf[2] != VERSION:
        raise BadVersion("signalling version %d, this end speaks %d" % (buf[2], VERSION))
    if n < HEADER_LEN:
        raise Truncated("header cut short")
    _m0, _m1, _v, mtype, flags, rsvd, blen, txid, session = struct.unpack(
        ">BBBBBBHII", bytes(buf[:HEADER_LEN])
    )
    if flags & ~_KNOWN_FLAGS:
        raise BadValue("unknown header flags 0x%02x" % flags)
    if rsvd:
        raise BadValue("reserved header byte not zero")
    total = HEADER_LEN + blen + (TAG_LEN if flags & FLAG_PROTECTED else 0)
    if n < total:
        raise Truncated("message cut short: %d of %d bytes" % (n, total))
    if n > total:
        raise BadValue("%d bytes after the end of the message" % (n - total))
    return Header(mtype, flags, txid, session, blen)


def _parse_body(mtype, body):
    spec = _BY_TLV[mtype]
    vals = {}
    i = 0
    n = len(body)
    while i < n:
        if n - i < 2:
            raise Truncated("TLV header cut short")
        t = body[i]
        if t >= LONG_TLV:
            if n - i < 3:
                raise Truncated("long TLV header cut short")
            ln = (body[i + 1] << 8) | body[i + 2]
            i += 3
        else:
            ln = body[i + 1]
            i += 2
        if i + ln > n:
            raise Truncated("TLV 0x%02x value cut short" % t)
        s = spec.get(t)
        # A TLV this message does not define is skipped: later versions add optional fields.
        if s is not None:
            attr, pres = s
            _fname, _pl, kind, lo, hi = FIELDS[t]
            v = _dec_value(kind, lo, hi, body[i : i + ln], attr)
            if pres in (LIST, LIST1):
                lst = vals.get(attr)
                if lst is None:
                    vals[attr] = [v]
                else:
                    lst.append(v)
            elif attr in vals:
                raise BadValue("%s repeated in %s" % (attr, MESSAGES[mtype][0]))
            else:
                vals[attr] = v
        i += ln
    for t, pres in MESSAGES[mtype][2]:
        if pres == REQ or pres == LIST1:
            if _attr(t, pres) not in vals:
                raise BadValue("%s lacks %s" % (MESSAGES[mtype][0], _attr(t, pres)))
    _check_message(mtype, vals.get)
    return vals


def decode(buf, key=None):
    """The SigMsg in ``buf``; ``key`` is this side's *rx* SigKey for the session, if any.

    Raises only WireError subclasses: Oversized, Truncated, BadVersion, BadValue (framing, unknown
    type, field values, missing required fields), UnknownStream (protected but no key given),
    AuthFailed (tag does not verify, or a type that must be protected arrived unprotected).
    """
    h = peek(buf)
    spec = MESSAGES.get(h.type)
    if spec is None:
        raise BadValue("unknown message type 0x%02x" % h.type)
    body = bytes(buf[HEADER_LEN : HEADER_LEN + h.length])
    if h.flags & FLAG_PROTECTED:
        if key is None:
            raise UnknownStream("protected %s for session %d, but no key" % (spec[0], h.session))
        tag = bytes(buf[HEADER_LEN + h.length :])
        body = key.crypt(tag, body)
        if not ct_equal(key.tag(bytes(buf[:HEADER_LEN]), body), tag):
            raise AuthFailed("%s: tag does not verify" % spec[0])
    elif spec[1]:
        raise AuthFailed("%s must be protected" % spec[0])
    vals = _parse_body(h.type, body)
    m = SigMsg(h.type, txid=h.txid, session=h.session, down=bool(h.flags & FLAG_DOWN))
    m._f = vals
    m.protected = bool(h.flags & FLAG_PROTECTED)
    return m
