"""Floor control and voice through a real relay process on loopback, with scripted devices.

Each test starts its own relay (``opmob relay run``; the shared scenarios also
``micropython -m opmob.relay_uasyncio``) with a registry export made here with fresh random
secrets, registers ``DeviceSession``s over UDP (``relayproc.Client``) and asserts the exact
sequence of floor-control messages each device receives: kind, cause, granted party, priority,
queue position and Floor Indicator (``relayproc.view``), and that nothing else arrives.

Devices (ceilings): ann 100, bob 100, cat 200, dan 50 may join fire-1 and fire-2; eve fire-2 only.
Unless a test says otherwise the floor timers leave bursts alone (T1 8 s, T2 30 s, T3 3 s) and the
keep-alive is 1 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opmob import mcpt, sig
from relayproc import (
    Client,
    RelayProc,
    close_all,
    counter,
    device_entry,
    expect,
    export_doc,
    group_entry,
    nothing_more,
    short_dir,
    start_clients,
    wait_for,
)

G = "fire-1@no"
G2 = "fire-2@no"
PEOPLE = {
    "ann": (100, [G, G2]),
    "bob": (100, [G, G2]),
    "cat": (200, [G, G2]),
    "dan": (50, [G, G2]),
    "eve": (100, [G2]),
}
NORMAL = "normal"
EMERGENCY = "emergency"
RUNTIMES = ["cpython", "micropython"]

Scenario = Callable[[RelayProc, dict[str, bytes]], Awaitable[None]]


@contextmanager
def relay(runtime: str = "cpython", **kw: Any) -> Iterator[tuple[RelayProc, dict[str, bytes]]]:
    with short_dir() as d:
        doc, secrets = export_doc(PEOPLE, [G, G2])
        with RelayProc(d, doc, runtime=runtime, **kw) as r:
            yield r, secrets


def run(scenario: Scenario, runtime: str = "cpython", **kw: Any) -> None:
    with relay(runtime, **kw) as (r, secrets):

        async def main() -> None:
            await scenario(r, secrets)

        asyncio.run(asyncio.wait_for(main(), 60))


def sent_as_heard(sent: list[bytes], heard: list[bytes]) -> None:
    """Each listener gets the talker's packets as sent: SSRC, sequence number, timestamp, payload."""
    assert len(heard) == len(sent), (len(heard), len(sent))
    for p, q in zip(sent, heard, strict=True):
        assert q == p


# --- the shared scenarios (CPython and MicroPython relay) ---------------------------------------------


async def grant_when_idle(r: RelayProc, secrets: dict[str, bytes]) -> None:
    cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
    ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
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
        granted = ann.floor_log[-1][2]
        assert granted.duration == 30 and granted.ack_req  # T2 left, and the Floor Ack asked for
        st = await r.astatus()
        g = group_entry(st, G)
        assert g["floor_state"] == "G: Floor Taken" and g["holder"] == "ann@no"
        ann.release()
        await expect({ann: [("Idle", NORMAL)], bob: [("Idle", NORMAL)], cat: [("Idle", NORMAL)]}, G)
        # Acknowledged (the devices send Floor Ack by themselves): T7 and T20 repeat nothing.
        await nothing_more([ann, bob, cat], 1.2)
        st = await r.astatus()
        assert group_entry(st, G)["floor_state"] == "G: Floor Idle"
        assert st["counters"]["rx_datagrams"] == st["counters"]["accepted"] + sum(
            v for k, v in st["counters"].items() if k.startswith("drop_")
        )
    finally:
        close_all(cl)


