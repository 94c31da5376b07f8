"""SqliteStore: the relay's store on CPython (Raspberry Pi), same interface as opmob.store.

One table ``kv(kind, key, value)`` holding each value's JSON text. The database runs in WAL mode
with ``synchronous=FULL``, so each commit is synced before ``put`` returns: a relay killed (or
losing power) right after a put still has it. The file holds device secrets, so it is created
with mode 0600 and an existing file is narrowed to 0600; SQLite gives its -wal and -shm files
the database file's mode.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from typing import Any

from opmob.store import StoreError, check_key, check_kind, normalise_ops

SCHEMA_VERSION = 1  # PRAGMA user_version of a store this code wrote

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID
"""


class SqliteStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._db: sqlite3.Connection | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot open the store {self.path}: {e.strerror}") from None
        try:
            # Autocommit: every statement outside an explicit BEGIN is its own durable transaction.
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"{self.path} has store version {version}; this code reads {SCHEMA_VERSION}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"{self.path} is damaged: {check}")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"{self.path} is damaged or not an OpMob store: {e}") from None
        except StoreError:
            db.close()
            raise
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is closed")
        return self._db

    def _decode(self, kind: str, key: str, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise StoreError(f"{self.path} is damaged: the value of {kind}/{key} is not a JSON object")
        return value

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        db = self._conn()
        check_kind(kind)
        check_key(key)
        try:
            row = db.execute("SELECT value FROM kv WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from None
        return None if row is None else self._decode(kind, key, row[0])

    def items(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        db = self._conn()
        check_kind(kind)
        try:
            rows = db.execute("SELECT key, value FROM kv WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from None
        # ORDER BY uses SQLite's byte order; sort in Python so every store lists keys alike.
        return sorted(((k, self._decode(kind, k, v)) for k, v in rows), key=lambda kv: kv[0])

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self.apply((("put", kind, key, value),))

    def delete(self, kind: str, key: str) -> None:
        self.apply((("delete", kind, key),))

    def apply(self, ops: Iterable[Sequence[Any]]) -> None:
        """Several puts and deletes in one transaction: all of them or none."""
        db = self._conn()
        checked = normalise_ops(ops)
        if not checked:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for kind, key, text in checked:
                    if text is None:
                        db.execute("DELETE FROM kv WHERE kind = ? AND key = ?", (kind, key))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO kv (kind, key, value) VALUES (?, ?, ?)", (kind, key, text)
                        )
                db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may already have rolled back; a second ROLLBACK would hide why.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot write {self.path}: {e}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
