"""Test helpers for opmob.sig (both runtimes): SigMsg <-> JSON for tests/vectors/sig_v1.json,
and seeded random valid messages.

Bytes are hex strings; compound values are lists in their tuple order.
"""

from fwtest import tohex, unhex
from opmob import sig

TYPES = {}
for _t, _m in sig.MESSAGES.items():
    TYPES[_m[0]] = _t


def value_to_json(kind, v):
    if kind in (sig.K_IDENT, sig.K_TEXT, sig.K_U8, sig.K_U16, sig.K_U32):
        return v
    if kind == sig.K_B16:
        return tohex(v)
    if kind == sig.K_AFF:
        return [v[0], v[1], v[2]]
    if kind == sig.K_RESULT:
        return [v[0], v[1]]
    if kind == sig.K_VECTOR:
        return [v[0], tohex(v[1]), tohex(v[2]), tohex(v[3]), tohex(v[4])]
    if kind == sig.K_RESYNC:
        return [tohex(v[0]), v[1], tohex(v[2])]
    if kind == sig.K_LOCATION:
        return list(v)
    if kind == sig.K_ADDR:
        return [tohex(v[0]), v[1]]
    raise ValueError(kind)


def value_from_json(kind, j):
    if kind in (sig.K_IDENT, sig.K_TEXT, sig.K_U8, sig.K_U16, sig.K_U32):
        return j
    if kind == sig.K_B16:
        return unhex(j)
    if kind == sig.K_AFF:
        return (j[0], j[1], j[2])
    if kind == sig.K_RESULT:
        return (j[0], j[1])
    if kind == sig.K_VECTOR:
        return (j[0], unhex(j[1]), unhex(j[2]), unhex(j[3]), unhex(j[4]))
    if kind == sig.K_RESYNC:
        return (unhex(j[0]), j[1], unhex(j[2]))
    if kind == sig.K_LOCATION:
        return tuple(j)
    if kind == sig.K_ADDR:
        return (unhex(j[0]), j[1])
    raise ValueError(kind)


def _kind(attr):
    return sig.FIELDS[sig.FIELD_IDS[attr]][2]


def msg_to_json(m):
    fields = {}
    for attr, tlv, pres in sig.message_fields(m.type):
        v = m.fields().get(attr)
        if v is None:
            continue
        kind = sig.FIELDS[tlv][2]
        if pres in (sig.LIST, sig.LIST1):
            fields[attr] = [value_to_json(kind, x) for x in v]
        else:
            fields[attr] = value_to_json(kind, v)
    return {"type": m.name, "txid": m.txid, "session": m.session, "down": m.down, "fields": fields}


def msg_from_json(d):
    mtype = TYPES[d["type"]]
    lists = {}
    for attr, _tlv, pres in sig.message_fields(mtype):
        lists[attr] = pres in (sig.LIST, sig.LIST1)
    fields = {}
    for attr, j in d["fields"].items():
        kind = _kind(attr)
        if lists[attr]:
            fields[attr] = [value_from_json(kind, x) for x in j]
        else:
            fields[attr] = value_from_json(kind, j)
    return sig.SigMsg(mtype, txid=d["txid"], session=d["session"], down=d["down"], **fields)


def key_from_json(d):
    """The SigKey named by a vector's ``key`` entry ({"mac": hex, "enc": hex}), or None."""
    if not d:
        return None
    return sig.SigKey(unhex(d["mac"]), unhex(d["enc"]))


# --- seeded random messages (fwtest.Rng), for round-trip and fuzz tests ----------------------

_LOCAL = "abcdefghijklmnopqrstuvwxyz0123456789._-"
_SYSTEM = "abcdefghijklmnopqrstuvwxyz0123456789-"


def random_ident(r):
    local = "".join(_LOCAL[r.below(len(_LOCAL))] for _ in range(1 + r.below(24)))
    system = "".join(_SYSTEM[r.below(len(_SYSTEM))] for _ in range(1 + r.below(6)))
    return local + "@" + system


def random_value(r, kind, lo=None, hi=None):
    if kind == sig.K_IDENT:
        return random_ident(r)
    if kind == sig.K_B16:
        return r.bytes(16)
    if kind in (sig.K_U8, sig.K_U16, sig.K_U32):
        span = hi - lo + 1
        return lo + (r.u32() % span if span <= 0x100000000 else r.u32())
    if kind == sig.K_TEXT:
        return "".join(chr(0x20 + r.below(95)) for _ in range(r.below(40)))
    if kind == sig.K_AFF:
        return (random_ident(r), r.below(256), r.below(256))
    if kind == sig.K_RESULT:
        return (random_ident(r), r.below(256))
    if kind == sig.K_VECTOR:
        return (r.u32(), r.bytes(16), r.bytes(16), r.bytes(16), r.bytes(16))
    if kind == sig.K_RESYNC:
        return (r.bytes(16), r.u32(), r.bytes(16))
    if kind == sig.K_LOCATION:
        return (
            r.below(1800000001) - 900000000,
            r.below(3600000001) - 1800000000,
            r.below(65536),
            r.below(65536),
        )
    if kind == sig.K_ADDR:
        return (r.bytes(4 if r.below(2) else 16), 1 + r.below(65535))
    raise ValueError(kind)


def random_msg(r, mtype):
    """A valid SigMsg of ``mtype`` with random fields (optional ones present half the time)."""
    fields = {}
    for attr, tlv, pres in sig.message_fields(mtype):
        _n, _p, kind, lo, hi = sig.FIELDS[tlv]
        if pres in (sig.LIST, sig.LIST1):
            n = r.below(4) + (1 if pres == sig.LIST1 else 0)
            fields[attr] = [random_value(r, kind, lo, hi) for _ in range(n)]
        elif pres == sig.REQ or r.below(2):
            fields[attr] = random_value(r, kind, lo, hi)
    if mtype == sig.AUTH_FAILURE and fields["cause"] == sig.CAUSE_SYNC_FAILURE:
        fields["vid"] = r.u32()
        fields["auts"] = r.bytes(16)
    if mtype == sig.DEVICE_CONTROL and ("seq" in fields) != ("proof" in fields):
        fields.pop("seq", None)
        fields.pop("proof", None)
    return sig.SigMsg(mtype, txid=r.u32(), session=r.u32(), down=bool(r.below(2)), **fields)
