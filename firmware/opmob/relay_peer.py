"""One relay-to-relay link as its own sans-I/O state machine: handshake, keys, keep-alive, its
transactions (docs/relay.md "Links", docs/protocol.md §6.5, §8.4).

A ``Peer`` knows nothing of groups, devices or the relay around it. It is fed bytes and time and
answers with bytes, deadlines and its state; the relay (relay_link.py) routes datagrams to it,
answers retransmitted HELLO/AUTH from its response cache and, when the peer goes up or down,
attaches or releases groups. Tested alone on bytes and time in tests/fw/test_relay_peer.py.

    p = Peer(lcfg, me, addr, rand, srtp_cls, keepalive_ms, expiry_s, now)
    p.hello(now) -> bytes                        initiator: LINK_HELLO (retransmitted by p.poll)
    p.challenge(now, hello_msg, sid) -> bytes    responder: LINK_CHALLENGE to a verified HELLO
    p.on_challenge(now, challenge_msg) -> bytes | None    initiator: LINK_AUTH, or None (refused)
    p.auth_ok(sid, auth_msg) -> bool             responder: the AUTH proves the key
    p.accept(now, addr, sid, auth_msg) -> bytes  responder: LINK_ACK; call opened() next
    p.opened(now)  p.reset(now)                  up; down (the initiator retries with back-off)
    p.request(now, mtype, ctx=None, max_sends=None, **fields) -> bytes
    p.on_response(now, msg) -> Transaction | None
    p.poll(now) -> (resend [bytes], lost: bool, silent: bool, hello: bytes | None, keepalive: bool)
    p.next_deadline() -> int | None

The initiator (the side with host/port) sends LINK_HELLO until answered; the responder accepts it
only from its configured peer (the relay checks that) and proves the link key in LINK_CHALLENGE;
the initiator proves it in LINK_AUTH; LINK_ACK opens the link. Signalling is then protected with
the link keys, SRTP/SRTCP with the hop keys ``authvec.link_keys`` derives (up = initiator ->
responder). No answer, or a challenge whose proof fails, and the initiator tries again after
RETRY_MIN, doubling up to RETRY_MAX. Either side declares the link down after
LINK_SILENT_KEEPALIVES and a half keep-alive intervals without an authenticated datagram.
"""

import struct

from opmob import authvec, sig, txn
from opmob.errors import AuthFailed
from opmob.ticks import due, earliest, tadd

AGREEMENT = 0  # links inside one system: no roaming agreement
GRANTS = 0
LINK_DOWN = "down"  # responder: waiting for the peer's LINK_HELLO
LINK_CONNECTING = "connecting"  # initiator: LINK_HELLO/LINK_AUTH in flight or waiting to retry
LINK_UP = "up"
RETRY_MIN = 1000  # ms before the first re-HELLO after a failure; doubles up to RETRY_MAX
RETRY_MAX = 30000  # ms
LINK_SILENT_KEEPALIVES = 3  # keep-alive intervals without a word before a link is declared down
LINK_STREAMS = 1024  # SRTP streams per link context: two per attached group and direction

LINK_COUNTERS = (
    "hellos",
    "challenges",
    "auth_failed",
    "ups",
    "downs",
    "keepalives",
    "attaches",
    "detaches",
    "voice_in",
    "voice_out",
    "voice_payload_out",
    "floor_in",
    "floor_out",
    "transcode_errors",
    "errors",
)


