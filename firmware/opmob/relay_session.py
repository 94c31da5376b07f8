"""One device's registration at a relay, and how it is written to the store.

A ``Session`` lives from the CHALLENGE (state ``challenged``) to the end of the registration. Its
keys are in memory only: a registration restored after a restart comes back ``stale`` (known
address, SSRC and affiliations, no keys) until the device registers again. See docs/relay.md.
"""

import binascii

from opmob import sig, srtp, txn
from opmob.sig import AFF_SCAN, AFF_SELECTED

CHALLENGED = "challenged"  # CHALLENGE sent, waiting for AUTH_RESPONSE
REGISTERED = "registered"
STUNNED = "stunned"  # registered, but refused everything except keep-alive and de-registration
STALE = "stale"  # restored from the store after a restart: no keys until it registers again
CLOSED = "closed"  # ended; kept only while a request to it is in flight (a kill)

# SRTP streams a listener's downlink context may hold: one per talker SSRC heard and one per floor
# server. Streams are never evicted (srtp.py), and a device re-registers, with fresh contexts, well
# within its expiry, so this is a bound against misuse, not a working limit.
DOWN_STREAMS = 1024
UP_STREAMS = 4  # a device sends with its one assigned SSRC


class Drop(Exception):
    """A datagram the relay does not act on. ``reason`` names its counter (``drop_<reason>``);
    ``out`` is what is sent all the same (an open ERROR, a Floor Revoke)."""

    def __init__(self, reason, out=None):
        super().__init__(reason)
        self.reason = reason
        self.out = out


class Session:
    __slots__ = (
        "identity",
        "sid",
        "addr",
        "state",
        "ssrc",
        "key_id",
        "caps",
        "affs",
        "floor_group",
        "created",
        "last_seen",
        "expires_at",
        "tx",
        "rx",
        "srtp_rx",
        "srtp_tx",
        "window",
        "txns",
        "vector",
        "nonce",
        "req_affs",
        "keys",
        "revive_pending",
        "ctrl_txid",
        "down_seq",
    )

    def __init__(self, identity, sid, addr, now):
        self.identity = identity
        self.sid = sid
        self.addr = addr
        self.state = CHALLENGED
        self.ssrc = None
        self.key_id = 0
        self.caps = 0
        self.affs = []  # [group, priority, flags], in the order they were made
        self.floor_group = None  # the group its last Floor Request went to
        self.created = now
        self.last_seen = now
        self.expires_at = None
        self.tx = None  # SigKey, relay -> device
        self.rx = None  # SigKey, device -> relay
        self.srtp_rx = None  # uplink: unprotect what the device sends
        self.srtp_tx = None  # downlink: protect what the device hears
        self.window = txn.ReplayWindow()  # txids of the device's protected requests
        self.txns = None  # requests the relay has in flight to the device
        self.vector = None  # (vid, rand, xres, ks, autn) while challenged
        self.nonce = None
        self.req_affs = None  # affiliations asked for in REGISTER, applied on success
        self.keys = None  # authvec.SessionKeys while challenged; dropped once SRTP is keyed
        self.revive_pending = False  # revived, but the device has not acknowledged it yet
        self.ctrl_txid = None  # the DEVICE_CONTROL in flight to the device, if any
        self.down_seq = {}  # talker SSRC -> [offset, last sequence number sent to this listener]

    def __repr__(self):
        return "Session(%s, sid=%d, %s)" % (self.identity, self.sid, self.state)

    @property
    def live(self):
        """Registered with keys (active or stunned)."""
        return self.state == REGISTERED or self.state == STUNNED

    def set_challenge_keys(self, keys):
        self.keys = keys
        self.tx, self.rx = sig.keys(keys, True)

    def key_srtp(self, cls=srtp.SrtpSession):
        """Make the SRTP/SRTCP contexts (of class ``cls``: the pure twin or the C extension's) from
        the session keys, then forget the key material."""
        k = self.keys
        self.srtp_rx = cls(k.srtp_up_key, k.srtp_up_salt, max_streams=UP_STREAMS)
        self.srtp_tx = cls(k.srtp_down_key, k.srtp_down_salt, max_streams=DOWN_STREAMS)
        self.keys = None
        self.vector = None
        self.nonce = None

    def drop_keys(self):
        self.tx = self.rx = self.srtp_rx = self.srtp_tx = self.keys = self.vector = None
        self.down_seq = {}

    # --- affiliations ---------------------------------------------------------------------------

    def aff(self, group):
        for a in self.affs:
            if a[0] == group:
                return a
        return None

    def groups(self):
        return [a[0] for a in self.affs]

    def talk_group(self):
        """The group its push-to-talk talks on: the one marked SELECTED, else the first that is
        not a scan group, else the first."""
        first = None
        for a in self.affs:
            if a[2] & AFF_SELECTED:
                return a[0]
            if first is None and not a[2] & AFF_SCAN:
                first = a[0]
        if first is None and self.affs:
            first = self.affs[0][0]
        return first

    # --- the store ------------------------------------------------------------------------------

    def registration_record(self):
        return {
            "session": self.sid,
            "ssrc": self.ssrc,
            "key_id": self.key_id,
            "addr": addr_to_json(self.addr),
        }

    def affiliation_record(self):
        return {"groups": [[a[0], a[1], a[2]] for a in self.affs]}


