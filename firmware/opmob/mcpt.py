"""3GPP TS 24.380 floor-control messages carried in RTCP APP packets named "MCPT".

Packet: V=2 | P | subtype (5 bits) | PT=204 | length (32-bit words - 1) | SSRC | "MCPT" | fields.
The low 4 bits of the subtype name the message; bit 0x10 asks the receiver for a Floor Ack.
Each field: id (8 bits) | length (8 bits; 16 bits when id >= 192) | value, padded to 32 bits.
The length counts the value bytes only; padding follows and receivers ignore its contents.

Decoding is strict about structure (bounds, lengths, duplicates, UTF-8, value ranges) and raises only
``WireError`` subclasses; anything it returns re-encodes. Field ids it does not know are skipped, as
TS 24.380 asks. Encoding writes each message's fields in the order of its TS 24.380 table (``ORDER``);
fields a message's table does not list follow in ascending id.
"""

import struct

from opmob.errors import BadValue, BadVersion, Oversized, Truncated

# Message subtypes (low 4 bits)
FLOOR_REQUEST = 0
FLOOR_GRANTED = 1
FLOOR_TAKEN = 2
FLOOR_DENY = 3
FLOOR_RELEASE = 4
FLOOR_IDLE = 5
FLOOR_REVOKE = 6
FLOOR_QUEUE_POSITION_REQUEST = 8
FLOOR_QUEUE_POSITION_INFO = 9
FLOOR_ACK = 10
FLOOR_RELEASE_MULTI_TALKER = 15

MESSAGE_NAMES = {
    FLOOR_REQUEST: "Floor Request",
    FLOOR_GRANTED: "Floor Granted",
    FLOOR_TAKEN: "Floor Taken",
    FLOOR_DENY: "Floor Deny",
    FLOOR_RELEASE: "Floor Release",
    FLOOR_IDLE: "Floor Idle",
    FLOOR_REVOKE: "Floor Revoke",
    FLOOR_QUEUE_POSITION_REQUEST: "Floor Queue Position Request",
    FLOOR_QUEUE_POSITION_INFO: "Floor Queue Position Info",
    FLOOR_ACK: "Floor Ack",
    FLOOR_RELEASE_MULTI_TALKER: "Floor Release Multi Talker",
}

ACK_REQUESTED = 0x10

# Floor Indicator bits (field 13)
IND_NORMAL = 0x8000
IND_BROADCAST = 0x4000
IND_SYSTEM = 0x2000
IND_EMERGENCY = 0x1000
IND_IMMINENT_PERIL = 0x0800
IND_QUEUEING_SUPPORTED = 0x0400
IND_DUAL_FLOOR = 0x0200
IND_TEMPORARY_GROUP = 0x0100
IND_MULTI_TALKER = 0x0080

# Floor Deny causes
DENY_ANOTHER_HAS_PERMISSION = 1
DENY_INTERNAL_ERROR = 2
DENY_ONLY_ONE_PARTICIPANT = 3
DENY_RETRY_AFTER_NOT_EXPIRED = 4
DENY_RECEIVE_ONLY = 5
DENY_NO_RESOURCES = 6
DENY_QUEUE_FULL = 7
DENY_OTHER = 255

# Floor Revoke causes
REVOKE_ONLY_ONE_CLIENT = 1
REVOKE_BURST_TOO_LONG = 2
REVOKE_NO_PERMISSION = 3
REVOKE_PREEMPTED = 4
REVOKE_NO_RESOURCES = 6
REVOKE_OTHER = 255

# Source field (10)
SOURCE_PARTICIPANT = 0
SOURCE_PARTICIPATING = 1
SOURCE_CONTROLLING = 2
SOURCE_NON_CONTROLLING = 3