async def voice_fan_out(r: RelayProc, secrets: dict[str, bytes]) -> None:
    # dan listens to fire-2 only, eve is registered in fire-2: neither is in fire-1.
    cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G, G2], "dan": [G2], "eve": [G2]})
    ann, bob, cat, dan, eve = (cl[n] for n in ("ann", "bob", "cat", "dan", "eve"))
    try:
        ann.request(group=G)
        await expect(
            {
                ann: [("Granted", "ann@no", 0, NORMAL)],
                bob: [("Taken", "ann@no", 1, NORMAL)],
                cat: [("Taken", "ann@no", 1, NORMAL)],
                dan: [],
                eve: [],
            },
            G,
        )
        before = await r.astatus()
        sent = await ann.talk(8)
        await wait_for(lambda: len(bob.voice_log) >= 8 and len(cat.voice_log) >= 8, 5, "voice at bob and cat")
        await asyncio.sleep(0.15)
        sent_as_heard(sent, bob.heard())
        sent_as_heard(sent, cat.heard())
        for c in (ann, dan, eve):
            assert c.heard() == [], c
        st = await r.astatus()
        assert counter(st, "voice_in") - counter(before, "voice_in") == 8
        assert counter(st, "voice_out") - counter(before, "voice_out") == 16
        # Voice from a member without the floor: dropped, counted, answered with Floor Revoke 3.
        await bob.talk(2)
        await expect({bob: [("Revoke", mcpt.REVOKE_NO_PERMISSION, NORMAL)], ann: [], cat: []}, G)
        await nothing_more([ann, cat, dan, eve], 0.1)
        st = await r.astatus()
        assert counter(st, "drop_rtp_not_permitted") == 2
    finally:
        close_all(cl)


async def preemption(r: RelayProc, secrets: dict[str, bytes]) -> None:
    cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G], "dan": [G]})
    ann, bob, cat, dan = (cl[n] for n in ("ann", "bob", "cat", "dan"))
    try:
        ann.request(prio=100)
        await expect(
            {
                ann: [("Granted", "ann@no", 100, NORMAL)],
                bob: [("Taken", "ann@no", 1, NORMAL)],
                cat: [("Taken", "ann@no", 1, NORMAL)],
                dan: [("Taken", "ann@no", 1, NORMAL)],
            },
            G,
        )
        # cat (ceiling 200) outranks ann: ann is told Floor Revoke cause 4, cat waits first in line.
        cat.request(prio=150)
        await expect(
            {ann: [("Revoke", mcpt.REVOKE_PREEMPTED, NORMAL)], cat: [("Queue", 1)], bob: [], dan: []}, G
        )
        ann.release()  # as a client does on Floor Revoke
        await expect(
            {
                cat: [("Granted", "cat@no", 150, NORMAL)],
                ann: [("Taken", "cat@no", 1, NORMAL)],
                bob: [("Taken", "cat@no", 1, NORMAL)],
                dan: [("Taken", "cat@no", 1, NORMAL)],
            },
            G,
        )
        # dan asks for 255, but its ceiling is 50: capped, it cannot pre-empt; it is queued.
        dan.request(prio=255)
        await expect({dan: [("Queue", 1)], cat: [], ann: [], bob: []}, G)
        st = await r.astatus()
        g = group_entry(st, G)
        assert g["holder"] == "cat@no" and g["queue"] == [["dan@no", 50]]
    finally:
        close_all(cl)


SHARED = {"grant_when_idle": grant_when_idle, "voice_fan_out": voice_fan_out, "preemption": preemption}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(SHARED))
def test_shared_scenario(name: str, runtime: str) -> None:
    run(SHARED[name], runtime)


# --- CPython relay ------------------------------------------------------------------------------------


def test_deny_when_busy_without_queueing() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
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
            bob.request(queue=False)
            await expect({bob: [("Deny", mcpt.DENY_ANOTHER_HAS_PERMISSION, NORMAL)], ann: [], cat: []}, G)
            st = await r.astatus()
            g = group_entry(st, G)
            assert g["holder"] == "ann@no" and g["queue"] == []
        finally:
            close_all(cl)

    run(scenario)


def test_queue_then_grant() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
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
            bob.request()
            await expect({bob: [("Queue", 1)], ann: [], cat: []}, G)
            cat.request()
            await expect({cat: [("Queue", 2)], ann: [], bob: []}, G)
            ann.release()
            await expect(
                {
                    bob: [("Granted", "bob@no", 0, NORMAL)],
                    ann: [("Taken", "bob@no", 1, NORMAL)],
                    cat: [("Taken", "bob@no", 1, NORMAL)],
                },
                G,
            )
            cat.queue_position_request()  # moved up
            await expect({cat: [("Queue", 1)], ann: [], bob: []}, G)
            bob.release()
            await expect(
                {
                    cat: [("Granted", "cat@no", 0, NORMAL)],
                    ann: [("Taken", "cat@no", 1, NORMAL)],
                    bob: [("Taken", "cat@no", 1, NORMAL)],
                },
                G,
            )
        finally:
            close_all(cl)

    run(scenario)


