"""Security of a real relay process on loopback (``opmob relay run``), with scripted devices and a
raw UDP socket playing the attacker.

- A host that is not registered, or that fails authentication, can neither affiliate, nor ask for
  the floor, nor inject voice: it gets nothing (an unknown session gets the open ERROR the protocol
  prescribes, which carries nothing), the members get nothing, and the relay's /status drop
  counters name each reason.
- Replayed REGISTER / AUTH_RESPONSE datagrams create no session and move no address; after the
  device has registered again the old AUTH_RESPONSE is refused. Replayed SRTP and SRTCP are refused.
- A device stunned through the admin channel is refused at once, and learns it is stunned within
  one keep-alive interval even when the DEVICE_CONTROL order never reaches it.
- A device refuses a relay that cannot prove it holds a vector of the device's home (a registry
  with another secret for it): it never registers and answers nothing but AUTH_FAILURE.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opmob import authvec, mcpt, rtp, sig, srtp
from relayproc import (
    Client,
    RelayProc,
    close_all,
    counter,
    device_entry,
    expect,
    export_doc,
    group_entry,
    is_device_control,
    nothing_more,
    short_dir,
    sig_type,
    start_clients,
    wait_for,
)

G = "fire-1@no"
PEOPLE = {"ann": (100, [G]), "bob": (100, [G]), "cat": (200, [G])}
NORMAL = "normal"


@contextmanager
def relay(**kw: Any) -> Iterator[tuple[RelayProc, dict[str, bytes]]]:
    with short_dir() as d:
        doc, secrets = export_doc(PEOPLE, [G])
        with RelayProc(d, doc, **kw) as r:
            yield r, secrets


def run(scenario: Callable[[RelayProc, dict[str, bytes]], Awaitable[None]], **kw: Any) -> None:
    with relay(**kw) as (r, secrets):
        asyncio.run(asyncio.wait_for(scenario(r, secrets), 60))


class Raw:
    """The attacker: a plain UDP socket on loopback."""

    def __init__(self, relay: tuple[str, int]) -> None:
        self.relay = relay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.relay)

    async def replies(self, within: float = 0.3) -> list[bytes]:
        """Everything that arrives within ``within`` seconds."""
        loop = asyncio.get_running_loop()
        got = []
        end = loop.time() + within
        while (left := end - loop.time()) > 0:
            try:
                data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), left)
            except TimeoutError:
                break
            got.append(data)
        return got

    async def exchange(self, data: bytes, within: float = 0.3) -> list[bytes]:
        self.send(data)
        return await self.replies(within)

    def close(self) -> None:
        self.sock.close()


def drops(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """The drop counters that moved, by how much."""
    moved = {}
    for k, v in after["counters"].items():
        if k.startswith("drop_") and v != before["counters"].get(k, 0):
            moved[k] = v - before["counters"].get(k, 0)
    return moved


def rogue_floor_request(ssrc: int, skip: int = 0) -> bytes:
    """A Floor Request under a key nobody was given; ``skip`` packets are protected first, so the
    SRTCP index is ahead of anything the relay has seen (refused by the tag, not the window)."""
    rogue = srtp.SrtpSession(os.urandom(16), os.urandom(14))
    req = mcpt.encode(mcpt.FloorMsg(mcpt.FLOOR_REQUEST, ssrc, priority=255, indicator=mcpt.IND_EMERGENCY))
    for _ in range(skip):
        rogue.protect_rtcp(req)
    data: bytes = rogue.protect_rtcp(req)
    return data


def rogue_voice(ssrc: int) -> bytes:
    rogue = srtp.SrtpSession(os.urandom(16), os.urandom(14))
    hdr = rtp.RtpHeader(rtp.PT_DVI4_8K, 30000, 30000 * 160, ssrc)
    data: bytes = rogue.protect(rtp.encode(hdr, os.urandom(84)))
    return data


def test_an_unregistered_host_can_neither_affiliate_nor_ask_for_the_floor_nor_talk() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G]})
        ann, bob = cl["ann"], cl["bob"]
        raw = Raw(r.addr)
        try:
            st0 = await r.astatus()
            fake = authvec.derive(os.urandom(16), os.urandom(16), os.urandom(16))
            tx, _ = sig.keys(fake, False)
            # AFFILIATE in a session that does not exist: the open ERROR, and nothing else.
            aff = sig.SigMsg(sig.AFFILIATE, txid=1, session=0x0BAD5E55, affiliations=[(G, 0, 0)])
            got = await raw.exchange(sig.encode(aff, tx))
            assert len(got) == 1, got
            err = sig.decode(got[0])
            assert err.type == sig.ERROR and err.cause == sig.CAUSE_UNKNOWN_SESSION and not err.protected
            st1 = await r.astatus()
            assert drops(st0, st1) == {"drop_sig_unknown_session": 1}
            # In bob's live session, without bob's key: dropped unanswered.
            aff = sig.SigMsg(sig.AFFILIATE, txid=2, session=bob.dev.session, affiliations=[(G, 0, 0)])
            assert await raw.exchange(sig.encode(aff, tx)) == []
            st2 = await r.astatus()
            assert drops(st1, st2) == {"drop_sig_auth_failed": 1}
            # Floor Request and voice: from an SSRC the relay never gave out, then with bob's.
            assert await raw.exchange(rogue_floor_request(0x1234ABCD)) == []
            assert await raw.exchange(rogue_voice(0x1234ABCD)) == []
            st3 = await r.astatus()
            assert drops(st2, st3) == {"drop_rtcp_unknown_ssrc": 1, "drop_rtp_unknown_ssrc": 1}
            assert await raw.exchange(rogue_floor_request(bob.dev.ssrc, skip=100)) == []
            assert await raw.exchange(rogue_voice(bob.dev.ssrc)) == []
            st4 = await r.astatus()
            assert drops(st3, st4) == {"drop_rtcp_auth_failed": 1, "drop_rtp_auth_failed": 1}
            # Nothing happened: no floor, no voice, no new device, no new affiliation.
            await nothing_more([ann, bob], 0.2)
            g = group_entry(st4, G)
            assert g["holder"] is None and g["floor_state"] == "G: Floor Idle"
            assert [d["identity"] for d in st4["devices"]] == ["ann@no", "bob@no"]
            for k in ("floor_in", "voice_in", "affiliations", "registrations"):
                assert counter(st4, k) == counter(st0, k), k
            c = st4["counters"]
            assert c["rx_datagrams"] == c["accepted"] + sum(v for k, v in c.items() if k.startswith("drop_"))
        finally:
            raw.close()
            close_all(cl)

    run(scenario)


def test_a_device_that_fails_authentication_gets_no_service() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"bob": [G]})
        bob = cl["bob"]
        raw = Raw(r.addr)
        try:
            st0 = await r.astatus()
            # An impostor registers as ann (the identity is no secret) and gets a challenge ...
            nonce = os.urandom(16)
            reg = sig.SigMsg(sig.REGISTER, txid=7, identity="ann@no", nonce=nonce, affiliations=[(G, 0, 0)])
            got = await raw.exchange(sig.encode(reg))
            assert len(got) == 1
            ch = sig.decode(got[0])
            assert ch.type == sig.CHALLENGE
            # ... which it cannot answer without ann's secret: keys from a guess are refused by the tag.
            guess = authvec.derive(os.urandom(16), ch.rand, nonce)
            tx, _ = sig.keys(guess, False)
            resp = sig.SigMsg(sig.AUTH_RESPONSE, txid=8, session=ch.session, res=os.urandom(16))
            assert await raw.exchange(sig.encode(resp, tx)) == []
            aff = sig.SigMsg(sig.AFFILIATE, txid=9, session=ch.session, affiliations=[(G, 0, 0)])
            assert await raw.exchange(sig.encode(aff, tx)) == []
            st1 = await r.astatus()
            assert drops(st0, st1) == {"drop_sig_auth_failed": 2}
            # No SSRC was given out: floor control and voice find no registration.
            assert await raw.exchange(rogue_floor_request(0x0A0B0C0D)) == []
            assert await raw.exchange(rogue_voice(0x0A0B0C0D)) == []
            st2 = await r.astatus()
            assert drops(st1, st2) == {"drop_rtcp_unknown_ssrc": 1, "drop_rtp_unknown_ssrc": 1}
            assert device_entry(st2, "ann@no") is None
            assert counter(st2, "registrations") == counter(st0, "registrations") == 1
            assert group_entry(st2, G)["members"] == [["bob@no", "U: not permitted and Floor Idle"]]
            await nothing_more([bob], 0.1)
            # The failed attempt does not lock the real ann out.
            ann = Client("ann", secrets["ann@no"], r.addr, [G])
            cl["ann"] = ann
            await ann.open()
            await ann.register()
            assert ann.dev.state == "registered"
        finally:
            raw.close()
            close_all(cl)

    run(scenario)


def test_replayed_registration_makes_no_session() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G]})
        ann, bob = cl["ann"], cl["bob"]
        raw = Raw(r.addr)
        try:
            caught: dict[int, bytes] = {}
            for _, data in ann.ep.sent:
                t = sig_type(data)
                if t in (sig.REGISTER, sig.AUTH_RESPONSE):
                    caught.setdefault(t, data)
            first_ssrc = ann.dev.ssrc
            ann_addr = f"127.0.0.1:{ann.port}"
            st0 = await r.astatus()
            # Replayed at once (while the relay still caches the answer): the cached REGISTER_ACK,
            # protected and useless to the sender; no new session, and ann's address stays hers.
            got = await raw.exchange(caught[sig.AUTH_RESPONSE])
            assert [sig_type(d) for d in got] == [sig.REGISTER_ACK] and sig.peek(got[0]).protected
            # A replayed REGISTER from another address is a new request: a fresh challenge that only
            # the holder of ann's secret can answer.
            got = await raw.exchange(caught[sig.REGISTER])
            assert [sig_type(d) for d in got] == [sig.CHALLENGE]
            st1 = await r.astatus()
            assert counter(st1, "sig_retransmits") == counter(st0, "sig_retransmits") + 1
            assert counter(st1, "registrations") == counter(st0, "registrations")
            entry = device_entry(st1, "ann@no")
            assert entry is not None and entry["ssrc"] == first_ssrc and entry["addr"] == ann_addr
            # ann registers again by itself (at 80 % of the 3 s expiry): new keys, new session.
            await ann.until(lambda: ann.dev.key_id == 2, 5, "ann's re-registration")
            await bob.until(lambda: bob.dev.key_id == 2, 5, "bob's re-registration")
            st2 = await r.astatus()
            got = await raw.exchange(caught[sig.AUTH_RESPONSE])
            assert len(got) == 1
            err = sig.decode(got[0])
            assert err.type == sig.ERROR and err.cause == sig.CAUSE_UNKNOWN_SESSION and not err.protected
            st3 = await r.astatus()
            assert drops(st2, st3) == {"drop_sig_unknown_session": 1}
            # Every registration the relay counted is one the devices made themselves.
            n = ann.dev.counters["registrations"] + bob.dev.counters["registrations"]
            assert counter(st3, "registrations") == n == 4
            entry = device_entry(st3, "ann@no")
            assert entry is not None and entry["ssrc"] == ann.dev.ssrc != first_ssrc
            assert entry["addr"] == ann_addr and entry["state"] == "registered"
            assert sorted(d["identity"] for d in st3["devices"]) == ["ann@no", "bob@no"]
        finally:
            raw.close()
            close_all(cl)

    run(scenario, keepalive=1, expiry=3)


def test_replayed_srtp_and_srtcp_are_refused() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
        raw = Raw(r.addr)
        try:
            ann.request()
            await expect(
                {
                    ann: [("Granted", "ann@no", 0, NORMAL)],
                    bob: [("Taken", "ann@no", 1, NORMAL)],
                    cat: [("Taken", "ann@no", 1, NORMAL)],
                },
                G,
            )
            mark = len(ann.ep.sent)
            await ann.talk(3)
            await wait_for(lambda: len(bob.voice_log) == 3 and len(cat.voice_log) == 3, 5, "voice")
            voice = [d for _, d in ann.ep.sent[mark:] if d[0] >> 6 == 2 and not 192 <= d[1] <= 223]
            request = [d for _, d in ann.ep.sent[:mark] if d[0] >> 6 == 2 and 192 <= d[1] <= 223][0]
            assert len(voice) == 3
            bob.heard()
            cat.heard()
            st0 = await r.astatus()
            for d in voice:
                raw.send(d)
            raw.send(request)
            assert await raw.replies(0.3) == []
            await nothing_more([ann, bob, cat], 0.1)
            st1 = await r.astatus()
            assert drops(st0, st1) == {"drop_rtp_replayed": 3, "drop_rtcp_replayed": 1}
            assert counter(st1, "voice_in") == counter(st0, "voice_in") == 3
            # ann's own stream goes on.
            sent = await ann.talk(2)
            await wait_for(lambda: len(bob.voice_log) == 5, 5, "voice")
            assert bob.heard() == sent
        finally:
            raw.close()
            close_all(cl)

    run(scenario)


def test_a_stunned_device_is_refused_within_one_keepalive() -> None:
    keepalive = 1

    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
        try:
            # ann never gets the order (lost on the radio): the relay must refuse it anyway, and its
            # keep-alive must tell it.
            ann.ep.drop_in = is_device_control
            st0 = await r.astatus()
            t0 = time.monotonic()
            reply = await r.aadmin("stun", "ann@no")
            assert reply == {"ok": True, "op": "stun", "identity": "ann@no", "datagrams": 1}
            assert ann.dev.state == "registered"  # it does not know yet
            ann.request()
            await ann.talk(2)
            await nothing_more([ann, bob, cat], 0.2)
            st1 = await r.astatus()
            assert drops(st0, st1) == {"drop_rtcp_stunned": 1, "drop_rtp_stunned": 2}
            assert st1["stunned"] == ["ann@no"]
            entry = device_entry(st1, "ann@no")
            assert entry is not None and entry["state"] == "stunned"
            await ann.until(lambda: ann.dev.state == "stunned", 5, "ann stunned")
            learnt = time.monotonic() - t0
            assert ann.ep.dropped_in, "the order should have been lost"
            print(f"ann learnt it was stunned {learnt:.3f} s after the stun (keep-alive {keepalive} s)")
            assert learnt <= keepalive + 0.3, f"stunned only after {learnt:.2f} s"
            assert ann.events("stunned") == [("stunned",)]
            # bob gets the order itself, through the operator's command.
            t0 = time.monotonic()
            res = await asyncio.to_thread(r.control, "stun", "bob@no")
            assert res.returncode == 0, res.stderr
            assert "stun bob@no: stunned" in res.stdout and "order was sent" in res.stdout
            await bob.until(lambda: bob.dev.state == "stunned", 5, "bob stunned")
            assert time.monotonic() - t0 <= keepalive + 0.3
            bob.request()  # the device itself refuses now
            assert bob.dev.counters["floor_refused"] == 1
            # ann hears the relay again: a retransmission of the order reaches it and is acknowledged
            # (a revive sent while that order is still being retransmitted: see the next test).
            ann.ep.drop_in = None
            await ann.until(
                lambda: sig.DEVICE_CONTROL_ACK in [sig_type(x) for _, x in ann.ep.sent], 5, "ann's ack"
            )
            # Revive ann: it is served again.
            res = await asyncio.to_thread(r.control, "revive", "ann@no")
            assert res.returncode == 0, res.stderr
            await ann.until(lambda: ann.dev.state == "registered", 5, "ann revived")
            assert ann.events("revived") == [("revived",)]
            await expect({ann: [("Idle", NORMAL)], bob: [], cat: []}, G)
            ann.request()
            await expect(
                {ann: [("Granted", "ann@no", 0, NORMAL)], cat: [("Taken", "ann@no", 1, NORMAL)], bob: []}, G
            )
            st = await r.astatus()
            assert st["stunned"] == ["bob@no"]
            assert st["counters"]["device_control_acks"] == 3  # ann's stun, bob's stun, ann's revive
        finally:
            close_all(cl)

    run(scenario, keepalive=keepalive)


def test_a_revive_is_not_undone_by_a_late_retransmission_of_the_stun() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G]})
        ann, bob = cl["ann"], cl["bob"]
        try:
            ann.ep.drop_in = is_device_control  # out of reach of the order, not of keep-alives
            t0 = time.monotonic()
            assert (await r.aadmin("stun", "ann@no"))["ok"]
            await ann.until(lambda: ann.dev.state == "stunned", 5, "ann stunned by its keep-alive")
            ann.ep.drop_in = None
            assert (await r.aadmin("revive", "ann@no"))["ok"]
            await ann.until(lambda: ann.dev.state == "registered", 5, "ann revived")
            await expect({ann: [("Idle", NORMAL)], bob: []}, G)  # back in the group's floor control
            # The stun order was being retransmitted (0.5, 1.5, 3.5, 7.5 s ...): give it time.
            await asyncio.sleep(max(0.0, t0 + 4.0 - time.monotonic()))
            st = await r.astatus()
            entry = device_entry(st, "ann@no")
            assert entry is not None and entry["state"] == "registered" and st["stunned"] == []
            assert ann.dev.state == "registered", "the device obeyed a stun older than its revive"
            ann.request()
            await expect({ann: [("Granted", "ann@no", 0, NORMAL)], bob: [("Taken", "ann@no", 1, NORMAL)]}, G)
        finally:
            close_all(cl)

    run(scenario)


def test_a_device_refuses_a_relay_whose_network_token_is_wrong() -> None:
    with short_dir() as d:
        # The relay's registry holds another secret for ann than ann's own: its challenges (AUTN,
        # the network token) cannot be ann's home's.
        real = os.urandom(16)
        doc, _ = export_doc(PEOPLE, [G])
        with RelayProc(d, doc, secrets=[real]) as r:

            async def main() -> None:
                ann = Client("ann", real, r.addr, [G])
                await ann.open()
                try:
                    ann.act(ann.dev.start, "start")
                    await ann.until(lambda: bool(ann.events("relay_refused")), 5, "relay refused")
                    assert ann.events("relay_refused") == [("relay_refused", sig.CAUSE_AUTN_INVALID)]
                    await asyncio.sleep(1.0)
                    assert ann.dev.state == "waiting" and not ann.dev.registered
                    assert ann.events("registered") == []
                    # It answered the challenge with AUTH_FAILURE only, never with a response.
                    assert [sig_type(x) for _, x in ann.ep.sent] == [sig.REGISTER, sig.AUTH_FAILURE]
                    assert ann.dev.counters["autn_refused"] == 1
                    ann.request()  # nothing leaves an unregistered device
                    assert len(ann.ep.sent) == 2
                    st = await r.astatus()
                    assert st["devices"] == [] and counter(st, "registrations") == 0
                    assert counter(st, "auth_autn_refused") == 1
                finally:
                    ann.close()

            asyncio.run(asyncio.wait_for(main(), 30))
