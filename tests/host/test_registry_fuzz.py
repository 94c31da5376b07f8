"""Bad input to what a relay reads at start (hypothesis, >= 10,000 cases each): a registry export,
a relay configuration and a store file either load or raise their typed error (RegistryError,
ConfigError, StoreError), nothing else; a refused export changes nothing."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from fuzzing import fuzz
from hypothesis import example, given
from hypothesis import strategies as st
from opmob.registry import Registry, RegistryError
from opmob.relay_config import ConfigError, RelayConfig
from opmob.store import FileStore, MemoryStore, StoreError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "boards" / "rpi-relay" / "registry-example.json").read_text())
CONFIG = {
    "relay": {"identity": "relay-1@no", "system": "no"},
    "listen": {"host": "0.0.0.0", "port": 7700},
    "registry": {"path": "/tmp/r.sqlite", "import": "/tmp/x.json"},
    "timers": {"keepalive": 15, "expiry": 3600},
    "floor": {"t1": 4.0, "t2": 30.0, "c7": 10, "queueing": True, "queue_max": 8},
}

# Values that sit on the edges of the rules, plus arbitrary ones; drawing from a pool keeps each
# case cheap, so the 10,000 cases go to the code under test rather than to generating them.
EDGES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    7,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    1.5,
    -0.0,
    1e308,
    "",
    " ",
    "no",
    "se",
    "NO",
    "a@no",
    "a@se",
    "fire-oslo@no",
    "fire-oslo@se",
    "x@y@no",
    "é@no",
    "open",
    "members",
    "active",
    "stunned",
    "killed",
    "home",
    "partner",
    "opmob-registry",
    "00" * 16,
    "0" * 31,
    "zz" * 16,
    "0.0.0.0",
    "relay-1@no",
    "/tmp/x",
    [],
    {},
    ["a@no"],
    ["fire-oslo@no", "fire-oslo@no"],
    [1, 2],
    [1, 1],
    [65536],
    {"a": 1},
    [[]],
    [None],
]
json_values = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.sampled_from(EDGES), max_size=3),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(doc: Any, data: st.DataObject, n: int) -> Any:
    """Replace, delete or add at ``n`` random places of a copy of ``doc``."""
    doc = json.loads(json.dumps(doc))
    for _ in range(n):
        path = data.draw(st.sampled_from(_paths(doc)))
        value = copy.deepcopy(data.draw(json_values))  # EDGES must never change under us
        if not path:
            doc = value
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        how = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if how == "replace":
            parent[path[-1]] = value
        elif how == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = value
        else:
            parent.append(value)
    return doc


@fuzz
@given(data=st.data(), n=st.integers(1, 3))
def test_export_loads_or_raises_registry_error(data: st.DataObject, n: int) -> None:
    store = MemoryStore()
    reg = Registry(store, "no")
    reg.load_export(EXAMPLE)
    before = (store.items("device"), store.items("group"), reg.devices(), reg.groups())
    doc = _mutate(EXAMPLE, data, n)
    try:
        reg.load_export(doc)
    except RegistryError as e:
        assert e.record and str(e)
        for d in EXAMPLE["devices"]:
            assert d["secret"] not in str(e)
        assert (store.items("device"), store.items("group"), reg.devices(), reg.groups()) == before
        return
    # Accepted: what it holds must export, and a fresh registry reads that export back.
    out = reg.export()
    again = Registry(MemoryStore(), "no")
    again.load_export(json.loads(json.dumps(out)))
    assert again.export() == out


@fuzz
@given(data=st.data(), n=st.integers(1, 3))
def test_config_loads_or_raises_config_error(data: st.DataObject, n: int) -> None:
    doc = _mutate(CONFIG, data, n)
    try:
        cfg = RelayConfig.from_dict(doc)
    except ConfigError as e:
        assert e.problems and all(isinstance(k, str) and msg for k, msg in e.problems)
        return
    assert RelayConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


_STORE_DIR = tempfile.TemporaryDirectory(prefix="opmob-fuzz-")
_GOOD = Path(_STORE_DIR.name) / "seed"
_seed = FileStore(str(_GOOD))
_seed.apply([("put", "device", f"d{i}@no", {"ceiling": i, "groups": ["g@no"]}) for i in range(6)])
_seed.close()
GOOD_FILE = (_GOOD / "device.json").read_bytes()


@fuzz
@given(
    edits=st.lists(st.tuples(st.integers(0, len(GOOD_FILE) - 1), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, len(GOOD_FILE)),
    junk=st.binary(max_size=300),
    which=st.sampled_from(["edit", "cut", "junk"]),
)
@example(edits=[(25, 9)], cut=0, junk=b"", which="edit")  # a space in the header turned into a tab
def test_store_file_loads_or_raises_store_error(
    edits: list[tuple[int, int]], cut: int, junk: bytes, which: str
) -> None:
    if which == "edit":
        b = bytearray(GOOD_FILE)
        for i, v in edits:
            b[i] = v
        data = bytes(b)
    elif which == "cut":
        data = GOOD_FILE[:cut]
    else:
        data = junk
    d = Path(_STORE_DIR.name) / "case"
    d.mkdir(exist_ok=True)
    (d / "device.json").write_bytes(data)
    try:
        s = FileStore(str(d))
    except StoreError:
        return
    # Only a file whose body is intact (the checksum holds) may load, and then it reads as it was
    # written. The header is checked by meaning, not by bytes: an edit that leaves the same JSON
    # (a space turned into a tab) changes nothing that is read.
    nl = GOOD_FILE.index(b"\n")
    assert data[nl:] == GOOD_FILE[nl:]
    assert json.loads(data[:nl]) == json.loads(GOOD_FILE[:nl])
    assert s.items("device") == [(f"d{i}@no", {"ceiling": i, "groups": ["g@no"]}) for i in range(6)]