async def _emergency_raised(ann: Client, bob: Client, cat: Client) -> None:
    """cat holds the floor at 200; bob's emergency request pre-empts it."""
    cat.request(prio=200)
    await expect(
        {
            cat: [("Granted", "cat@no", 200, NORMAL)],
            ann: [("Taken", "cat@no", 1, NORMAL)],
            bob: [("Taken", "cat@no", 1, NORMAL)],
        },
        G,
    )
    bob.request(ind=mcpt.IND_EMERGENCY)
    await expect({cat: [("Revoke", mcpt.REVOKE_PREEMPTED, EMERGENCY)], bob: [("Queue", 1)], ann: []}, G)
    cat.release()
    await expect(
        {
            bob: [("Granted", "bob@no", 255, EMERGENCY)],
            ann: [("Taken", "bob@no", 1, EMERGENCY)],
            cat: [("Taken", "bob@no", 1, EMERGENCY)],
        },
        G,
    )


def test_emergency_preempts_and_the_device_cancels_it() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
        try:
            await _emergency_raised(ann, bob, cat)
            assert group_entry(await r.astatus(), G)["emergency"] is True
            # Someone else's cancel changes nothing.
            ann.act(lambda now: ann.dev.cancel_emergency(now, G), "cancel")
            await nothing_more([ann, bob, cat], 0.3)
            assert group_entry(await r.astatus(), G)["emergency"] is True
            # bob ends it: the burst carries on at bob's own priority, and everyone is told.
            bob.act(lambda now: bob.dev.cancel_emergency(now, G), "cancel")
            await expect(
                {
                    bob: [("Granted", "bob@no", 0, NORMAL)],
                    ann: [("Taken", "bob@no", 1, NORMAL)],
                    cat: [("Taken", "bob@no", 1, NORMAL)],
                },
                G,
            )
            assert group_entry(await r.astatus(), G)["emergency"] is False
        finally:
            close_all(cl)

    run(scenario)


def test_emergency_cancelled_by_a_dispatcher_through_the_admin_channel() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
        try:
            await _emergency_raised(ann, bob, cat)
            # bob also raises an emergency alert: the others are told (relay -> device requests).
            bob.act(lambda now: bob.dev.emergency(now, G), "alert")
            for c in (ann, cat):
                await c.until(lambda c=c: bool(c.events("emergency_alert")), 5, "emergency alert")
                assert c.events("emergency_alert") == [("emergency_alert", G, "bob@no", None)]
            assert bob.events("emergency_alert") == []
            st = await r.astatus()
            assert group_entry(st, G)["alerts"] == ["bob@no"]
            # The dispatcher ends it with the operator's command.
            res = await asyncio.to_thread(r.control, "cancel-emergency", G)
            assert res.returncode == 0, res.stderr
            assert f"cancel-emergency {G}: emergency cancelled" in res.stdout
            await expect(
                {
                    bob: [("Granted", "bob@no", 0, NORMAL)],
                    ann: [("Taken", "bob@no", 1, NORMAL)],
                    cat: [("Taken", "bob@no", 1, NORMAL)],
                },
                G,
            )
            for c in (ann, cat):
                await c.until(lambda c=c: bool(c.events("emergency_cancel")), 5, "emergency cancel")
                assert c.events("emergency_cancel") == [("emergency_cancel", G, None)]
            st = await r.astatus()
            g = group_entry(st, G)
            assert g["emergency"] is False and g["alerts"] == [] and g["holder"] == "bob@no"
            assert st["driver"]["admin_done"] == 1
        finally:
            close_all(cl)

    run(scenario)


T2_FLOOR = {"t1": 1.0, "t2": 1.5, "t3": 0.3, "t7": 1.0, "t20": 1.0}


