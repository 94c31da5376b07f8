"""Relay-to-relay links (the relay's links part, ``Relay.links``): docs/relay.md "Links", docs/protocol.md §6.5, §8.4, §8.5.

A configured ``[[link]]`` joins this relay to a peer relay of the same system. The initiator (the
side with host/port) sends LINK_HELLO until answered; the responder accepts it only from a
configured peer and proves the link key in LINK_CHALLENGE; the initiator proves it in LINK_AUTH;
LINK_ACK opens the link. Its signalling is then protected with the link keys, its SRTP/SRTCP with
the hop keys derived from the link session key as a device session's are (``authvec.link_keys``:
*up* is initiator -> responder).

Groups: a relay is the controlling relay of every group it does not ``attach`` over a link. The
participating relay (the one that attaches) sends GROUP_ATTACH for an attached group while it has
local members; the ACK gives the floor server SSRC and the link's media SSRC for the group, which
both directions of the group's voice use on this link and the participating relay sends its floor
messages with. ONE FloorServer, at the controlling relay, arbitrates: the participating relay
forwards its members' floor messages with Track Info (Floor Participant Reference = the member's
SSRC at the participating relay); the controlling relay treats each reference as a participant
(``link:<peer>#<ref>``) and the link itself as a receive-only participant (``link:<peer>``) that
stands for every other member over there: messages to it are broadcast there.
"""

import struct

from opmob import authvec, mcpt, sig, txn
from opmob import relay_events as ev
from opmob.errors import BadValue, WireError
from opmob.floorid import floor_ssrc
from opmob.relay_groups import ATTACHED, ATTACHING
from opmob.relay_peer import (  # noqa: F401  (names this module had before Peer moved out)
    AGREEMENT,
    GRANTS,
    LINK_CONNECTING,
    LINK_COUNTERS,
    LINK_DOWN,
    LINK_SILENT_KEEPALIVES,
    LINK_STREAMS,
    LINK_UP,
    RETRY_MAX,
    RETRY_MIN,
    Link,
    Peer,
)
from opmob.relay_session import REGISTERED, Drop
from opmob.ticks import due, earliest


def _copy(m, **changes):
    n = mcpt.FloorMsg(m.kind, m.ssrc, m.ack_req)
    for a in mcpt.FIELD_ATTRS:
        setattr(n, a, getattr(m, a))
    n.reject_text = m.reject_text
    for k, v in changes.items():
        setattr(n, k, v)
    return n


class LinkGroup:
    """One group on one link: attached (this relay participates) or served (it controls)."""

    __slots__ = (
        "group",
        "ssrc",
        "state",
        "e2e",
        "engaged",
        "holder",
        "last_bcast",
        "remote",
        "by_ref",
        "slots",
        "seq",
        "ext",
    )

    def __init__(self, group, e2e):
        self.group = group
        self.ssrc = 0
        self.state = ATTACHING
        self.e2e = e2e
        self.engaged = {}  # participating: member SSRC -> identity, known by reference there
        self.holder = None  # participating: the local member the controller granted the floor
        self.last_bcast = None  # participating: the floor state last broadcast, for late joiners
        self.remote = {}  # controlling: pid (the member's user identity) -> its reference over there
        self.by_ref = {}  # controlling: reference -> pid
        self.slots = {}  # "out" / "in" -> transcoder slot
        self.seq = 0  # sequence numbers of the untranscoded stream this relay sends on the link
        self.ext = None  # 48-bit index of the last packet received on the link (for fan-out)


