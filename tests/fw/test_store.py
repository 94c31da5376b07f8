"""opmob.store: MemoryStore and FileStore, on both runtimes."""

import binascii
import hashlib
import json
import os

from fwtest import IS_MICROPYTHON, raises
from fwtmp import TempDir, exists, read_bytes, write_bytes
from opmob.store import FileStore, MemoryStore, StoreError
from store_cases import DEV_A, DEV_B, bad_input, batch, closed, crud


def test_memory_store_crud():
    crud(MemoryStore())


def test_memory_store_refuses_bad_input():
    bad_input(MemoryStore())


def test_memory_store_batch():
    batch(MemoryStore())


def test_memory_store_closed():
    closed(MemoryStore())


def test_file_store_crud():
    with TempDir() as d:
        crud(FileStore(d))


def test_file_store_refuses_bad_input():
    with TempDir() as d:
        bad_input(FileStore(d))
        # Nothing of the refused writes reached the disk.
        assert FileStore(d).items("device") == [("a@no", DEV_A)]


def test_file_store_batch_and_reopen():
    with TempDir() as d:
        batch(FileStore(d))
        s = FileStore(d)
        assert s.items("device") == [("b@no", {"vid": 1})]
        assert s.items("group") == [("g@no", {"policy": "members"})]
        assert not exists(d + "/_batch.json")


def test_file_store_closed():
    with TempDir() as d:
        closed(FileStore(d))


def test_file_store_persists_across_reopen():
    with TempDir() as d:
        s = FileStore(d)
        for i in range(20):
            s.put("registration", "dev-%02d@no" % i, {"session": i, "expires": 1000.5 + i})
        s.delete("registration", "dev-07@no")
        s.put("meta", "registry", {"system": "no"})
        s.close()
        s2 = FileStore(d)
        regs = s2.items("registration")
        assert len(regs) == 19
        assert ("dev-07@no", {"session": 7, "expires": 1007.5}) not in regs
        assert s2.get("registration", "dev-19@no") == {"session": 19, "expires": 1019.5}
        assert s2.get("meta", "registry") == {"system": "no"}
        # A store directory that does not exist yet is created (its parent must exist).
        sub = d + "/nested"
        FileStore(sub).put("device", "a@no", DEV_A)
        assert FileStore(sub + "/").get("device", "a@no") == DEV_A
        raises(StoreError, FileStore, d + "/no/such/parent")


def test_file_store_writes_atomically_with_a_checksummed_header():
    with TempDir() as d:
        s = FileStore(d)
        s.put("device", "a@no", DEV_A)
        names = sorted(os.listdir(d))
        assert names == ["device.json"], names  # no temp file left behind
        data = read_bytes(d + "/device.json")
        head, body = data.split(b"\n", 1)
        head = json.loads(head)
        assert head["format"] == "opmob-store" and head["version"] == 1 and head["kind"] == "device"
        assert head["sha256"] == binascii.hexlify(hashlib.sha256(body).digest()).decode()
        assert json.loads(body) == {"a@no": DEV_A}
        if not IS_MICROPYTHON:
            # Secrets live here: owner only. (MicroPython cannot set a mode; see compat.)
            assert os.stat(d + "/device.json")[0] & 0o777 == 0o600
            sub = d + "/fresh"
            FileStore(sub)
            assert os.stat(sub)[0] & 0o777 == 0o700
        # Putting the same value again does not rewrite the file.
        before = read_bytes(d + "/device.json")
        s.put("device", "a@no", DEV_A)
        s.delete("device", "zz@no")
        assert read_bytes(d + "/device.json") == before


