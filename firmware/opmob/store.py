"""Key-value store of JSON-able dicts by kind: what a relay must remember across a restart.

A *kind* names a table ("device", "group", "registration", "affiliation", "meta"); within it each
value is a dict under a string key. Every store behaves the same:

    get(kind, key) -> dict | None       put(kind, key, value)       delete(kind, key)
    items(kind) -> [(key, dict)] sorted by key                       close()
    apply(ops): several puts/deletes, all or nothing; ops are ("put", kind, key, value) and
                ("delete", kind, key)

Values go through JSON on the way in, so every store hands back the same thing: ``get`` returns a
fresh dict the caller may change, and a value JSON cannot carry faithfully (bytes, tuples, NaN,
non-string keys) is refused with ValueError rather than coming back different.

``MemoryStore`` keeps nothing; ``FileStore`` (both runtimes) keeps one file per kind in a
directory; ``opmob_host.sqlite_store.SqliteStore`` (CPython) keeps a SQLite file. A write has
reached the file system when the call returns; a damaged file raises StoreError when opened,
never loads as empty.
"""

import binascii
import hashlib
import json
import os

from opmob.compat import fsync_dir, fsync_file, mkdir_private, open_private

FORMAT = "opmob-store"
VERSION = 1
MAX_KEY = 255
MAX_KIND = 32
JOURNAL = "_batch"  # not a valid kind name (kinds start with a letter), so never a kind's file

_KIND_FIRST = "abcdefghijklmnopqrstuvwxyz"
_KIND_REST = _KIND_FIRST + "0123456789_"


class StoreError(Exception):
    """The store cannot be read or written: damaged or foreign file, I/O failure, closed."""


def check_kind(kind):
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND or kind[0] not in _KIND_FIRST:
        raise ValueError("store kind must be a lower-case name of at most %d characters" % MAX_KIND)
    for c in kind:
        if c not in _KIND_REST:
            raise ValueError("store kind may hold only a-z, 0-9 and _")


def check_key(key):
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
        raise ValueError("store key must be a non-empty str of at most %d characters" % MAX_KEY)


def encode_value(value):
    """The JSON text of ``value``; ValueError when JSON would not give the same dict back."""
    if not isinstance(value, dict):
        raise ValueError("store value must be a dict")
    try:
        text = json.dumps(value)
        back = json.loads(text)
    except (TypeError, ValueError):
        raise ValueError("store value is not JSON-able")
    # MicroPython writes bytes as a string and CPython writes NaN as a bare word; both come back
    # different (or not at all), so equality after the round trip is the one portable test.
    if back != value:
        raise ValueError("store value does not survive JSON (use str keys, lists, no bytes or NaN)")
    return text


def normalise_ops(ops):
    """Check every op before any is applied: ``[(kind, key, text or None for delete)]``."""
    out = []
    for op in ops:
        if not isinstance(op, (tuple, list)) or not op:
            raise ValueError("store op must be a tuple")
        if op[0] == "put" and len(op) == 4:
            check_kind(op[1])
            check_key(op[2])
            out.append((op[1], op[2], encode_value(op[3])))
        elif op[0] == "delete" and len(op) == 3:
            check_kind(op[1])
            check_key(op[2])
            out.append((op[1], op[2], None))
        else:
            raise ValueError("store op must be ('put', kind, key, value) or ('delete', kind, key)")
    return out


class _DictStore:
    """Values held as JSON text per kind; subclasses decide what a commit writes."""

    def __init__(self):
        self._data = {}  # kind -> {key: json text}
        self._closed = False

    def _live(self):
        if self._closed:
            raise StoreError("store is closed")

    def get(self, kind, key):
        self._live()
        check_kind(kind)
        check_key(key)
        m = self._data.get(kind)
        text = None if m is None else m.get(key)
        return None if text is None else json.loads(text)

    def items(self, kind):
        self._live()
        check_kind(kind)
        m = self._data.get(kind)
        if not m:
            return []
        return [(k, json.loads(m[k])) for k in sorted(m)]

    def put(self, kind, key, value):
        self.apply((("put", kind, key, value),))

    def delete(self, kind, key):
        self.apply((("delete", kind, key),))

    def close(self):
        self._closed = True