class Links:
    """The relay's links part (composed into ``Relay`` as ``relay.links``): groups attached and
    served over links, their floor control and voice across them. Each link's own state machine
    is a ``relay_peer.Peer``; this part routes datagrams to it and acts on groups when it goes up
    or down."""

    def __init__(self, relay, now, codec, link_addr):
        self.r = relay  # what spans parts: a registration's life, floors joined, the store
        self.cache = relay._cache
        self.cfg = relay.cfg
        self.counters = relay.counters
        self.events = relay._events
        self.groups = relay.groups
        self.key_log = relay._key_log
        self.rand = relay.rand
        self.registry = relay.registry
        self.sessions = relay.sessions
        self.srtp_cls = relay._srtp
        self._links_init(now, codec, link_addr)

    def _links_init(self, now, codec, link_addr):
        self._codec = codec
        self._links = {}  # peer -> Link
        self._link_by_sid = {}  # link session id this relay allocated (responder) -> Link
        self._link_media = {}  # SSRC on a link -> (Link, LinkGroup)
        self._link_at = None
        for lk in self.cfg.links:
            if lk.transcodes and codec is None:
                raise ValueError(
                    "link to %s: codec %s needs the Codec2 transcoder (the C extension on CPython); "
                    'this relay has none: use codec = "dvi4" or the C extension' % (lk.peer, lk.codec)
                )
            if lk.psk is None:
                raise ValueError("link to %s: its key was not loaded (load_link_keys)" % lk.peer)
            addr = None
            if lk.initiator:
                addr = link_addr(lk.host, lk.port) if link_addr is not None else (lk.host, lk.port)
            link = Peer(
                lk,
                self.cfg.identity,
                addr,
                self.rand,
                self.srtp_cls,
                self.cfg.keepalive_ms,
                int(self.cfg.expiry),
                now,
                self.key_log,
            )
            self._links[lk.peer] = link
            for g in lk.attach:
                self.groups.attach_of[g] = lk.peer
        self._link_rearm()

    # --- timers -----------------------------------------------------------------------------------

    def _link_rearm(self):
        d = None
        for link in self._links.values():
            d = earliest(d, link.next_deadline())
        self._link_at = d

    def _link_poll(self, now):
        out = []
        if self._link_at is None or not due(now, self._link_at):
            return out
        for link in self._links.values():
            resend, silent = link.poll(now)
            for data in resend:
                out.append((link.addr, data))
            if silent:
                out.extend(self._link_down(now, link))
            sent, ticked = link.tick(now)
            for data in sent:
                out.append((link.addr, data))
            if ticked:
                out.extend(self._link_sync(now, link))
        self._link_rearm()
        return out

    # --- handshake: the Peer does it (relay_peer.py); here the relay's part ---------------------------

    def _link_owns(self, h):
        if h.down:
            return True
        if h.protected:
            return h.session in self._link_by_sid
        return h.type == sig.LINK_HELLO

    def _on_link_sig(self, now, addr, h, data):
        if h.type == sig.LINK_HELLO and not h.down:
            return self._on_link_hello(now, addr, data)
        link = None
        key = None
        if h.down:
            # We initiated: the peer allocated the session id.
            for lk in self._links.values():
                if lk.cfg.initiator and (
                    (lk.sid == h.session and lk.rx is not None)
                    or (h.type == sig.LINK_CHALLENGE and lk.answers_hello(h.txid))
                ):
                    link = lk
                    break
            if link is None:
                raise Drop("link_unknown_session")
            if h.type == sig.LINK_CHALLENGE:
                return self._on_link_challenge(now, addr, link, data)
            key = link.rx
        else:
            link = self._link_by_sid[h.session]
            key = link.auth_key(h.session)
            if key is None and link.sid == h.session:
                key = link.rx
        if key is None:
            raise Drop("link_unknown_session")
        try:
            msg = sig.decode(data, key)
        except WireError as e:
            raise Drop("link_" + e.counter)
        if msg.is_response:
            return self._on_link_response(now, addr, link, msg)
        peer = link.pid
        again = self.r.sig._retransmitted(now, addr, peer, msg.txid)
        if again is not None:
            return again
        if msg.type == sig.LINK_AUTH:
            return self._on_link_auth(now, addr, link, h.session, msg)
        if link.sid != h.session or not link.up:
            raise Drop("link_unknown_session")
        if not link.fresh_request(now, addr, msg.txid):
            raise Drop("link_replayed")
        return self.r.sig._answer_once(now, addr, peer, msg.txid, self._link_request_in, link, msg)

    def _on_link_hello(self, now, addr, data):
        try:
            msg = sig.decode(data)
        except WireError as e:
            raise Drop("link_" + e.counter)
        cached = self.cache.lookup(now, addr, msg.txid)
        if cached is not None and cached is not txn.PENDING:
            self.counters["sig_retransmits"] += 1
            return [(addr, cached)]
        link = self._links.get(msg.relay)
        if link is None or link.cfg.initiator:
            raise Drop("link_unknown_peer")
        if msg.peer is not None and msg.peer != self.cfg.identity:
            raise Drop("link_wrong_peer")
        if msg.agreement != AGREEMENT:
            raise Drop("link_bad_agreement")
        if link.pend is not None:
            self._link_by_sid.pop(link.pend[0], None)
        sid = self.r._new_sid()
        resp = link.challenge(now, msg, sid, self.rand(authvec.NONCE_LEN))
        self._link_by_sid[sid] = link
        self.cache.store(now, addr, msg.txid, resp)
        return [(addr, resp)]

    def _on_link_challenge(self, now, addr, link, data):
        try:
            msg = sig.decode(data)
        except WireError as e:
            raise Drop("link_" + e.counter)
        if link.txns is None or link.txns.on_response(msg.txid, msg.type) is None:
            raise Drop("link_unsolicited_response")
        auth = link.on_challenge(now, msg)
        self._link_rearm()
        if auth is None:
            raise Drop("link_auth_failed")
        return [(link.addr, auth)]

    def _on_link_auth(self, now, addr, link, sid, msg):
        if link.pend is None or link.pend[0] != sid:
            raise Drop("link_unknown_session")
        if not link.auth_ok(sid, msg):
            raise Drop("link_auth_failed")
        out = []
        if link.up:
            # The peer restarted and proved the key again: the new session replaces the old.
            out.extend(self._link_down(now, link))
        old = link.sid
        if old and old != sid:
            self._link_by_sid.pop(old, None)
        resp = link.accept(now, addr, sid, msg)
        self.cache.store(now, link.pid, msg.txid, resp)
        out.insert(0, (addr, resp))
        out.extend(self._link_opened(now, link))
        return out

    def _link_opened(self, now, link):
        link.opened(now)
        self.events.add((ev.LINK_UP, link.peer))
        out = self._link_sync(now, link)
        self._link_rearm()
        return out

    def _link_down(self, now, link):
        """The link is gone: the controlling side forgets the peer's members (a floor one of them
        holds is released); the participating side arbitrates its groups locally again."""
        out = []
        self.events.add((ev.LINK_DOWN, link.peer))
        link.state = LINK_DOWN
        for g, lg in list(link.served.items()):
            out.extend(self._unserve(now, link, lg))
        for g, lg in list(link.att.items()):
            out.extend(self._unattach(now, link, lg))
        if link.sid:
            self._link_by_sid.pop(link.sid, None)
        link.reset(now)
        self._link_rearm()
        return out

    # --- requests ---------------------------------------------------------------------------------

    def _link_request(self, now, link, mtype, ctx=None, max_sends=None, **fields):
        return (link.addr, link.request(now, mtype, ctx=ctx, max_sends=max_sends, **fields))

    def _on_link_response(self, now, addr, link, msg):
        t = link.on_response(now, msg)
        if t is None:
            raise Drop("link_unsolicited_response")
        out = []
        if msg.type == sig.LINK_ACK:
            out.extend(self._link_opened(now, link))
        elif msg.type == sig.GROUP_ATTACH_ACK:
            lg = link.att.get(t.ctx)
            if lg is not None and lg.state == ATTACHING:
                lg.state = ATTACHED
                lg.ssrc = msg.ssrc
                self._link_media[msg.ssrc] = (link, lg)
                self._link_media[msg.floor_ssrc] = (link, lg)
                link.counters["attaches"] += 1
        elif msg.type == sig.ERROR:
            link.counters["errors"] += 1
            if t.ctx is not None and t.ctx in link.att and link.att[t.ctx].state == ATTACHING:
                del link.att[t.ctx]  # tried again at the next keep-alive tick
        return out

    def _link_request_in(self, now, addr, link, msg):
        t = msg.type
        if t == sig.KEEPALIVE:
            link.counters["keepalives"] += 1
            return sig.encode(msg.reply(sig.KEEPALIVE_ACK, status=sig.KA_OK), link.tx), []
        if t == sig.GROUP_ATTACH:
            return self._on_group_attach(now, link, msg)
        if t == sig.GROUP_DETACH:
            lg = link.served.get(msg.group)
            out = self._unserve(now, link, lg) if lg is not None else []
            link.counters["detaches"] += 1
            return sig.encode(msg.reply(sig.GROUP_DETACH_ACK), link.tx), out
        if t == sig.DEREGISTER:
            resp = sig.encode(msg.reply(sig.DEREGISTER_ACK), link.tx)
            return resp, self._link_down(now, link)
        return sig.encode(msg.reply(sig.ERROR, cause=sig.CAUSE_UNSUPPORTED), link.tx), []

    def _on_group_attach(self, now, link, msg):
        g = msg.group
        if g in self.groups.attach_of or self.registry.group(g) is None:
            # Not controlled here: homed elsewhere, or attached by this relay itself.
            return sig.encode(msg.reply(sig.ERROR, cause=sig.CAUSE_UNKNOWN_GROUP), link.tx), []
        srv = self.r._floor(g)
        if srv is None:
            return sig.encode(msg.reply(sig.ERROR, cause=sig.CAUSE_NO_RESOURCES), link.tx), []
        lg = link.served.get(g)
        out = []
        if lg is None:
            lg = LinkGroup(g, self._e2e(g))
            lg.state = ATTACHED
            lg.ssrc = self._new_link_ssrc()
            link.served[g] = lg
            self._link_media[lg.ssrc] = (link, lg)
            self.groups.routes[link.pid] = (link, None)
            link.counters["attaches"] += 1
            # Never a talker itself, but it stands for members who may request the floor: its
            # Floor Taken must say they may (the participating relay restricts receive-only ones).
            out = self.r.media._floor_out(srv.join(now, link.pid, link.peer, lg.ssrc, ceiling=0))
        ack = msg.reply(sig.GROUP_ATTACH_ACK, floor_ssrc=srv.server_ssrc, ssrc=lg.ssrc)
        return sig.encode(ack, link.tx), out

    def _unserve(self, now, link, lg):
        out = []
        srv = self.groups.floors.get(lg.group)
        pids = list(lg.remote) + [link.pid]
        for pid in pids:
            if srv is not None:
                out.extend(self.r.media._floor_out(srv.leave(now, pid)))
        for pid in lg.remote:
            self.groups.routes.pop(pid, None)
        lg.remote = {}
        lg.by_ref = {}
        link.served.pop(lg.group, None)
        self._link_media.pop(lg.ssrc, None)
        self._close_slots(lg)
        return out

    def _unattach(self, now, link, lg):
        """Back to local arbitration: the members hear the local floor state."""
        out = []
        link.att.pop(lg.group, None)
        if lg.state == ATTACHED:
            self._link_media.pop(lg.ssrc, None)
            self._link_media.pop(floor_ssrc(lg.group), None)
        self._close_slots(lg)
        srv = self.groups.floors.get(lg.group)
        if srv is not None:
            for pid in srv.members:
                s = self.sessions.by_identity.get(pid)
                if s is not None and s.state == REGISTERED:
                    out.extend(self.r._join(now, s, lg.group))
        return out

    def _close_slots(self, lg):
        if self._codec is not None:
            for slot in lg.slots.values():
                self._codec.close(slot)
        lg.slots = {}

    def _new_link_ssrc(self):
        while True:
            v = self.r._new_ssrc()
            if v not in self._link_media:
                return v

    def _e2e(self, g):
        grp = self.registry.group(g)
        return bool(grp is not None and grp.e2e)

    def _link_sync(self, now, link):
        """Attach each attached group that has local members (once its local floor is idle, after
        a fallback), detach those that have none left."""
        out = []
        if not link.up:
            return out
        for g in link.cfg.attach:
            srv = self.groups.floors.get(g)
            members = 0
            if srv is not None:
                for pid in srv.members:
                    if pid in self.sessions.by_identity:
                        members += 1
            lg = link.att.get(g)
            if lg is None and members and srv.holder is None and not srv.queue:
                lg = LinkGroup(g, self._e2e(g))
                link.att[g] = lg
                out.append(
                    self._link_request(
                        now,
                        link,
                        sig.GROUP_ATTACH,
                        ctx=g,
                        group=g,
                        relay=self.cfg.identity,
                        members=min(members, 0xFFFF),
                    )
                )
            elif lg is not None and lg.state == ATTACHED and not members:
                out.extend(self._unattach(now, link, lg))
                out.append(self._link_request(now, link, sig.GROUP_DETACH, group=g))
        return out

    def _att_up(self, g):
        """The LinkGroup when ``g`` is attached over a link that is up, else None."""
        return self.groups.attached_up(g, self._links)

    def _links_changed(self, now, g, left=None):
        """Local membership of ``g`` changed; ``left``: the session of a member that left."""
        peer = self.groups.attach_of.get(g)
        if peer is None:
            return []
        out = []
        lg = self._att_up(g)
        if left is not None and lg is not None and left.ssrc in lg.engaged:
            # The controlling relay knows the member only by reference: release for it, so a
            # floor it held or waited for does not wait for the timers.
            del lg.engaged[left.ssrc]
            if lg.holder == left.identity:
                lg.holder = None
            out.extend(
                self._forward_floor(now, left, self._links[peer], lg, mcpt.FloorMsg(mcpt.FLOOR_RELEASE))
            )
            lg.engaged.pop(left.ssrc, None)
        out.extend(self._link_sync(now, self._links[peer]))
        self._link_rearm()
        return out

    # --- floor control over the link ----------------------------------------------------------------

    def _floor_to_link(self, pid, msg):
        """A FloorServer message for a participant over a link: one SRTCP datagram or None."""
        r = self.groups.routes.get(pid)
        if r is None:
            return None
        link, ref = r
        if not link.up:
            return None
        m = msg
        if ref is not None:
            m = _copy(msg, track_info=mcpt.TrackInfo(1, "", (ref,)))
        try:
            pkt = link.srtp_tx.protect_rtcp(mcpt.encode(m))
        except (WireError, BadValue):
            self.counters["floor_protect_failed"] += 1
            return None
        link.counters["floor_out"] += 1
        return (link.addr, pkt)

    def _forward_floor(self, now, s, link, lg, m):
        """A local member's floor message, to the controlling relay with Track Info."""
        if m.kind == mcpt.FLOOR_ACK and s.ssrc not in lg.engaged:
            return []  # acks a broadcast, which this relay acknowledged for the link already
        lg.engaged[s.ssrc] = s.identity
        ch = {"ssrc": lg.ssrc, "track_info": mcpt.TrackInfo(1, "", (s.ssrc,))}
        if m.kind == mcpt.FLOOR_REQUEST and m.user_id is None:
            ch["user_id"] = s.identity
        try:
            pkt = link.srtp_tx.protect_rtcp(mcpt.encode(_copy(m, **ch)))
        except (WireError, BadValue):
            self.counters["floor_protect_failed"] += 1
            return []
        link.counters["floor_out"] += 1
        return [(link.addr, pkt)]

    def _on_link_rtcp(self, now, addr, data, link, lg):
        if not link.up:
            raise Drop("link_down")
        try:
            msgs = mcpt.decode_compound(link.srtp_rx.unprotect_rtcp(data))
        except WireError as e:
            raise Drop("link_rtcp_" + e.counter)
        link.last_seen = now
        if not msgs:
            raise Drop("rtcp_no_floor_message")
        link.counters["floor_in"] += len(msgs)
        if lg.group in link.served:
            return self._floor_from_participating(now, link, lg, msgs)
        return self._floor_from_controlling(now, link, lg, msgs)

    def _floor_from_participating(self, now, link, lg, msgs):
        srv = self.groups.floors.get(lg.group)
        if srv is None:
            raise Drop("rtcp_no_group")
        out = []
        for m in msgs:
            ti = m.track_info
            if ti is None or not ti.refs:
                out.extend(self.r.media._floor_out(srv.on_message(now, link.pid, m)))
                continue
            ref = ti.refs[0]
            m.track_info = None
            pid = lg.by_ref.get(ref)
            if pid is None:
                # A member over there is a participant under its user identity, which stays the
                # same whichever relay it talks through; its route (link and reference) is kept
                # beside it. Only a member whose first message names no user (a Floor Request
                # carries it; anything else first is unusual) gets a name from its route.
                pid = m.user_id if m.user_id is not None else "%s#%d" % (link.pid, ref)
                user = pid
                dev = self.registry.device(user)
                grp = self.registry.group(lg.group)
                ceiling = dev.ceiling if dev is not None else 0
                ro = grp is not None and user in grp.receive_only
                self.groups.route_remote(pid, link, lg, ref)
                # Its relay told it the floor state already (broadcast to the link): the late
                # entrant's copy would be a second one.
                srv.join(now, pid, user, ref, ceiling=ceiling, receive_only=ro)
            out.extend(self.r.media._floor_out(srv.on_message(now, pid, m)))
        return out

    def _floor_from_controlling(self, now, link, lg, msgs):
        if lg.state != ATTACHED:
            raise Drop("link_not_attached")
        srv = self.groups.floors.get(lg.group)
        out = []
        c = self.counters
        for m in msgs:
            ti = m.track_info
            if ti is not None and ti.refs:
                s = self.sessions.by_ssrc.get(ti.refs[0])
                m.track_info = None
                if s is None or s.state != REGISTERED:
                    c["floor_undeliverable"] += 1
                    continue
                if m.kind == mcpt.FLOOR_GRANTED:
                    lg.holder = s.identity
                elif m.kind == mcpt.FLOOR_DENY and lg.holder == s.identity:
                    lg.holder = None
                targets = [s]
            else:
                if m.kind == mcpt.FLOOR_IDLE:
                    lg.holder = None
                elif m.kind == mcpt.FLOOR_TAKEN and lg.holder is not None and m.granted_party != lg.holder:
                    lg.holder = None
                if m.kind in (mcpt.FLOOR_IDLE, mcpt.FLOOR_TAKEN):
                    lg.last_bcast = m
                    self.events.floor_moved(lg.group, m.granted_party if m.kind == mcpt.FLOOR_TAKEN else None)
                if m.ack_req:
                    ack = mcpt.FloorMsg(
                        mcpt.FLOOR_ACK, lg.ssrc, msg_type=m.kind, source=mcpt.SOURCE_PARTICIPATING
                    )
                    try:
                        out.append((link.addr, link.srtp_tx.protect_rtcp(mcpt.encode(ack))))
                        link.counters["floor_out"] += 1
                    except WireError:
                        c["floor_protect_failed"] += 1
                    m = _copy(m, ack_req=False)
                targets = []
                if srv is not None:
                    for pid in srv.members:
                        s = self.sessions.by_identity.get(pid)
                        if s is not None and s.state == REGISTERED and s.ssrc not in lg.engaged:
                            targets.append(s)
            if not targets:
                continue
            if m.kind == mcpt.FLOOR_TAKEN:
                f = self._talker_ssrc_attached(lg, m)
                if f != m.ssrc_field:
                    m = _copy(m, ssrc_field=f)
            b = mcpt.encode(m)
            ro = None
            if m.kind == mcpt.FLOOR_TAKEN and m.permission:
                grp = self.registry.group(lg.group)
                ro = grp.receive_only if grp is not None else None
                b0 = mcpt.encode(_copy(m, permission=0)) if ro else None
            for s in targets:
                try:
                    out.append((s.addr, s.srtp_tx.protect_rtcp(b0 if ro and s.identity in ro else b)))
                except WireError:
                    c["floor_protect_failed"] += 1
            c["floor_out"] += len(targets)
        return out

    def _late_entry(self, s, g):
        """A member joining an attached group hears the floor state last broadcast over the link."""
        lg = self._att_up(g)
        if lg is None or lg.last_bcast is None:
            return []
        m = lg.last_bcast
        ch = {"ack_req": False}
        if m.kind == mcpt.FLOOR_TAKEN:
            ch["ssrc_field"] = self._talker_ssrc_attached(lg, m)
            grp = self.registry.group(g)
            if m.permission and grp is not None and s.identity in grp.receive_only:
                ch["permission"] = 0
        try:
            return [(s.addr, s.srtp_tx.protect_rtcp(mcpt.encode(_copy(m, **ch))))]
        except WireError:
            self.counters["floor_protect_failed"] += 1
            return []

    # --- which SSRC a Floor Taken names -----------------------------------------------------------
    #
    # A device plays only the stream its Floor Taken names, so Floor Taken must name the SSRC under
    # which this relay sends the talker's voice to its own devices: a talker registered here is
    # fanned out under its own SSRC, a talker behind a link under that link's media SSRC for the
    # group (the SSRC the voice arrives with on the link). The controlling relay's server knows a
    # remote talker by the reference its relay gave (its SSRC there), which means nothing here.

    def _talker_ssrc_attached(self, lg, m):
        """Participating relay: the SSRC its devices hear the talker of Floor Taken ``m`` under."""
        s = self.sessions.by_identity.get(m.granted_party)
        if s is not None and s.state == REGISTERED and s.ssrc in lg.engaged:
            return s.ssrc
        return lg.ssrc

    def _taken_for_locals(self, msg):
        """Controlling relay: Floor Taken from its own server as its devices must get it."""
        g = self.groups.by_floor_ssrc.get(msg.ssrc)
        f = msg.ssrc_field
        if g is None or f is None:
            return msg
        for link in self._links.values():
            lg = link.served.get(g)
            if lg is not None and f in lg.by_ref:
                return _copy(msg, ssrc_field=lg.ssrc)
        return msg

    # --- voice over the link ------------------------------------------------------------------------

    def _slot(self, link, lg, direction):
        slot = lg.slots.get(direction)
        if slot is None:
            slot = self._codec.open(link.cfg.mode(), lg.ssrc)
            lg.slots[direction] = slot
        return slot

    def _voice_to_link(self, link, lg, plain):
        """A talker's DVI4 packet onto the link, in the link's codec (or untouched, for an
        end-to-end group or a "dvi4" link: only SSRC and sequence number change)."""
        if not link.up:
            return []
        c = link.counters
        if lg.e2e or not link.cfg.transcodes:
            b = bytearray(plain)
            struct.pack_into(">H", b, 2, lg.seq)
            struct.pack_into(">I", b, 8, lg.ssrc)
            lg.seq = (lg.seq + 1) & 0xFFFF
            pkts = [b]
        else:
            try:
                pkts = self._codec.to_codec2(self._slot(link, lg, "out"), plain)
            except WireError:
                c["transcode_errors"] += 1
                return []
        out = []
        for p in pkts:
            try:
                out.append((link.addr, link.srtp_tx.protect(p)))
            except WireError:
                self.counters["voice_protect_failed"] += 1
                continue
            c["voice_out"] += 1
            c["voice_payload_out"] += len(p) - 12
        return out

    def _voice_to_links(self, g, plain, skip=None):
        out = []
        for link in self._links.values():
            lg = link.served.get(g)
            if lg is not None and link is not skip:
                out.extend(self._voice_to_link(link, lg, plain))
        return out

    def _on_link_rtp(self, now, addr, data, link, lg):
        if not link.up:
            raise Drop("link_down")
        try:
            plain = link.srtp_rx.unprotect(data)
        except WireError as e:
            raise Drop("link_rtp_" + e.counter)
        link.last_seen = now
        g = lg.group
        srv = self.groups.floors.get(g)
        if srv is None:
            raise Drop("rtp_no_group")
        out = []
        serving = g in link.served
        if serving:
            h = srv.holder
            r = self.groups.routes.get(h) if h is not None else None
            if r is None or r[0] is not link:
                raise Drop("link_rtp_not_permitted")
            out.extend(self.r.media._floor_out(srv.on_media(now, h)))
            if not srv.may_send_media(h):
                raise Drop("link_rtp_not_permitted", out)
        elif lg.state != ATTACHED:
            raise Drop("link_not_attached")
        link.counters["voice_in"] += 1
        if serving:
            self.events.voice(g, srv.holder)
        else:
            b = lg.last_bcast
            talker = b.granted_party if b is not None and b.kind == mcpt.FLOOR_TAKEN else None
            self.events.voice(g, talker or link.pid)
        if lg.e2e or not link.cfg.transcodes:
            pkts = [plain]
        else:
            try:
                pkts = self._codec.to_dvi4(self._slot(link, lg, "in"), plain)
            except WireError:
                link.counters["transcode_errors"] += 1
                raise Drop("link_transcode_failed", out)
        for p in pkts:
            seq = (p[2] << 8) | p[3]
            if lg.ext is None:
                ext = seq
            else:
                d = (seq - lg.ext) & 0xFFFF
                ext = lg.ext + d if d < 0x8000 else lg.ext - (0x10000 - d)
            if lg.ext is None or ext > lg.ext:
                lg.ext = ext
            self.r.media._local_fanout(srv.members, None, lg.ssrc, p, ext, out)
            if serving:
                out.extend(self._voice_to_links(g, p, skip=link))
        return out

    # --- status -------------------------------------------------------------------------------------

    def links_status(self):
        out = []
        for peer in sorted(self._links):
            link = self._links[peer]
            out.append(
                {
                    "peer": peer,
                    "state": link.state,
                    "role": "initiator" if link.cfg.initiator else "responder",
                    "codec": link.cfg.codec,
                    "attached": sorted(g for g in link.att if link.att[g].state == ATTACHED),
                    "served": sorted(link.served),
                    "remote_members": sum(len(lg.remote) for lg in link.served.values()),
                    "counters": dict(link.counters),
                }
            )
        return out
