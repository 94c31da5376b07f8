"""The relay's media part (``Relay.media``): floor control over SRTCP and voice over SRTP.

Every RTP and RTCP packet names its sender's SSRC, which the relay assigned at registration and
which is unique among its registrations, so the SSRC finds the session and its uplink keys; the
address is only where answers go. Which group a packet belongs to (docs/relay.md, "Which group"):

- a floor message that carries a floor server's SSRC in its SSRC field goes to that group (the
  device must be affiliated to it); without one, a Floor Request goes to the device's talk group and
  the other messages to the group where it holds or waits for the floor, else the talk group;
- voice goes to the group where the talker holds the floor; a device holds or waits for the floor
  in one group at a time, so this is never ambiguous; voice from a device without the floor goes
  to the group of its last Floor Request (or its talk group), whose server answers with Floor
  Revoke cause 3.

Voice is forwarded as it came (SSRC, sequence number, timestamp, payload), protected again with
each listener's key. One exception keeps SRTP working: a listener's context sees only the packets
forwarded to it, and SRTP can follow a stream only while its sequence number moves less than
2^15 between packets. A talker who spoke at length where this listener could not hear (another
group) has moved further than that; its sequence numbers towards this listener are then shifted
to carry on from the last one it got (docs/relay.md, "Voice").
"""

import struct

from opmob import mcpt
from opmob.errors import WireError
from opmob.floorid import floor_ssrc
from opmob.relay_session import REGISTERED, STUNNED, Drop

_DENY_OTHER_GROUP = "floor held in another group"


SEQ_JUMP = 0x4000  # a talker further ahead than this of what a listener last got: re-based


def _follow(streams, ssrc, plain, ext):
    """``plain`` as the listener gets it. ``ext`` is the packet's 48-bit SRTP index on the uplink.

    Its sequence number starts below 2^15 towards each listener (see below) and carries on from
    there. If the talker has moved on by SEQ_JUMP or more since the last packet this listener got
    from it, its sequence numbers towards this listener are shifted to carry on from that last
    one, so the listener's SRTP context (and the relay's) can place them."""
    st = streams.get(ssrc)
    if st is None:
        # A new stream towards this listener starts below 2^15: the talker's sequence number
        # with its top bit cleared. The listener's SRTP context takes ROC 0 at the first packet
        # it gets; had the talker's numbers been near the wrap, and every packet before the
        # wrap been lost on the way, it would never authenticate one. This way that takes more
        # than 32,768 lost packets (the accessory starts its own streams the same way).
        seq = ext & 0xFFFF
        off = ((seq & 0x7FFF) - seq) & 0xFFFF
        streams[ssrc] = [off, ext]
        if off == 0:
            return plain
        b = bytearray(plain)
        b[2] = (seq & 0x7FFF) >> 8
        return b
    off = st[0]
    delta = ext - st[1]
    if delta >= SEQ_JUMP:
        off = (off + 1 - delta) & 0xFFFF
        st[0] = off
    if delta > 0:
        st[1] = ext
    if off == 0:
        return plain
    seq = (ext + off) & 0xFFFF
    b = bytearray(plain)
    b[2] = seq >> 8
    b[3] = seq & 0xFF
    return b