def test_t2_expiry_revokes_then_releases() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
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
            t_grant, _, granted = ann.floor_log[-1]
            assert granted.duration == 2  # T2 1.5 s, rounded up
            # ann talks until the relay says the burst is too long, then stops (without a release).
            sent = []
            while not ann.pending_floors():
                sent += await ann.talk(1)
                await asyncio.sleep(0.05)
                assert time.monotonic() - t_grant < 5, "no Floor Revoke"
            t_revoke = ann.pending_floors()[0][0]
            await expect(
                {
                    ann: [("Revoke", mcpt.REVOKE_BURST_TOO_LONG, NORMAL), ("Idle", NORMAL)],
                    bob: [("Idle", NORMAL)],
                    cat: [("Idle", NORMAL)],
                },
                G,
            )
            t_idle = ann.floor_log[-1][0]
            assert 1.3 <= t_revoke - t_grant <= 2.5, t_revoke - t_grant  # T2
            assert 0.2 <= t_idle - t_revoke <= 1.0, t_idle - t_revoke  # T3
            # Everything ann sent before the forced release reached the others.
            sent_as_heard(sent, bob.heard())
            sent_as_heard(sent, cat.heard())
        finally:
            close_all(cl)

    run(scenario, floor=T2_FLOOR)


def test_t1_idle_after_media_stops() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
        try:
            ann.request()
            await expect(
                {
                    ann: [("Granted", "ann@no", 0, NORMAL)],
                    bob: [("Taken", "ann@no", 1, NORMAL)],
                    cat: [("Taken", "ann@no", 1, NORMAL)],
                },
                G,
                settle=0,
            )
            sent = await ann.talk(10, every=0.05)  # each packet restarts T1 (0.4 s)
            t_last = ann.ep.sent[-1][0]
            await expect({ann: [("Idle", NORMAL)], bob: [("Idle", NORMAL)], cat: [("Idle", NORMAL)]}, G)
            t_idle = bob.floor_log[-1][0]
            assert 0.3 <= t_idle - t_last <= 1.2, t_idle - t_last
            sent_as_heard(sent, bob.heard())
            sent_as_heard(sent, cat.heard())
        finally:
            close_all(cl)

    run(scenario, floor={"t1": 0.4, "t2": 1.5, "t3": 0.3, "t7": 1.0, "t20": 1.0})


def test_holder_deregisters() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
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
            ann.act(ann.dev.deregister, "deregister")
            await expect({bob: [("Idle", NORMAL)], cat: [("Idle", NORMAL)], ann: []}, G)
            assert ("deregistered",) in ann.events("deregistered")
            st = await r.astatus()
            assert device_entry(st, "ann@no") is None and counter(st, "deregistrations") == 1
            assert group_entry(st, G)["holder"] is None
        finally:
            close_all(cl)

    run(scenario)


def test_holder_goes_silent() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "cat": [G]})
        ann, bob, cat = cl["ann"], cl["bob"], cl["cat"]
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
            t0 = time.monotonic()
            ann.close()  # out of reach: no keep-alive, nothing
            await expect({bob: [("Idle", NORMAL)], cat: [("Idle", NORMAL)]}, G, timeout=8)
            dt = bob.floor_log[-1][0] - t0
            # 3.5 keep-alive intervals after its last sign of life, well before T1 (8 s).
            assert 2.4 <= dt <= 5.0, dt
            st = await r.astatus()
            assert device_entry(st, "ann@no") is None and counter(st, "sessions_expired") == 1
        finally:
            close_all(cl)

    run(scenario)


def test_late_entry_gets_floor_taken_and_the_voice_at_once() -> None:
    async def scenario(r: RelayProc, secrets: dict[str, bytes]) -> None:
        cl = await start_clients(r, secrets, {"ann": [G], "bob": [G], "dan": [G2]})
        ann, bob, dan = cl["ann"], cl["bob"], cl["dan"]
        try:
            ann.request()
            await expect(
                {ann: [("Granted", "ann@no", 0, NORMAL)], bob: [("Taken", "ann@no", 1, NORMAL)], dan: []}, G
            )
            before = await ann.talk(3)
            await wait_for(lambda: len(bob.voice_log) >= 3, 5, "voice at bob")
            dan.act(lambda now: dan.dev.affiliate(now, [G]), "affiliate")
            await expect({dan: [("Taken", "ann@no", 1, NORMAL)], ann: [], bob: []}, G)
            assert ("affiliation", G, sig.AFF_OK) in dan.events("affiliation")
            after = await ann.talk(4)
            await wait_for(lambda: len(dan.voice_log) >= 4 and len(bob.voice_log) >= 7, 5, "voice")
            await asyncio.sleep(0.1)
            sent_as_heard(after, dan.heard())
            sent_as_heard(before + after, bob.heard())
        finally:
            close_all(cl)

    run(scenario)
