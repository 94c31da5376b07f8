"""Temporary directories for firmware tests on both runtimes (MicroPython has no tempfile)."""

import binascii
import os

_BASE = "/tmp"


def _is_dir(path):
    return os.stat(path)[0] & 0o170000 == 0o040000


def remove_tree(path):
    for name in os.listdir(path):
        p = path + "/" + name
        if _is_dir(p):
            remove_tree(p)
        else:
            os.remove(p)
    os.rmdir(path)


class TempDir:
    """``with TempDir() as d:`` a fresh empty directory, removed with its contents afterwards."""

    def __init__(self, tag="opmob"):
        self.path = "%s/%s-%s" % (_BASE, tag, binascii.hexlify(os.urandom(8)).decode())

    def __enter__(self):
        os.mkdir(self.path)
        return self.path

    def __exit__(self, *exc):
        try:
            remove_tree(self.path)
        except OSError:
            pass
        return False


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False
