"""Authentication vectors and key derivation: pure functions, sans-I/O.

The home registry holds each device's 128-bit secret K and makes single-use *vectors*
``(vid, RAND, XRES, KS, AUTN)``; a serving relay (home or visited) challenges the device with
``RAND, AUTN, vid``, compares the device's RES with XRES and takes KS as the session key, never
learning K. AUTN lets the device check that the challenge was made by its home, and the vector id
(a counter the home raises for each vector, checked by the device's ReplayWindow) that it is new:
the pattern of UMTS/LTE AKA (3GPP TS 33.102) with HMAC-SHA256 in place of MILENAGE.

Every value is ``PRF(key, label, data) = HMAC-SHA256(key, "OpMob v1 " || label || 0x00 || data)``
truncated, with a distinct label per use; labels hold no 0x00 and every ``data`` is fixed-length
fields or length-prefixed identities, so no two uses can feed HMAC the same input. Derivation
tables and vectors: docs/protocol.md, "Keys".
"""

import struct

from opmob.compat import HmacSha256
from opmob.errors import AuthFailed, BadValue

K_LEN = 16
RAND_LEN = 16
RES_LEN = 16
KS_LEN = 16
AUTN_LEN = 16
AUTS_LEN = 16
NONCE_LEN = 16
PROOF_LEN = 16
SRTP_KEY_LEN = 16
SRTP_SALT_LEN = 14
SIG_MAC_LEN = 32
SIG_ENC_LEN = 16
MIN_PSK_LEN = 16

_PREFIX = b"OpMob v1 "


def prf(key, label, data):
    """HMAC-SHA256(key, "OpMob v1 " || label || 0x00 || data): 32 bytes."""
    return HmacSha256(key).digest(_PREFIX, label, b"\x00", data)


def ct_equal(a, b):
    """Equality whose time depends on the lengths only, not on where the bytes differ."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def _need(v, n, what):
    if not isinstance(v, (bytes, bytearray)) or len(v) != n:
        raise BadValue("%s must be %d bytes" % (what, n))


def _u32(n, what):
    if not isinstance(n, int) or not 0 <= n <= 0xFFFFFFFF:
        raise BadValue("%s must be a 32-bit unsigned integer" % what)
    return struct.pack(">I", n)


def _lp(ident):
    b = ident.encode() if isinstance(ident, str) else bytes(ident)
    if not 0 < len(b) < 256:
        raise BadValue("identity length out of range")
    return bytes((len(b),)) + b


# --- the vector: home registry side ---------------------------------------------------------


def xres(k, rand):
    _need(k, K_LEN, "K")
    _need(rand, RAND_LEN, "RAND")
    return prf(k, b"RES", rand)[:RES_LEN]


def session_key(k, rand):
    _need(k, K_LEN, "K")
    _need(rand, RAND_LEN, "RAND")
    return prf(k, b"KS", rand)[:KS_LEN]


def autn(k, rand, vid):
    _need(k, K_LEN, "K")
    _need(rand, RAND_LEN, "RAND")
    return prf(k, b"AUTN", rand + _u32(vid, "vid"))[:AUTN_LEN]


def make_vector(k, rand, vid):
    """One authentication vector ``(vid, rand, xres, ks, autn)``; RAND must be fresh random."""
    return (vid, bytes(rand), xres(k, rand), session_key(k, rand), autn(k, rand, vid))


# --- the device side ------------------------------------------------------------------------


def device_respond(k, rand, autn_, vid):
    """Check a challenge's AUTN and answer it: returns ``(res, ks)``.

    Raises AuthFailed when AUTN was not made with this device's K (a rogue relay, or a vector for
    someone else). Freshness of ``vid`` is the caller's ReplayWindow's job, so that a stale but
    genuine challenge can be answered with AUTH_FAILURE / sync-failure instead.
    """
    _need(autn_, AUTN_LEN, "AUTN")
    if not ct_equal(autn(k, rand, vid), autn_):
        raise AuthFailed("AUTN does not verify: challenge not made by the home registry")
    return xres(k, rand), session_key(k, rand)


def auts(k, rand, highest_vid):
    """Sync-failure token: proves to the home that the device's highest accepted vid is this."""
    _need(k, K_LEN, "K")
    _need(rand, RAND_LEN, "RAND")
    return prf(k, b"AUTS", rand + _u32(highest_vid, "vid"))[:AUTS_LEN]


def check_auts(k, rand, highest_vid, auts_):
    _need(auts_, AUTS_LEN, "AUTS")
    if not ct_equal(auts(k, rand, highest_vid), auts_):
        raise AuthFailed("AUTS does not verify")