class MemoryStore(_DictStore):
    """A store that forgets everything when the process ends: tests and simulations."""

    def apply(self, ops):
        self._live()
        for kind, key, text in normalise_ops(ops):
            m = self._data.get(kind)
            if m is None:
                m = self._data[kind] = {}
            if text is None:
                m.pop(key, None)
            else:
                m[key] = text


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _digest(body):
    return binascii.hexlify(hashlib.sha256(body).digest()).decode()


def _body(m):
    return ("{" + ",".join(json.dumps(k) + ":" + m[k] for k in sorted(m)) + "}").encode()


class FileStore(_DictStore):
    """One file per kind in ``dirpath``, each rewritten whole and replaced atomically.

    A file is a header line ``{"format", "version", "kind", "sha256"}`` and a JSON body whose
    SHA-256 the header holds, so truncation or a flipped bit is caught on opening (StoreError)
    instead of loading as fewer records. Each write goes to ``<kind>.json.tmp``, is synced and
    renamed over ``<kind>.json``. Where a file system will not rename over an existing file (FAT),
    the old file is removed first; a complete temp file without its target is therefore promoted
    on opening, and an incomplete one (a write that never returned) dropped.

    ``apply`` over several kinds writes the whole batch to a journal first (``_batch.json``, the
    commit point), then each kind's file, then removes the journal; opening replays a journal
    left by a crash, so a batch is all or nothing even across files.

    Rewriting a whole kind per put suits a mini relay (tens of devices); a Raspberry Pi relay uses
    SqliteStore.
    """

    def __init__(self, dirpath):
        _DictStore.__init__(self)
        if not isinstance(dirpath, str) or not dirpath:
            raise ValueError("FileStore needs a directory path")
        self._dir = dirpath.rstrip("/") or "/"
        self._journal_kinds = []  # kinds of a committed batch whose files are not rewritten yet
        if not _exists(self._dir):
            try:
                mkdir_private(self._dir)
            except OSError as e:
                raise StoreError("cannot create store directory %s: %s" % (self._dir, e))
        try:
            self._recover_temps(os.listdir(self._dir))
            names = os.listdir(self._dir)
        except OSError as e:
            raise StoreError("cannot list store directory %s: %s" % (self._dir, e))
        for name in names:
            if name.endswith(".json") and _ours(name[:-5]) and name[:-5] != JOURNAL:
                self._data[name[:-5]] = self._load_kind(name[:-5])
        if JOURNAL + ".json" in names:
            self._replay_journal()

    def _path(self, tag):
        return "%s/%s.json" % (self._dir, tag)

    # --- reading ----------------------------------------------------------------------------

    def _read(self, path, tag):
        """The parsed body of a store file whose header says ``tag``; StoreError if damaged."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StoreError("cannot read %s: %s" % (path, e))
        nl = data.find(b"\n")
        try:
            head = json.loads(data[:nl]) if nl > 0 else None
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise StoreError("%s is damaged or not an OpMob store file (bad header)" % path)
        if head.get("version") != VERSION:
            raise StoreError(
                "%s has store version %r; this code reads version %d" % (path, head.get("version"), VERSION)
            )
        if head.get("kind") != tag:
            raise StoreError("%s claims kind %r, expected %r" % (path, head.get("kind"), tag))
        body = data[nl + 1 :]
        if head.get("sha256") != _digest(body):
            raise StoreError("%s is damaged: checksum mismatch (truncated or altered)" % path)
        try:
            return json.loads(body)
        except ValueError:
            raise StoreError("%s is damaged: body is not JSON" % path)

    def _load_kind(self, kind):
        path = self._path(kind)
        obj = self._read(path, kind)
        if not isinstance(obj, dict):
            raise StoreError("%s is damaged: body is not an object" % path)
        m = {}
        for key in obj:
            value = obj[key]
            if not 0 < len(key) <= MAX_KEY or not isinstance(value, dict):
                raise StoreError("%s is damaged: an entry is not key -> object" % path)
            m[key] = json.dumps(value)
        return m

    def _recover_temps(self, names):
        for name in names:
            if not name.endswith(".json.tmp") or not _ours(name[:-9]):
                continue
            tmp = "%s/%s" % (self._dir, name)
            target = tmp[:-4]
            if _exists(target):
                _remove_quietly(tmp)  # a write that never got as far as its rename
                continue
            try:
                self._read(tmp, name[:-9])
            except StoreError:
                _remove_quietly(tmp)  # incomplete: its write never returned, so nothing is lost
                continue
            # Complete but not in place: a crash between removing the old file and the rename.
            try:
                os.rename(tmp, target)
            except OSError as e:
                raise StoreError("cannot restore %s from its temp file: %s" % (target, e))

    def _replay_journal(self):
        path = self._path(JOURNAL)
        ops = self._read(path, JOURNAL)
        if not isinstance(ops, list):
            raise StoreError("%s is damaged: body is not a list" % path)
        try:
            checked = normalise_ops(ops)
        except ValueError:
            raise StoreError("%s is damaged: bad operation" % path)
        self._journal_kinds = self._apply_to_memory(checked)
        self._settle()

    # --- writing ----------------------------------------------------------------------------

    def _write(self, tag, body):
        path = self._path(tag)
        tmp = path + ".tmp"
        head = json.dumps({"format": FORMAT, "version": VERSION, "kind": tag, "sha256": _digest(body)})
        try:
            f = open_private(tmp)
            try:
                f.write(head.encode())
                f.write(b"\n")
                f.write(body)
                fsync_file(f)
            finally:
                f.close()
            try:
                os.rename(tmp, path)
            except OSError:
                if not _exists(path):
                    raise
                # This file system will not rename over a file (FAT): remove, then rename. A crash
                # in between leaves a complete temp file, which opening promotes.
                os.remove(path)
                os.rename(tmp, path)
            fsync_dir(self._dir)
        except OSError as e:
            _remove_quietly(tmp)
            raise StoreError("cannot write %s: %s" % (path, e))

    def _apply_to_memory(self, checked):
        """Apply checked ops to copies of the kinds they touch; returns those kinds."""
        new = {}
        for kind, key, text in checked:
            m = new.get(kind)
            if m is None:
                m = new[kind] = dict(self._data.get(kind) or {})
            if text is None:
                m.pop(key, None)
            else:
                m[key] = text
        for kind in new:
            self._data[kind] = new[kind]
        return list(new)

    def _settle(self):
        """Finish a committed batch: rewrite the kinds it touched, then drop the journal."""
        if not self._journal_kinds:
            return
        for kind in self._journal_kinds:
            self._write(kind, _body(self._data[kind]))
        try:
            os.remove(self._path(JOURNAL))
            fsync_dir(self._dir)
        except OSError as e:
            raise StoreError("cannot remove the batch journal: %s" % e)
        self._journal_kinds = []

    def apply(self, ops):
        self._live()
        checked = normalise_ops(ops)
        # A batch whose kind files are not all rewritten yet is finished first: a newer write
        # would otherwise be overwritten when the journal is replayed.
        self._settle()
        kinds = []
        for kind, _, _ in checked:
            if kind not in kinds:
                kinds.append(kind)
        if len(kinds) == 1:
            kind = kinds[0]
            old = self._data.get(kind) or {}
            m = dict(old)
            for _, key, text in checked:
                if text is None:
                    m.pop(key, None)
                else:
                    m[key] = text
            if m != old:
                self._write(kind, _body(m))
                self._data[kind] = m
        elif kinds:
            parts = []
            for kind, key, text in checked:
                if text is None:
                    parts.append(json.dumps(["delete", kind, key]))
                else:
                    parts.append(json.dumps(["put", kind, key])[:-1] + "," + text + "]")
            self._write(JOURNAL, ("[" + ",".join(parts) + "]").encode())
            # The journal is durable: the batch is committed whatever happens next. A kind file
            # that cannot be rewritten now is rewritten by the next write or the next opening.
            self._journal_kinds = self._apply_to_memory(checked)
            try:
                self._settle()
            except StoreError:
                pass

    def close(self):
        if self._closed:
            return
        try:
            self._settle()
        except StoreError:
            pass  # the journal stays on disk and is replayed when the store is opened again
        self._closed = True


def _ours(tag):
    """A kind name or the journal: the only files a FileStore reads, promotes or removes."""
    if tag == JOURNAL:
        return True
    try:
        check_kind(tag)
    except ValueError:
        return False
    return True