# Field ids
F_PRIORITY = 0
F_DURATION = 1
F_REJECT_CAUSE = 2
F_QUEUE_INFO = 3
F_GRANTED_PARTY = 4
F_PERMISSION = 5
F_USER_ID = 6
F_QUEUE_SIZE = 7
F_SEQ = 8
F_QUEUED_USER = 9
F_SOURCE = 10
F_TRACK_INFO = 11
F_MESSAGE_TYPE = 12
F_INDICATOR = 13
F_SSRC = 14

# attribute name for each field id; a field is absent when its attribute is None
FIELD_ATTRS = (
    "priority",  # 0: int 0..255
    "duration",  # 1: int seconds 0..65535
    "reject_cause",  # 2: int 0..65535 (text in reject_text)
    "queue_info",  # 3: (position, priority) each 0..255
    "granted_party",  # 4: str
    "permission",  # 5: int 0 or 1
    "user_id",  # 6: str
    "queue_size",  # 7: int 0..65535
    "seq",  # 8: int 0..65535
    "queued_user",  # 9: str
    "source",  # 10: int 0..3
    "track_info",  # 11: TrackInfo
    "msg_type",  # 12: int 0..255 (the message type being acknowledged)
    "indicator",  # 13: int 16-bit flags
    "ssrc_field",  # 14: int 32-bit
)


class FloorMsg:
    """One floor-control message. ``kind`` is the subtype's low 4 bits; ``ssrc`` the sender's SSRC."""

    __slots__ = ("kind", "ssrc", "ack_req", "reject_text") + FIELD_ATTRS

    def __init__(self, kind, ssrc=0, ack_req=False, **fields):
        self.kind = kind
        self.ssrc = ssrc
        self.ack_req = ack_req
        self.reject_text = None
        for a in FIELD_ATTRS:
            setattr(self, a, None)
        for k, v in fields.items():
            if k not in FIELD_ATTRS and k != "reject_text":
                raise TypeError("FloorMsg has no field %r" % k)
            setattr(self, k, v)

    @property
    def name(self):
        return MESSAGE_NAMES.get(self.kind, "subtype %d" % self.kind)

    def fields(self):
        """{attribute: value} of the fields present."""
        d = {}
        for a in FIELD_ATTRS + ("reject_text",):
            v = getattr(self, a)
            if v is not None:
                d[a] = v
        return d

    def __eq__(self, other):
        return (
            isinstance(other, FloorMsg)
            and self.kind == other.kind
            and self.ssrc == other.ssrc
            and self.ack_req == other.ack_req
            and self.fields() == other.fields()
        )

    def __repr__(self):
        return "FloorMsg(%s, ssrc=0x%08x%s, %r)" % (
            self.name,
            self.ssrc,
            ", ack" if self.ack_req else "",
            self.fields(),
        )


RTCP_VERSION = 2
PT_APP = 204
APP_NAME = b"MCPT"
HEADER_LEN = 12  # V/P/subtype, PT, length, SSRC, name
MAX_PACKET = 1500  # one Ethernet MTU: anything larger is not ours

# Subtypes whose fifth bit may ask for an ack (TS 24.380 writes them "x0001" etc.; Wireshark's subtype
# table lists the same six). For the others that bit is 0, so a set bit makes an unknown subtype.
ACK_KINDS = (
    FLOOR_GRANTED,
    FLOOR_TAKEN,
    FLOOR_DENY,
    FLOOR_RELEASE,
    FLOOR_IDLE,
    FLOOR_QUEUE_POSITION_INFO,
)