def addr_to_json(addr):
    """A driver's address as JSON: tuples become lists, bytes (a raw sockaddr) hex in a dict."""
    if isinstance(addr, (tuple, list)):
        return [addr_to_json(x) for x in addr]
    if isinstance(addr, (bytes, bytearray)):
        return {"hex": binascii.hexlify(addr).decode()}
    if addr is None or isinstance(addr, (str, int)):
        return addr
    raise ValueError("address of type %s cannot be stored" % type(addr).__name__)


def addr_from_json(v):
    if isinstance(v, list):
        return tuple(addr_from_json(x) for x in v)
    if isinstance(v, dict):
        h = v.get("hex")
        if not isinstance(h, str):
            raise ValueError("bad stored address")
        return binascii.unhexlify(h)
    if v is None or isinstance(v, (str, int)):
        return v
    raise ValueError("bad stored address")


def addr_text(addr):
    """An address for status output."""
    if isinstance(addr, tuple) and len(addr) == 2:
        host, port = addr
        if isinstance(host, str) and ":" in host:
            return "[%s]:%s" % (host, port)
        return "%s:%s" % (host, port)
    if isinstance(addr, (bytes, bytearray)):
        return binascii.hexlify(addr).decode()
    return str(addr)


def _u32(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF


def parse_registration(identity, reg, aff, max_affiliations):
    """(sid, ssrc, key_id, addr, affs) from stored records; ValueError when they do not hold up."""
    if not sig.valid_identity(identity) or not isinstance(reg, dict):
        raise ValueError("bad registration record")
    sid = reg.get("session")
    ssrc = reg.get("ssrc")
    key_id = reg.get("key_id")
    if not _u32(sid) or sid == 0 or not _u32(ssrc) or not _u32(key_id) or key_id > 0xFFFF:
        raise ValueError("bad registration record")
    addr = addr_from_json(reg.get("addr"))
    affs = []
    groups = (aff or {}).get("groups", [])
    if not isinstance(groups, list) or len(groups) > max_affiliations:
        raise ValueError("bad affiliation record")
    for e in groups:
        if not isinstance(e, list) or len(e) != 3 or not sig.valid_identity(e[0]):
            raise ValueError("bad affiliation record")
        for v in e[1:]:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255:
                raise ValueError("bad affiliation record")
        affs.append([e[0], e[1], e[2]])
    return sid, ssrc, key_id, addr, affs