class Media:
    """The relay's media part (composed into ``Relay`` as ``relay.media``): floor control over
    SRTCP and voice over SRTP for the relay's own devices. Groups whose floor lives at a peer
    relay are handed to the links part (``relay.links``)."""

    def __init__(self, relay):
        self.r = relay  # what spans parts: a registration's life, floors joined, the store
        self.counters = relay.counters
        self.events = relay._events
        self.fanout = relay._fanout
        self.groups = relay.groups
        self.sessions = relay.sessions

    def _media_session(self, data, off, plane):
        ssrc = struct.unpack_from(">I", data, off)[0]
        s = self.sessions.by_ssrc.get(ssrc)
        if s is None:
            raise Drop(plane + "_unknown_ssrc")
        if s.state != REGISTERED:
            # Stunned: refused without looking further. Stale (restored, no keys): cannot be read.
            raise Drop(plane + ("_stunned" if s.state == STUNNED else "_no_keys"))
        return s

    # --- voice ----------------------------------------------------------------------------------

    def _on_rtp(self, now, addr, data):
        if len(data) < 12:
            raise Drop("rtp_truncated")
        s = self._media_session(data, 8, "rtp")
        try:
            plain = s.srtp_rx.unprotect(data)
        except WireError as e:
            raise Drop("rtp_" + e.counter)
        self.r._seen(s, now, addr)
        g = self._voice_group(s)
        srv = self.groups.floors.get(g) if g is not None else None
        if srv is None:
            raise Drop("rtp_no_group")
        me = s.identity
        lg = self.r.links._att_up(g) if self.groups.attach_of else None
        if lg is not None:
            # The controlling relay gates the voice; here it goes out only from the member it
            # granted the floor to.
            if lg.holder != me:
                raise Drop("rtp_not_permitted")
            out = []
        else:
            out = self._floor_out(srv.on_media(now, me))
            if not srv.may_send_media(me):
                raise Drop("rtp_not_permitted", out)
        self.counters["voice_in"] += 1
        self.events.voice(g, me)
        # The packet's index: the uplink's highest, less how far behind it this packet is (the
        # replay window keeps that under 2^15).
        top = s.srtp_rx.highest_index(s.ssrc)
        ext = top - (((top & 0xFFFF) - ((plain[2] << 8) | plain[3])) & 0xFFFF)
        self._local_fanout(srv.members, me, s.ssrc, plain, ext, out)
        if lg is not None:
            link = self.r.links._links[self.groups.attach_of[g]]
            out.extend(self.r.links._voice_to_link(link, lg, plain))
        elif self.r.links._links:
            out.extend(self.r.links._voice_to_links(g, plain))
        return out

    def _local_fanout(self, members, me, ssrc, plain, ext, out):
        """``plain`` to every registered member here but ``me``, each under its own key."""
        n0 = len(out)
        fanout = self.fanout
        if fanout is not None:
            return self._fan_out(fanout, members, me, ssrc, plain, ext, out, n0)
        c = self.counters
        by_id = self.sessions.by_identity
        for pid in members:
            if pid == me:
                continue
            ls = by_id.get(pid)
            if ls is None or ls.state != REGISTERED:
                continue
            try:
                out.append((ls.addr, ls.srtp_tx.protect(_follow(ls.down_seq, ssrc, plain, ext))))
            except WireError:
                c["voice_protect_failed"] += 1
        c["voice_out"] += len(out) - n0
        return out

    def _fan_out(self, fanout, members, me, ssrc, plain, ext, out, n0):
        """The loop above through ``Relay(fanout=...)``: every listener's packet in one call."""
        by_id = self.sessions.by_identity
        addrs = []
        sessions = []
        packets = []
        for pid in members:
            if pid == me:
                continue
            ls = by_id.get(pid)
            if ls is None or ls.state != REGISTERED:
                continue
            addrs.append(ls.addr)
            sessions.append(ls.srtp_tx)
            packets.append(_follow(ls.down_seq, ssrc, plain, ext))
        c = self.counters
        if packets:
            for a, r in zip(addrs, fanout(sessions, packets)):
                if isinstance(r, WireError):
                    c["voice_protect_failed"] += 1
                else:
                    out.append((a, r))
        c["voice_out"] += len(out) - n0
        return out

    def _voice_group(self, s):
        me = s.identity
        for a in s.affs:
            srv = self.groups.floors.get(a[0])
            if srv is not None and srv.holder == me:
                return a[0]
        g = s.floor_group
        if g is not None and s.aff(g) is not None:
            return g
        return s.talk_group()

    # --- floor control --------------------------------------------------------------------------

    def _on_rtcp(self, now, addr, data):
        if len(data) < 8:
            raise Drop("rtcp_truncated")
        s = self._media_session(data, 4, "rtcp")
        try:
            msgs = mcpt.decode_compound(s.srtp_rx.unprotect_rtcp(data))
        except WireError as e:
            raise Drop("rtcp_" + e.counter)
        self.r._seen(s, now, addr)
        if not msgs:
            raise Drop("rtcp_no_floor_message")
        out = []
        done = 0
        for m in msgs:
            g = self._floor_target(s, m)
            if g is None:
                self.counters["floor_not_affiliated"] += 1
                continue
            done += 1
            lg = self.r.links._att_up(g) if self.groups.attach_of else None
            if lg is not None:
                if m.kind == mcpt.FLOOR_REQUEST:
                    s.floor_group = g
                out.extend(
                    self.r.links._forward_floor(now, s, self.r.links._links[self.groups.attach_of[g]], lg, m)
                )
                continue
            if m.kind == mcpt.FLOOR_REQUEST:
                if self._floor_engaged(s, g) is not None:
                    out.extend(self._deny_other_group(s, g))
                    continue
                s.floor_group = g
            out.extend(self._floor_out(self.groups.floors[g].on_message(now, s.identity, m)))
        if not done:
            raise Drop("rtcp_not_affiliated", out)
        self.counters["floor_in"] += done
        return out

    def _floor_target(self, s, m):
        f = m.ssrc_field
        if f is not None and f != s.ssrc:
            g = self.groups.by_floor_ssrc.get(f)
            if g is None or s.aff(g) is None or g not in self.groups.floors:
                return None
            return g
        if m.kind != mcpt.FLOOR_REQUEST:
            g = self._floor_engaged(s, None)
            if g is not None:
                return g
        g = s.talk_group()
        return g if g in self.groups.floors else None

    def _floor_engaged(self, s, other_than):
        """The group, other than ``other_than``, where ``s`` holds or waits for the floor."""
        me = s.identity
        for a in s.affs:
            g = a[0]
            if g == other_than:
                continue
            srv = self.groups.floors.get(g)
            if srv is not None and (srv.holder == me or srv.queue_position(me) is not None):
                return g
        return None

    def _deny_other_group(self, s, g):
        srv = self.groups.floors[g]
        ind = mcpt.IND_NORMAL
        if srv.emergency:
            ind = mcpt.IND_EMERGENCY
        elif srv.imminent_peril:
            ind = mcpt.IND_IMMINENT_PERIL
        self.counters["floor_denied_other_group"] += 1
        msg = mcpt.FloorMsg(
            mcpt.FLOOR_DENY,
            floor_ssrc(g),
            reject_cause=mcpt.DENY_OTHER,
            reject_text=_DENY_OTHER_GROUP,
            indicator=ind,
        )
        return self._floor_out([(s.identity, msg)])

    def _floor_out(self, pairs):
        """FloorServer output ``[(identity, FloorMsg)]`` as SRTCP datagrams, each encoded once and
        protected with each recipient's downlink key."""
        if not pairs:
            return []
        out = []
        enc = {}
        c = self.counters
        by_id = self.sessions.by_identity
        for pid, msg in pairs:
            ls = by_id.get(pid)
            if pid in self.groups.routes:  # a member over a link (its route wins: relay_link.py)
                d = self.r.links._floor_to_link(pid, msg)
                if d is None:
                    c["floor_undeliverable"] += 1
                else:
                    out.append(d)
                continue
            if (
                self.groups.attach_of
                and self.r.links._att_up(self.groups.by_floor_ssrc.get(msg.ssrc)) is not None
            ):
                # This relay's own server for a group it attaches is silent while the
                # controlling relay arbitrates (it takes over if the link goes down).
                continue
            if ls is None or ls.state != REGISTERED:
                c["floor_undeliverable"] += 1
                continue
            k = id(msg)
            b = enc.get(k)
            if b is None:
                m = msg
                if msg.kind == mcpt.FLOOR_TAKEN and self.r.links._links:
                    m = self.r.links._taken_for_locals(msg)
                b = mcpt.encode(m)
                enc[k] = b
            try:
                out.append((ls.addr, ls.srtp_tx.protect_rtcp(b)))
            except WireError:
                c["floor_protect_failed"] += 1
        c["floor_out"] += len(out)
        return out