# Field order of each message's table in TS 24.380 clause 8.2, limited to the fields a FloorMsg holds.
# Floor Release Multi-talker has no table here yet, so it uses ascending id. A FloorMsg holds one queued
# participant, so a Floor Granted carries at most one (SSRC, Queued User ID, Queue Info) group, and a
# received one with several is refused as a duplicate field.
ORDER = {
    FLOOR_REQUEST: (F_PRIORITY, F_USER_ID, F_TRACK_INFO, F_INDICATOR),
    FLOOR_GRANTED: (
        F_DURATION,
        F_SSRC,
        F_PRIORITY,
        F_USER_ID,
        F_QUEUE_SIZE,
        F_QUEUED_USER,
        F_QUEUE_INFO,
        F_TRACK_INFO,
        F_INDICATOR,
    ),
    FLOOR_TAKEN: (F_GRANTED_PARTY, F_PERMISSION, F_USER_ID, F_SEQ, F_TRACK_INFO, F_INDICATOR, F_SSRC),
    FLOOR_DENY: (F_REJECT_CAUSE, F_USER_ID, F_TRACK_INFO, F_INDICATOR),
    FLOOR_RELEASE: (F_USER_ID, F_TRACK_INFO, F_INDICATOR),
    FLOOR_IDLE: (F_SEQ, F_TRACK_INFO, F_INDICATOR),
    FLOOR_REVOKE: (F_REJECT_CAUSE, F_TRACK_INFO, F_INDICATOR),
    FLOOR_QUEUE_POSITION_REQUEST: (F_USER_ID, F_TRACK_INFO),
    FLOOR_QUEUE_POSITION_INFO: (F_USER_ID, F_SSRC, F_QUEUED_USER, F_QUEUE_INFO, F_TRACK_INFO, F_INDICATOR),
    FLOOR_ACK: (F_SOURCE, F_MESSAGE_TYPE, F_TRACK_INFO),
    FLOOR_RELEASE_MULTI_TALKER: (),
}

_FULL_ORDER = {}
for _k in MESSAGE_NAMES:
    _FULL_ORDER[_k] = ORDER[_k] + tuple(i for i in range(len(FIELD_ATTRS)) if i not in ORDER[_k])
del _k

# Value length of the fixed-size fields; the others (2, 4, 6, 9, 11) vary.
_FIXED_LEN = {
    F_PRIORITY: 2,
    F_DURATION: 2,
    F_QUEUE_INFO: 2,
    F_PERMISSION: 2,
    F_QUEUE_SIZE: 2,
    F_SEQ: 2,
    F_SOURCE: 2,
    F_MESSAGE_TYPE: 2,
    F_INDICATOR: 2,
    F_SSRC: 6,
}
_TEXT_FIELDS = (F_GRANTED_PARTY, F_USER_ID, F_QUEUED_USER)
_MAX_VALUE = 255  # 8-bit field length
_MAX_REJECT_TEXT = _MAX_VALUE - 2


class TrackInfo:
    """Track Info field (TS 24.380 clause 8.2.3.13), added by participating and non-controlling functions.

    Value: queueing capability (8 bits, 0 or 1) | participant type length (8 bits) | participant type
    (UTF-8, zero-padded to 4 bytes) | floor participant references (32 bits each). The field length
    counts the participant type's padding, so the references stay 32-bit aligned.
    """

    __slots__ = ("queueing", "participant_type", "refs")

    def __init__(self, queueing=0, participant_type="", refs=()):
        self.queueing = queueing
        self.participant_type = participant_type
        self.refs = tuple(refs)

    def __eq__(self, other):
        return (
            isinstance(other, TrackInfo)
            and self.queueing == other.queueing
            and self.participant_type == other.participant_type
            and tuple(self.refs) == tuple(other.refs)
        )

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "TrackInfo(queueing=%r, participant_type=%r, refs=%r)" % (
            self.queueing,
            self.participant_type,
            tuple(self.refs),
        )


def _pad4(n):
    return (4 - n % 4) % 4


