"""SqliteStore (opmob_host.sqlite_store): the store behaviours, file mode, and durability when the
process is killed with SIGKILL right after a write returned (also FileStore on both runtimes)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opmob.registry import Registry
from opmob.store import FileStore, StoreError
from opmob_host.sqlite_store import SqliteStore
from store_cases import DEV_A, DEV_B, bad_input, batch, closed, crud

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
EXAMPLE = ROOT / "boards" / "rpi-relay" / "registry-example.json"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_crud(tmp_path: Path) -> None:
    crud(SqliteStore(tmp_path / "r.sqlite"))


def test_refuses_bad_input(tmp_path: Path) -> None:
    bad_input(SqliteStore(tmp_path / "r.sqlite"))
    assert SqliteStore(tmp_path / "r.sqlite").items("device") == [("a@no", DEV_A)]


def test_batch_and_reopen(tmp_path: Path) -> None:
    batch(SqliteStore(tmp_path / "r.sqlite"))
    s = SqliteStore(tmp_path / "r.sqlite")
    assert s.items("device") == [("b@no", {"vid": 1})]
    assert s.items("group") == [("g@no", {"policy": "members"})]


def test_closed(tmp_path: Path) -> None:
    closed(SqliteStore(tmp_path / "r.sqlite"))


def test_persists_across_reopen_and_lists_keys_in_code_point_order(tmp_path: Path) -> None:
    p = tmp_path / "r.sqlite"
    s = SqliteStore(p)
    keys = ["b@no", "a@no", "Z", "é@no", "a.b@no", "a@no2"]
    for i, k in enumerate(keys):
        s.put("registration", k, {"i": i})
    s.close()
    s2 = SqliteStore(str(p))
    assert [k for k, _ in s2.items("registration")] == sorted(keys)
    assert s2.get("registration", "é@no") == {"i": 3}


def test_file_modes_and_durable_settings(tmp_path: Path) -> None:
    p = tmp_path / "r.sqlite"
    old = os.umask(0o022)
    try:
        s = SqliteStore(p)
        s.put("device", "a@no", DEV_A)
    finally:
        os.umask(old)
    assert mode(p) == 0o600
    wal = tmp_path / "r.sqlite-wal"
    assert wal.exists() and mode(wal) == 0o600
    db = s._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is synced per commit
    s.close()
    # A file someone left readable by others is narrowed.
    p.chmod(0o644)
    SqliteStore(p).close()
    assert mode(p) == 0o600


def test_damaged_or_foreign_files_are_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all, not even a little" * 100)
    with pytest.raises(StoreError, match="damaged or not an OpMob store"):
        SqliteStore(junk)

    # Truncated mid-page: SQLite notices the missing pages.
    good = tmp_path / "good.sqlite"
    s = SqliteStore(good)
    s.apply([("put", "device", f"d{i:03d}@no", DEV_B) for i in range(400)])
    s.close()
    data = good.read_bytes()
    cut = tmp_path / "cut.sqlite"
    cut.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(StoreError):
        s2 = SqliteStore(cut)
        s2.items("device")

    # A newer schema than this code knows.
    newer = tmp_path / "newer.sqlite"
    SqliteStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version=7")
    con.close()
    with pytest.raises(StoreError, match="version 7"):
        SqliteStore(newer)

    # A row whose value is not a JSON object.
    bad = tmp_path / "bad.sqlite"
    s = SqliteStore(bad)
    s.put("device", "a@no", DEV_A)
    s.close()
    con = sqlite3.connect(bad)
    con.execute("UPDATE kv SET value = '[1, 2' WHERE key = 'a@no'")
    con.commit()
    con.close()
    s = SqliteStore(bad)
    with pytest.raises(StoreError, match="device/a@no"):
        s.get("device", "a@no")
    with pytest.raises(StoreError, match="device/a@no"):
        s.items("device")

    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "no" / "such" / "dir" / "r.sqlite")


def test_registry_on_sqlite(tmp_path: Path) -> None:
    p = tmp_path / "r.sqlite"
    reg = Registry(SqliteStore(p), "no")
    reg.load_export(json.loads(EXAMPLE.read_text()))
    assert reg.next_vector("ola.nordmann@no", bytes(16))[0] == 1
    reg2 = Registry(SqliteStore(p), "no")
    assert reg2.export() == reg.export()
    assert reg2.next_vector("ola.nordmann@no", bytes(16))[0] == 2


# --- durability: SIGKILL right after a write returned ----------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    kind = sys.argv[1]
    path = sys.argv[2]
    if kind == "sqlite":
        from opmob_host.sqlite_store import SqliteStore
        store = SqliteStore(path)
    else:
        from opmob.store import FileStore
        store = FileStore(path)
    if len(sys.argv) > 3:
        from opmob.registry import Registry
        import json
        reg = Registry(store, "no")
        with open(sys.argv[3]) as f:
            reg.load_export(json.load(f))
        print("ready")
        while True:
            vid = reg.next_vector("ola.nordmann@no", b"\\x01" * 16)[0]
            print(vid)
    else:
        print("ready")
        i = 0
        while True:
            store.put("registration", "dev-%d@no" % i, {"session": i})
            print(i)
            i += 1
    """
)