def test_file_store_recovers_from_a_crash_around_the_rename():
    with TempDir() as d:
        s = FileStore(d)
        s.put("device", "a@no", DEV_A)
        s.put("group", "g@no", {"policy": "open"})
        good = read_bytes(d + "/device.json")
        s.put("device", "b@no", DEV_B)
        newer = read_bytes(d + "/device.json")
        s.close()

        # 1. Crash while writing the temp file: the old file is still in place. The half-written
        #    temp file is dropped; the old contents stand.
        write_bytes(d + "/device.json", good)
        write_bytes(d + "/device.json.tmp", newer[: len(newer) // 2])
        assert FileStore(d).items("device") == [("a@no", DEV_A)]
        assert not exists(d + "/device.json.tmp")

        # 2. Crash after a complete temp file, before the rename: the old contents stand (the
        #    put never returned), the temp file goes.
        write_bytes(d + "/device.json.tmp", newer)
        assert FileStore(d).items("device") == [("a@no", DEV_A)]
        assert not exists(d + "/device.json.tmp")

        # 3. A file system that cannot rename over a file (FAT): crash after removing the old
        #    file, before the rename. The complete temp file is promoted.
        os.remove(d + "/device.json")
        write_bytes(d + "/device.json.tmp", newer)
        assert FileStore(d).items("device") == [("a@no", DEV_A), ("b@no", DEV_B)]
        assert read_bytes(d + "/device.json") == newer

        # 4. The first write of a kind, interrupted: an incomplete temp file and no target.
        write_bytes(d + "/meta.json.tmp", b'{"format": "opmob-store", "vers')
        s = FileStore(d)
        assert s.items("meta") == [] and not exists(d + "/meta.json.tmp")
        assert s.get("group", "g@no") == {"policy": "open"}

        # Files that are not the store's are left alone.
        write_bytes(d + "/README.json.tmp", b"notes")
        write_bytes(d + "/notes.txt", b"notes")
        FileStore(d)
        assert exists(d + "/README.json.tmp") and exists(d + "/notes.txt")


def _store_file(kind, body, **head_overrides):
    head = {"format": "opmob-store", "version": 1, "kind": kind}
    head["sha256"] = binascii.hexlify(hashlib.sha256(body).digest()).decode()
    for k in head_overrides:
        head[k] = head_overrides[k]
    return json.dumps(head).encode() + b"\n" + body


def test_file_store_damaged_file_is_an_error_not_an_empty_store():
    with TempDir() as d:
        s = FileStore(d)
        for i in range(5):
            s.put("device", "d%d@no" % i, DEV_A)
        s.close()
        good = read_bytes(d + "/device.json")
        flipped = bytearray(good)
        flipped[-10] ^= 0x01
        body = good.split(b"\n", 1)[1]
        cases = [
            ("truncated", good[: len(good) - 7], "checksum"),
            ("bit flip", bytes(flipped), "checksum"),
            ("empty", b"", "header"),
            ("no header", body, "header"),
            ("garbage", b"\x00\xff\xfe garbage\n{}", "header"),
            ("other format", _store_file("device", body, format="sqlite"), "header"),
            ("newer version", _store_file("device", body, version=2), "version"),
            ("other kind", _store_file("group", body), "kind"),
            ("no checksum", _store_file("device", body, sha256=None), "checksum"),
            ("body not JSON", _store_file("device", b"{not json"), "JSON"),
            ("body a list", _store_file("device", b"[1, 2]"), "object"),
            ("entry not an object", _store_file("device", b'{"a@no": [1]}'), "key -> object"),
            ("empty key", _store_file("device", b'{"": {}}'), "key -> object"),
        ]
        for name, data, words in cases:
            write_bytes(d + "/device.json", data)
            e = raises(StoreError, FileStore, d)
            assert words in str(e) and "device.json" in str(e), (name, str(e))
        # A damaged journal is an error too: the batch it holds was committed.
        write_bytes(d + "/device.json", good)
        write_bytes(d + "/_batch.json", _store_file("_batch", b'[["put", "device"]]'))
        e = raises(StoreError, FileStore, d)
        assert "_batch.json" in str(e)
        write_bytes(d + "/_batch.json", b"junk")
        raises(StoreError, FileStore, d)
        os.remove(d + "/_batch.json")
        assert len(FileStore(d).items("device")) == 5
        # A path that is a file, not a directory.
        raises(StoreError, FileStore, d + "/device.json")


def test_file_store_replays_a_committed_batch_after_a_crash():
    with TempDir() as d:
        s = FileStore(d)
        s.put("device", "a@no", DEV_A)
        s.put("group", "old@no", {"policy": "open"})
        # The journal is written and synced, then the process dies before any kind file is
        # rewritten: the batch must still happen, all of it.
        journal = json.dumps(
            [
                ["put", "device", "b@no", DEV_B],
                ["delete", "group", "old@no"],
                ["put", "group", "new@no", {"policy": "members"}],
                ["put", "affiliation", "b@no", {"groups": ["new@no"]}],
            ]
        ).encode()
        write_bytes(d + "/_batch.json", _store_file("_batch", journal))
        s2 = FileStore(d)
        assert s2.items("device") == [("a@no", DEV_A), ("b@no", DEV_B)]
        assert s2.items("group") == [("new@no", {"policy": "members"})]
        assert s2.items("affiliation") == [("b@no", {"groups": ["new@no"]})]
        assert not exists(d + "/_batch.json")
        s3 = FileStore(d)
        assert s3.items("group") == [("new@no", {"policy": "members"})]
        # A journal that was never renamed into place (still .tmp) was never committed.
        write_bytes(d + "/_batch.json.tmp", _store_file("_batch", journal)[:20])
        assert FileStore(d).items("device") == [("a@no", DEV_A), ("b@no", DEV_B)]
        assert not exists(d + "/_batch.json.tmp")


def test_file_store_write_failure_leaves_the_store_as_it_was():
    with TempDir() as d:
        s = FileStore(d)
        s.put("device", "a@no", DEV_A)
        # A directory where the temp file must go makes the write fail with an OSError.
        os.mkdir(d + "/device.json.tmp")
        e = raises(StoreError, s.put, "device", "b@no", DEV_B)
        assert "device.json" in str(e)
        assert s.items("device") == [("a@no", DEV_A)]
        # A batch is committed once its journal is written: the failing device file does not
        # undo it, and every later write first finishes it (and fails while it cannot).
        s.apply([("put", "device", "b@no", DEV_B), ("put", "group", "g@no", {})])
        assert exists(d + "/_batch.json")
        assert s.get("device", "b@no") == DEV_B
        raises(StoreError, s.put, "meta", "m", {"x": 1})
        assert s.get("meta", "m") is None
        os.rmdir(d + "/device.json.tmp")
        s.put("meta", "m", {"x": 1})
        assert s.get("device", "b@no") == DEV_B and s.get("group", "g@no") == {}
        s2 = FileStore(d)
        assert s2.items("device") == [("a@no", DEV_A), ("b@no", DEV_B)]
        assert s2.get("group", "g@no") == {}
        assert s2.get("meta", "m") == {"x": 1}
        assert not exists(d + "/_batch.json")