def utf8_decode(b, what):
    """Strict UTF-8 (RFC 3629) to str, raising BadValue.

    MicroPython's decoder lets overlong forms, surrogates and code points above U+10FFFF through, so the
    check is done here by hand to make both runtimes accept exactly the same bytes.
    """
    n = len(b)
    i = 0
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            k, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            k, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= c <= 0xEF:
            k, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            k, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            k, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            k, lo, hi = 3, 0x80, 0x8F
        else:
            raise BadValue("%s: invalid UTF-8 lead byte 0x%02x" % (what, c))
        if i + k >= n:
            raise BadValue("%s: UTF-8 sequence cut short" % what)
        if not lo <= b[i + 1] <= hi:
            raise BadValue("%s: invalid UTF-8 continuation" % what)
        j = i + 2
        while j <= i + k:
            if not 0x80 <= b[j] <= 0xBF:
                raise BadValue("%s: invalid UTF-8 continuation" % what)
            j += 1
        i += k + 1
    try:
        return bytes(b).decode("utf-8")
    except UnicodeError:  # pragma: no cover - the checks above are stricter than both decoders
        raise BadValue("%s: invalid UTF-8" % what)


def _utf8_encode(s, what, maxlen):
    if not isinstance(s, str):
        raise BadValue("%s must be a str" % what)
    try:
        b = s.encode("utf-8")
    except UnicodeError:  # lone surrogates on CPython
        raise BadValue("%s is not encodable as UTF-8" % what)
    utf8_decode(b, what)  # MicroPython str can hold surrogates; refuse to send what we would refuse to read
    if len(b) > maxlen:
        raise BadValue("%s longer than %d bytes in UTF-8" % (what, maxlen))
    return b


def _uint(v, bits, what):
    if not isinstance(v, int) or not 0 <= v < (1 << bits):
        raise BadValue("%s must be an integer 0..%d" % (what, (1 << bits) - 1))
    return v


def _enum(v, top, what):
    if not isinstance(v, int) or not 0 <= v <= top:
        raise BadValue("%s must be an integer 0..%d" % (what, top))
    return v


def _field(fid, value):
    n = len(value)
    return bytes((fid, n)) + value + bytes(_pad4(2 + n))


def _encode_track_info(ti):
    if not isinstance(ti, TrackInfo):
        raise BadValue("track_info must be a TrackInfo")
    q = _enum(ti.queueing, 1, "Track Info queueing capability")
    pt = _utf8_encode(ti.participant_type, "Track Info participant type", _MAX_VALUE)
    refs = tuple(ti.refs)
    for r in refs:
        _uint(r, 32, "Track Info participant reference")
    n = len(pt)
    value = bytes((q, n)) + pt + bytes(_pad4(n))
    for r in refs:
        value += struct.pack(">I", r)
    if len(value) > _MAX_VALUE:
        raise BadValue("Track Info longer than %d bytes" % _MAX_VALUE)
    return value


def _encode_value(fid, v, msg):
    if fid == F_PRIORITY:
        return bytes((_uint(v, 8, "priority"), 0))
    if fid == F_REJECT_CAUSE:
        value = struct.pack(">H", _uint(v, 16, "reject_cause"))
        if msg.reject_text is not None:
            text = _utf8_encode(msg.reject_text, "reject_text", _MAX_REJECT_TEXT)
            if not text:
                raise BadValue("reject_text must be None or non-empty")
            value += text
        return value
    if fid == F_QUEUE_INFO:
        try:
            pos, prio = v
        except (TypeError, ValueError):
            raise BadValue("queue_info must be (position, priority)")
        return bytes((_uint(pos, 8, "queue position"), _uint(prio, 8, "queue priority")))
    if fid in _TEXT_FIELDS:
        return _utf8_encode(v, FIELD_ATTRS[fid], _MAX_VALUE)
    if fid == F_PERMISSION:
        return struct.pack(">H", _enum(v, 1, "permission"))
    if fid == F_SOURCE:
        return struct.pack(">H", _enum(v, 3, "source"))
    if fid == F_TRACK_INFO:
        return _encode_track_info(v)
    if fid == F_MESSAGE_TYPE:
        return bytes((_uint(v, 8, "msg_type"), 0))
    if fid == F_SSRC:
        return struct.pack(">IH", _uint(v, 32, "ssrc_field"), 0)
    # duration, queue size, sequence number, floor indicator: plain 16-bit values
    return struct.pack(">H", _uint(v, 16, FIELD_ATTRS[fid]))