def control_proof(k, identity, action, seq):
    """Home-registry proof on a DEVICE_CONTROL command: only the holder of K can revive or kill."""
    _need(k, K_LEN, "K")
    if not isinstance(action, int) or not 0 <= action <= 255:
        raise BadValue("action must be 0..255")
    return prf(k, b"CTRL", _lp(identity) + bytes((action,)) + _u32(seq, "seq"))[:PROOF_LEN]


def check_control_proof(k, identity, action, seq, proof):
    _need(proof, PROOF_LEN, "proof")
    if not ct_equal(control_proof(k, identity, action, seq), proof):
        raise AuthFailed("device control proof does not verify")


# --- session keys ---------------------------------------------------------------------------


class SessionKeys:
    """Keys of one session, each direction its own: *up* is device -> network (or link initiator
    -> responder), *down* the reverse. Separate directions mean a message can never be reflected
    back to its sender, and SRTP keystreams of the two directions can never collide."""

    __slots__ = (
        "sig_up_mac",
        "sig_up_enc",
        "sig_down_mac",
        "sig_down_enc",
        "srtp_up_key",
        "srtp_up_salt",
        "srtp_down_key",
        "srtp_down_salt",
    )

    def __init__(self, **keys):
        for name in SessionKeys.__slots__:
            setattr(self, name, keys[name])

    def items(self):
        return [(n, getattr(self, n)) for n in SessionKeys.__slots__]

    def __eq__(self, other):
        return isinstance(other, SessionKeys) and self.items() == other.items()

    def __repr__(self):
        return "SessionKeys(<secret>)"


_DERIVE = (
    ("sig_up_mac", b"SIG UP MAC", SIG_MAC_LEN),
    ("sig_up_enc", b"SIG UP ENC", SIG_ENC_LEN),
    ("sig_down_mac", b"SIG DOWN MAC", SIG_MAC_LEN),
    ("sig_down_enc", b"SIG DOWN ENC", SIG_ENC_LEN),
    ("srtp_up_key", b"SRTP UP KEY", SRTP_KEY_LEN),
    ("srtp_up_salt", b"SRTP UP SALT", SRTP_SALT_LEN),
    ("srtp_down_key", b"SRTP DOWN KEY", SRTP_KEY_LEN),
    ("srtp_down_salt", b"SRTP DOWN SALT", SRTP_SALT_LEN),
)


def derive(ks, rand, nonce):
    """Session keys from session key KS, the network's RAND and the device's REGISTER nonce.

    The device's nonce makes every registration's keys distinct even if a vector were ever used
    twice (a registry restored from backup): SRTP would otherwise restart the same keystream.
    """
    _need(ks, KS_LEN, "KS")
    _need(rand, RAND_LEN, "RAND")
    _need(nonce, NONCE_LEN, "nonce")
    ctx = bytes(rand) + bytes(nonce)
    h = HmacSha256(ks)
    keys = {}
    for name, label, n in _DERIVE:
        keys[name] = h.digest(_PREFIX, label, b"\x00", ctx)[:n]
    return SessionKeys(**keys)


# --- relay-to-relay links -------------------------------------------------------------------


def _link_transcript(initiator, responder, nonce_i, nonce_r, agreement):
    _need(nonce_i, NONCE_LEN, "initiator nonce")
    _need(nonce_r, NONCE_LEN, "responder nonce")
    return _lp(initiator) + _lp(responder) + bytes(nonce_i) + bytes(nonce_r) + _u32(agreement, "agreement")


def _psk(psk):
    if not isinstance(psk, (bytes, bytearray)) or len(psk) < MIN_PSK_LEN:
        raise BadValue("link key must be at least %d bytes" % MIN_PSK_LEN)


def link_proof(psk, responder_side, initiator, responder, nonce_i, nonce_r, agreement):
    """Proof of the link key by the responder (LINK_CHALLENGE) or the initiator (LINK_AUTH).

    Distinct labels per side stop one side's proof from being replayed as the other's; both
    identities, both nonces and the roaming agreement id are bound in.
    """
    _psk(psk)
    label = b"LINK PROOF R" if responder_side else b"LINK PROOF I"
    t = _link_transcript(initiator, responder, nonce_i, nonce_r, agreement)
    return prf(psk, label, t)[:PROOF_LEN]


def check_link_proof(psk, responder_side, initiator, responder, nonce_i, nonce_r, agreement, proof):
    _need(proof, PROOF_LEN, "proof")
    want = link_proof(psk, responder_side, initiator, responder, nonce_i, nonce_r, agreement)
    if not ct_equal(want, proof):
        raise AuthFailed("link proof does not verify")


def link_keys(psk, initiator, responder, nonce_i, nonce_r, agreement):
    """Session keys of an interconnect link: *up* is initiator -> responder."""
    _psk(psk)
    t = _link_transcript(initiator, responder, nonce_i, nonce_r, agreement)
    kl = prf(psk, b"LINK KS", t)[:KS_LEN]
    return derive(kl, nonce_r, nonce_i)