class Peer:
    __slots__ = (
        "cfg",
        "peer",
        "me",
        "rand",
        "srtp_cls",
        "keepalive_ms",
        "expiry_s",
        "key_log",
        "state",
        "sid",
        "addr",
        "tx",
        "rx",
        "srtp_tx",
        "srtp_rx",
        "txns",
        "window",
        "pend",
        "hello_sent",
        "retry_at",
        "backoff",
        "last_seen",
        "ka_at",
        "att",
        "served",
        "counters",
    )

    def __init__(self, lcfg, me, addr, rand, srtp_cls, keepalive_ms, expiry_s, now, key_log=None):
        """``lcfg``: the [[link]] (peer, psk, initiator ...); ``me``: this relay's identity;
        ``rand(n)``: n random bytes; ``srtp_cls(key, salt, max_streams=n)``: the SRTP contexts;
        ``key_log(label, identity, ssrc, key, salt)`` or None (relay.py, ``key_log``)."""
        self.cfg = lcfg
        self.peer = lcfg.peer
        self.me = me
        self.rand = rand
        self.srtp_cls = srtp_cls
        self.keepalive_ms = keepalive_ms
        self.expiry_s = expiry_s
        self.key_log = key_log
        self.state = LINK_CONNECTING if lcfg.initiator else LINK_DOWN
        self.sid = 0
        self.addr = addr
        self.tx = self.rx = self.srtp_tx = self.srtp_rx = None
        self.txns = None
        self.window = None
        self.pend = None  # responder: (sid, nonce_i, nonce_r, keys, tx, rx) of an unanswered challenge
        self.hello_sent = None  # initiator: (txid, nonce_i) of the LINK_HELLO in flight
        self.retry_at = now if lcfg.initiator else None
        self.backoff = RETRY_MIN
        self.last_seen = 0
        self.ka_at = None
        self.att = {}  # group -> LinkGroup this relay participates in over the link (relay_link.py)
        self.served = {}  # group -> LinkGroup the peer participates in, controlled here
        c = {}
        for k in LINK_COUNTERS:
            c[k] = 0
        self.counters = c

    @property
    def up(self):
        return self.state == LINK_UP

    @property
    def pid(self):
        return "link:" + self.peer

    @property
    def silent_ms(self):
        return (2 * LINK_SILENT_KEEPALIVES + 1) * self.keepalive_ms // 2

    def _u32(self):
        return struct.unpack(">I", self.rand(4))[0]

    def _log_keys(self, keys, tx_key, tx_salt, rx_key, rx_salt):
        kl = self.key_log
        if kl is not None:
            kl("link_tx", self.peer, 0, bytes(tx_key), bytes(tx_salt))
            kl("link_rx", self.peer, 0, bytes(rx_key), bytes(rx_salt))
            # The link's signalling keys as a device's are logged ("key" the AES key, "salt" the
            # MAC key), so a decrypted lab capture shows the LINK_* messages' fields too.
            kl("sig_link_up", self.peer, 0, bytes(keys.sig_up_enc), bytes(keys.sig_up_mac))
            kl("sig_link_down", self.peer, 0, bytes(keys.sig_down_enc), bytes(keys.sig_down_mac))

    # --- timers -------------------------------------------------------------------------------------

    def next_deadline(self):
        d = earliest(self.retry_at, self.ka_at)
        if self.txns is not None:
            d = earliest(d, self.txns.deadline())
        if self.state == LINK_UP:
            d = earliest(d, tadd(self.last_seen, self.silent_ms))
        return d

    def poll(self, now):
        """What is due at ``now``, in this order: retransmissions (and a handshake that ran out
        of attempts: back-off), silence (the caller takes the link down, then calls ``reset``), a
        new HELLO, the keep-alive tick (the initiator's KEEPALIVE is among the returned bytes;
        ``keepalive`` True tells the caller to sync its groups)."""
        resend = []
        if self.txns is not None:
            sent, dead = self.txns.poll(now)
            resend.extend(sent)
            for t in dead:
                if t.type in (sig.LINK_HELLO, sig.LINK_AUTH) and not self.up:
                    self.retry(now)
        silent = self.up and due(now, tadd(self.last_seen, self.silent_ms))
        return resend, silent

    def tick(self, now):
        """After ``poll`` (and a ``reset`` for silence): the HELLO due, and whether the keep-alive
        tick came (the initiator's KEEPALIVE is then in ``out``). Returns (out bytes, ticked)."""
        out = []
        if self.retry_at is not None and due(now, self.retry_at):
            out.append(self.hello(now))
        ticked = False
        if self.up and self.ka_at is not None and due(now, self.ka_at):
            self.ka_at = tadd(now, self.keepalive_ms)
            if self.cfg.initiator:
                out.append(self.request(now, sig.KEEPALIVE, max_sends=1))
            ticked = True
        return out, ticked

    def retry(self, now):
        self.hello_sent = None
        self.txns = None
        self.state = LINK_CONNECTING
        self.retry_at = tadd(now, self.backoff)
        self.backoff = min(RETRY_MAX, self.backoff * 2)

    # --- handshake ------------------------------------------------------------------------------------

    def hello(self, now):
        self.retry_at = None
        self.state = LINK_CONNECTING
        nonce = self.rand(authvec.NONCE_LEN)
        self.txns = txn.Transactions(self._u32(), answers=sig.answers)
        txid = self.txns.new_txid()
        m = sig.SigMsg(
            sig.LINK_HELLO, txid=txid, relay=self.me, peer=self.peer, nonce=nonce, agreement=AGREEMENT
        )
        data = sig.encode(m)
        self.txns.start(now, data)
        self.hello_sent = (txid, nonce)
        self.counters["hellos"] += 1
        return data

    def challenge(self, now, msg, sid, nonce_r):
        """Responder: LINK_CHALLENGE for the checked LINK_HELLO ``msg``, under session ``sid``
        (allocated by the relay among its own) with our nonce ``nonce_r``."""
        self.counters["hellos"] += 1
        psk = self.cfg.psk
        proof = authvec.link_proof(psk, True, self.peer, self.me, msg.nonce, nonce_r, AGREEMENT)
        keys = authvec.link_keys(psk, self.peer, self.me, msg.nonce, nonce_r, AGREEMENT)
        tx, rx = sig.keys(keys, True)
        self.pend = (sid, msg.nonce, nonce_r, keys, tx, rx)
        self.counters["challenges"] += 1
        ch = sig.SigMsg(
            sig.LINK_CHALLENGE,
            txid=msg.txid,
            session=sid,
            down=True,
            relay=self.me,
            nonce=nonce_r,
            proof=proof,
        )
        return sig.encode(ch)

    def answers_hello(self, txid):
        """Initiator: ``txid`` is that of the LINK_HELLO in flight (a LINK_CHALLENGE's)."""
        return self.hello_sent is not None and self.hello_sent[0] == txid

    def on_challenge(self, now, msg):
        """Initiator: LINK_AUTH for a LINK_CHALLENGE that proves the key, else None (counted, and
        a retry is scheduled: nothing is sent that could help a guesser)."""
        nonce_i = self.hello_sent[1]
        self.hello_sent = None
        psk = self.cfg.psk
        try:
            if msg.relay != self.peer:
                raise AuthFailed("challenge from another relay")
            authvec.check_link_proof(psk, True, self.me, self.peer, nonce_i, msg.nonce, AGREEMENT, msg.proof)
        except AuthFailed:
            self.counters["auth_failed"] += 1
            self.retry(now)
            return None
        keys = authvec.link_keys(psk, self.me, self.peer, nonce_i, msg.nonce, AGREEMENT)
        self.tx, self.rx = sig.keys(keys, False)
        self.sid = msg.session
        cls = self.srtp_cls
        self.srtp_tx = cls(keys.srtp_up_key, keys.srtp_up_salt, max_streams=LINK_STREAMS)
        self.srtp_rx = cls(keys.srtp_down_key, keys.srtp_down_salt, max_streams=LINK_STREAMS)
        self._log_keys(keys, keys.srtp_up_key, keys.srtp_up_salt, keys.srtp_down_key, keys.srtp_down_salt)
        proof = authvec.link_proof(psk, False, self.me, self.peer, nonce_i, msg.nonce, AGREEMENT)
        return self.request(now, sig.LINK_AUTH, proof=proof)

    def auth_key(self, sid):
        """Responder: the key a LINK_AUTH under ``sid`` is read with (the pending challenge's)."""
        p = self.pend
        if p is not None and p[0] == sid:
            return p[5]
        return None

    def auth_ok(self, sid, msg):
        """Responder: the LINK_AUTH ``msg`` answers our pending challenge and proves the key."""
        p = self.pend
        if p is None or p[0] != sid:
            return False
        try:
            authvec.check_link_proof(
                self.cfg.psk, False, self.peer, self.me, p[1], p[2], AGREEMENT, msg.proof
            )
        except AuthFailed:
            self.counters["auth_failed"] += 1
            return False
        return True

    def accept(self, now, addr, sid, msg):
        """Responder, after ``auth_ok`` (and taking a live link down first): the new session's
        keys, and its LINK_ACK. The caller calls ``opened`` next."""
        p = self.pend
        self.pend = None
        keys = p[3]
        self.sid = sid
        self.tx, self.rx = p[4], p[5]
        cls = self.srtp_cls
        self.srtp_rx = cls(keys.srtp_up_key, keys.srtp_up_salt, max_streams=LINK_STREAMS)
        self.srtp_tx = cls(keys.srtp_down_key, keys.srtp_down_salt, max_streams=LINK_STREAMS)
        self._log_keys(keys, keys.srtp_down_key, keys.srtp_down_salt, keys.srtp_up_key, keys.srtp_up_salt)
        self.window = txn.ReplayWindow()
        self.window.accept(msg.txid)
        self.txns = txn.Transactions(self._u32(), answers=sig.answers)
        self.addr = addr
        ack = msg.reply(
            sig.LINK_ACK,
            keepalive=max(1, min(0xFFFF, self.keepalive_ms // 1000)),
            expiry=self.expiry_s,
            grants=GRANTS,
        )
        return sig.encode(ack, self.tx)

    def opened(self, now):
        self.state = LINK_UP
        self.last_seen = now
        self.backoff = RETRY_MIN
        self.retry_at = None
        self.ka_at = tadd(now, self.keepalive_ms)
        self.counters["ups"] += 1

    def reset(self, now):
        """The link is down (silence, a restart of the peer, its DEREGISTER): keys and session go;
        the initiator says HELLO again after its back-off."""
        self.counters["downs"] += 1
        self.state = LINK_DOWN
        self.sid = 0
        self.tx = self.rx = self.srtp_tx = self.srtp_rx = self.window = None
        self.txns = None
        self.ka_at = None
        if self.cfg.initiator:
            self.retry(now)

    # --- requests -------------------------------------------------------------------------------------

    def request(self, now, mtype, ctx=None, max_sends=None, **fields):
        m = sig.SigMsg(
            mtype, txid=self.txns.new_txid(), session=self.sid, down=not self.cfg.initiator, **fields
        )
        data = sig.encode(m, self.tx)
        self.txns.start(now, data, ctx=ctx, max_sends=max_sends)
        return data

    def on_response(self, now, msg):
        """The Transaction ``msg`` answers, or None (unsolicited: the caller drops it)."""
        if self.txns is None:
            return None
        t = self.txns.on_response(msg.txid, msg.type)
        if t is not None:
            self.last_seen = now
        return t

    def fresh_request(self, now, addr, txid):
        """A protected request from the peer: False when replayed; else it counts as a word."""
        if not self.window.fresh(txid):
            return False
        self.window.accept(txid)
        self.last_seen = now
        self.addr = addr
        return True


Link = Peer  # the name relay_link.py used