def encode(msg):
    """One RTCP APP "MCPT" packet for ``msg``. Raises BadValue for values the format cannot carry."""
    if not isinstance(msg, FloorMsg):
        raise BadValue("not a FloorMsg")
    kind = msg.kind
    if not isinstance(kind, int) or kind not in MESSAGE_NAMES:
        raise BadValue("unknown floor message subtype %r" % (kind,))
    subtype = kind
    if msg.ack_req:
        if kind not in ACK_KINDS:
            raise BadValue("%s cannot ask for a Floor Ack" % MESSAGE_NAMES[kind])
        subtype |= ACK_REQUESTED
    ssrc = _uint(msg.ssrc, 32, "ssrc")
    if msg.reject_text is not None and msg.reject_cause is None:
        raise BadValue("reject_text without reject_cause")
    parts = []
    for fid in _FULL_ORDER[kind]:
        v = getattr(msg, FIELD_ATTRS[fid])
        if v is not None:
            parts.append(_field(fid, _encode_value(fid, v, msg)))
    body = b"".join(parts)
    size = HEADER_LEN + len(body)
    if size > MAX_PACKET:
        raise Oversized("MCPT packet of %d bytes exceeds %d" % (size, MAX_PACKET))
    return struct.pack(">BBHI", 0x80 | subtype, PT_APP, size // 4 - 1, ssrc) + APP_NAME + body


def is_mcpt(pkt):
    """True when ``pkt`` starts like an RTCP APP packet named "MCPT" (no further checks, never raises)."""
    try:
        return (
            len(pkt) >= HEADER_LEN
            and pkt[0] >> 6 == RTCP_VERSION
            and pkt[1] == PT_APP
            and bytes(pkt[8:12]) == APP_NAME
        )
    except (TypeError, IndexError):
        return False


def _packet_size(buf, off, n):
    """Size in bytes of the RTCP packet at ``off``, after checking its version and that it fits."""
    if n - off < 4:
        raise Truncated("RTCP header cut short")
    if buf[off] >> 6 != RTCP_VERSION:
        raise BadVersion("RTCP version is not 2")
    size = (((buf[off + 2] << 8) | buf[off + 3]) + 1) * 4
    if off + size > n:
        raise Truncated("RTCP length field runs %d bytes past the buffer" % (off + size - n))
    return size


def _u16(buf, o):
    return (buf[o] << 8) | buf[o + 1]


def _decode_track_info(buf, o, n):
    if n < 2:
        raise BadValue("Track Info shorter than 2 bytes")
    q = buf[o]
    if q > 1:
        raise BadValue("Track Info queueing capability %d" % q)
    ptlen = buf[o + 1]
    refs_at = 2 + ptlen + _pad4(ptlen)
    if refs_at > n:
        raise BadValue("Track Info participant type overruns the field")
    if (n - refs_at) % 4:
        raise BadValue("Track Info participant references not a multiple of 4 bytes")
    pt = utf8_decode(buf[o + 2 : o + 2 + ptlen], "Track Info participant type")
    refs = struct.unpack_from(">" + "I" * ((n - refs_at) // 4), buf, o + refs_at)
    return TrackInfo(q, pt, refs)


def _decode_value(msg, fid, buf, o, n):
    want = _FIXED_LEN.get(fid)
    if want is not None and n != want:
        raise BadValue("%s field of %d bytes, expected %d" % (FIELD_ATTRS[fid], n, want))
    if fid == F_PRIORITY:
        msg.priority = buf[o]
    elif fid == F_REJECT_CAUSE:
        if n < 2:
            raise BadValue("Reject Cause shorter than 2 bytes")
        msg.reject_cause = _u16(buf, o)
        if n > 2:
            msg.reject_text = utf8_decode(buf[o + 2 : o + n], "reject_text")
    elif fid == F_QUEUE_INFO:
        msg.queue_info = (buf[o], buf[o + 1])
    elif fid in _TEXT_FIELDS:
        setattr(msg, FIELD_ATTRS[fid], utf8_decode(buf[o : o + n], FIELD_ATTRS[fid]))
    elif fid == F_PERMISSION:
        msg.permission = _enum(_u16(buf, o), 1, "permission")
    elif fid == F_SOURCE:
        msg.source = _enum(_u16(buf, o), 3, "source")
    elif fid == F_TRACK_INFO:
        msg.track_info = _decode_track_info(buf, o, n)
    elif fid == F_MESSAGE_TYPE:
        msg.msg_type = buf[o]
    elif fid == F_SSRC:
        msg.ssrc_field = struct.unpack_from(">I", buf, o)[0]
    else:
        setattr(msg, FIELD_ATTRS[fid], _u16(buf, o))


def _decode_app(buf, off, size):
    """The FloorMsg in the MCPT APP packet at buf[off:off+size] (framing already checked)."""
    b0 = buf[off]
    if b0 & 0x20:
        raise BadValue("MCPT packet has the padding bit set")
    if buf[off + 1] != PT_APP:
        raise BadValue("RTCP packet type %d is not APP (204)" % buf[off + 1])
    if size < HEADER_LEN:
        raise Truncated("APP packet shorter than 12 bytes")
    if buf[off + 8 : off + 12] != APP_NAME:
        raise BadValue("APP name is not MCPT")
    kind = b0 & 0x0F
    if kind not in MESSAGE_NAMES:
        raise BadValue("unknown floor message subtype %d" % kind)
    ack = bool(b0 & ACK_REQUESTED)
    if ack and kind not in ACK_KINDS:
        raise BadValue("%s cannot ask for a Floor Ack" % MESSAGE_NAMES[kind])
    msg = FloorMsg(kind, struct.unpack_from(">I", buf, off + 4)[0], ack)
    pos = off + HEADER_LEN
    end = off + size
    seen = 0
    nknown = len(FIELD_ATTRS)
    while pos < end:
        fid = buf[pos]
        if fid >= 192:
            if end - pos < 3:
                raise Truncated("field header cut short")
            hl = 3
            n = _u16(buf, pos + 1)
        else:
            if end - pos < 2:
                raise Truncated("field header cut short")
            hl = 2
            n = buf[pos + 1]
        step = hl + n
        step += _pad4(step)
        if pos + step > end:
            raise Truncated("field %d overruns the packet" % fid)
        if fid < nknown:
            bit = 1 << fid
            if seen & bit:
                raise BadValue("field %d appears twice" % fid)
            seen |= bit
            _decode_value(msg, fid, buf, pos + hl, n)
        pos += step
    return msg


def decode(pkt):
    """The FloorMsg in one RTCP APP "MCPT" packet that fills ``pkt`` exactly."""
    n = len(pkt)
    if n > MAX_PACKET:
        raise Oversized("packet of %d bytes exceeds %d" % (n, MAX_PACKET))
    buf = bytes(pkt)
    size = _packet_size(buf, 0, n)
    if size != n:
        raise BadValue("%d bytes after the APP packet" % (n - size))
    return _decode_app(buf, 0, size)


def decode_compound(buf):
    """FloorMsgs of the MCPT APP packets in an RTCP compound packet; other RTCP packets are skipped."""
    n = len(buf)
    if n > MAX_PACKET:
        raise Oversized("packet of %d bytes exceeds %d" % (n, MAX_PACKET))
    if n == 0:
        raise Truncated("empty RTCP packet")
    buf = bytes(buf)
    out = []
    off = 0
    while off < n:
        size = _packet_size(buf, off, n)
        if buf[off + 1] == PT_APP:
            if size < HEADER_LEN:
                raise Truncated("APP packet shorter than 12 bytes")
            if buf[off + 8 : off + 12] == APP_NAME:
                out.append(_decode_app(buf, off, size))
        off += size
    return out
