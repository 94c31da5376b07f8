"""Store behaviours every store must show (MemoryStore, FileStore, SqliteStore).

Shared by tests/fw/test_store.py (both runtimes) and tests/host/test_sqlite_store.py.
"""

from fwtest import IS_MICROPYTHON, raises
from opmob.store import StoreError

DEV_A = {"secret": "00" * 16, "groups": ["fire-oslo@no"], "ceiling": 200, "vid": 3}
DEV_B = {"secret": "11" * 16, "groups": [], "ceiling": 10, "vid": 0}


def crud(store):
    assert store.get("device", "a@no") is None
    assert store.items("device") == []
    store.put("device", "b@no", DEV_B)
    store.put("device", "a@no", DEV_A)
    store.put("group", "a@no", {"policy": "open"})  # same key, other kind: separate
    assert store.get("device", "a@no") == DEV_A
    assert store.items("device") == [("a@no", DEV_A), ("b@no", DEV_B)]
    assert store.items("group") == [("a@no", {"policy": "open"})]
    # get hands out a copy: changing it changes nothing stored.
    got = store.get("device", "a@no")
    got["groups"].append("x@no")
    got["vid"] = 99
    assert store.get("device", "a@no") == DEV_A
    # put replaces the whole value.
    store.put("device", "a@no", {"vid": 4})
    assert store.get("device", "a@no") == {"vid": 4}
    store.delete("device", "a@no")
    store.delete("device", "a@no")  # deleting what is not there is not an error
    store.delete("nothing", "x")
    assert store.get("device", "a@no") is None
    assert store.items("device") == [("b@no", DEV_B)]
    assert store.get("group", "a@no") == {"policy": "open"}
    # Non-ASCII text and nesting survive.
    v = {"name": "Åsa Ørn \u2028", "nested": {"l": [1, 2.5, None, True, "x"]}}
    store.put("meta", "k", v)
    assert store.get("meta", "k") == v


def bad_input(store):
    store.put("device", "a@no", DEV_A)
    bad_values = [
        [1, 2],  # not a dict
        "text",
        None,
        {"k": b"\x00\x01"},  # bytes would come back as a string
        {"k": (1, 2)},  # a tuple would come back as a list
        {1: "int key"},  # would come back as "1"
        {"k": {"inner": object()}},
    ]
    if not IS_MICROPYTHON:
        bad_values.append({"k": float("nan")})  # CPython writes NaN as a bare word, not JSON
    for v in bad_values:
        raises(ValueError, store.put, "device", "c@no", v)
    for kind in ("", "Device", "1x", "a-b", "_batch", "x" * 33, None, 7):
        raises(ValueError, store.put, kind, "k", {})
        raises(ValueError, store.get, kind, "k")
    for key in ("", "k" * 256, None, 5, b"k"):
        raises(ValueError, store.put, "device", key, {})
        raises(ValueError, store.get, "device", key)
    # A batch with one bad op applies none of it.
    raises(
        ValueError,
        store.apply,
        [("put", "device", "c@no", {"ok": 1}), ("delete", "device", "a@no"), ("put", "device", "d@no", b"x")],
    )
    raises(ValueError, store.apply, [("put", "device", "c@no", {"ok": 1}), ("frobnicate", "device", "a@no")])
    raises(ValueError, store.apply, [("delete", "device")])
    assert store.items("device") == [("a@no", DEV_A)]


def batch(store):
    store.put("device", "a@no", DEV_A)
    store.apply(
        [
            ("put", "device", "b@no", DEV_B),
            ("delete", "device", "a@no"),
            ("put", "group", "g@no", {"policy": "members"}),
            ("put", "device", "b@no", {"vid": 1}),  # later op wins
        ]
    )
    assert store.items("device") == [("b@no", {"vid": 1})]
    assert store.items("group") == [("g@no", {"policy": "members"})]
    store.apply([])


def closed(store):
    store.put("device", "a@no", DEV_A)
    store.close()
    store.close()  # idempotent
    raises(StoreError, store.get, "device", "a@no")
    raises(StoreError, store.put, "device", "a@no", DEV_A)
    raises(StoreError, store.items, "device")
    raises(StoreError, store.delete, "device", "a@no")