def _run_and_kill(cmd: list[str], env: dict[str, str], after: int) -> int:
    """Start a writer, read its acknowledgements, SIGKILL it right after ack number ``after``;
    returns the last acknowledged value."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        last = -1
        for _ in range(after):
            line = proc.stdout.readline()
            assert line, "writer died early"
            last = int(line)
        # The ack is printed after the write returned; kill before anything else can happen.
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return last


def _writer_cmd(
    tmp_path: Path, runtime: str, kind: str, target: Path, *extra: str
) -> tuple[list[str], dict[str, str]]:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = dict(os.environ)
    if runtime == "micropython":
        env["MICROPYPATH"] = f"{ROOT / 'firmware'}:.frozen"
        return [str(MICROPYTHON), str(script), kind, str(target), *extra], env
    # An ack must leave the process the moment it is printed (MicroPython's print is unbuffered).
    env["PYTHONUNBUFFERED"] = "1"
    return [sys.executable, str(script), kind, str(target), *extra], env


@pytest.mark.parametrize(
    "runtime,kind",
    [("cpython", "sqlite"), ("cpython", "file"), ("micropython", "file")],
)
def test_a_put_that_returned_survives_sigkill(tmp_path: Path, runtime: str, kind: str) -> None:
    target = tmp_path / ("r.sqlite" if kind == "sqlite" else "store")
    cmd, env = _writer_cmd(tmp_path, runtime, kind, target)
    last = _run_and_kill(cmd, env, after=60)
    s = SqliteStore(target) if kind == "sqlite" else FileStore(str(target))
    got = dict(s.items("registration"))
    for i in range(last + 1):
        assert got.get(f"dev-{i}@no") == {"session": i}, i
    # The kill may have landed inside the next put: it is there whole or not at all.
    assert set(got) <= {f"dev-{i}@no" for i in range(last + 2)}


@pytest.mark.parametrize("runtime,kind", [("cpython", "sqlite"), ("micropython", "file")])
def test_a_vid_that_was_issued_is_never_issued_again_after_sigkill(
    tmp_path: Path, runtime: str, kind: str
) -> None:
    target = tmp_path / ("r.sqlite" if kind == "sqlite" else "store")
    cmd, env = _writer_cmd(tmp_path, runtime, kind, target, str(EXAMPLE))
    last = _run_and_kill(cmd, env, after=25)
    assert last == 25
    store = SqliteStore(target) if kind == "sqlite" else FileStore(str(target))
    reg = Registry(store, "no")
    assert reg.next_vector("ola.nordmann@no", bytes(16))[0] > last


def test_a_failed_write_is_a_store_error_and_changes_nothing(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "r.sqlite")
    s.put("device", "a@no", DEV_A)
    s._conn().execute("PRAGMA query_only=ON")  # every write now fails inside SQLite
    with pytest.raises(StoreError, match="cannot write"):
        s.apply([("put", "device", "b@no", DEV_B), ("delete", "device", "a@no")])
    assert not s._conn().in_transaction
    s._conn().execute("PRAGMA query_only=OFF")
    assert s.items("device") == [("a@no", DEV_A)]
    s.put("device", "b@no", DEV_B)
    assert [k for k, _ in s.items("device")] == ["a@no", "b@no"]
