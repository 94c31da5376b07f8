"""The link to a device's REPL for ``deploy``, ``provision`` and ``verify``: mpremote's own serial
transport (raw REPL, raw-paste), with its failures turned into sentences for the technician."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

CHUNK = 512
# Tests only: a pause before each command sent to the device, so that a test can kill a
# provision at every point of its run (tests/host/test_provision.py).
STEP_DELAY_S = float(os.environ.get("OPMOB_TEST_STEP_DELAY", "0"))


class TechnicianError(Exception):
    """A problem the technician can act on; the message says what and what to do."""


def _port_problem(port: str) -> str:
    """Why the port cannot be opened, in words."""
    if not os.path.exists(port):
        return f"port {port} does not exist: is the board plugged in? (opmob ports lists the serial ports)"
    try:
        s = serial.Serial(port, exclusive=True, timeout=0)
    except serial.SerialException as e:
        if "lock" in str(e):
            return f"port {port} is busy: another program has it open (mpremote, a terminal, a monitor)"
        if isinstance(e.__context__, PermissionError) or "Permission denied" in str(e):
            return f"port {port}: permission denied (add yourself to the dialout group)"
        return f"port {port} cannot be opened: {e}"
    s.close()
    return f"port {port} cannot be opened"


class Device:
    """A device in its raw REPL."""

    def __init__(self, port: str, transport: SerialTransport) -> None:
        self.port = port
        self.t = transport

    def exec(self, code: str) -> bytes:
        if STEP_DELAY_S:
            time.sleep(STEP_DELAY_S)
        try:
            out: bytes = self.t.exec(code)
        except TransportExecError as e:
            raise TechnicianError(
                f"the device on {self.port} failed a command: {e.error_output.strip().splitlines()[-1:]}"
            ) from None
        except TransportError as e:
            raise TechnicianError(f"the device on {self.port} stopped answering ({e})") from None
        return out

    def eval_json(self, expr: str) -> Any:
        out = self.exec(f"import json\nprint(json.dumps({expr}))")
        return json.loads(out.decode())

    def read(self, path: str) -> bytes | None:
        """A file's contents, or None when it does not exist."""
        out = self.exec(
            f"import binascii\ntry:\n f=open({path!r},'rb')\nexcept OSError:\n print('-')\nelse:\n"
            f" while 1:\n  b=f.read({CHUNK})\n  if not b:break\n  print(binascii.hexlify(b).decode(),end='')\n"
            " f.close()\n print()"
        )
        text = out.decode().strip()
        if text == "-":
            return None
        return bytes.fromhex(text)

    def sha256(self, path: str) -> str | None:
        out = self.exec(
            f"import hashlib,binascii\ntry:\n f=open({path!r},'rb')\nexcept OSError:\n print('-')\nelse:\n"
            f" h=hashlib.sha256()\n while 1:\n  b=f.read({CHUNK})\n  if not b:break\n  h.update(b)\n"
            " f.close()\n print(binascii.hexlify(h.digest()).decode())"
        )
        text = out.decode().strip()
        return None if text == "-" else text

    def makedirs(self, path: str) -> None:
        self.exec(
            f"import os\np=''\nfor d in {path!r}.strip('/').split('/'):\n p+='/'+d\n try:\n  os.mkdir(p)\n"
            " except OSError:\n  pass"
        )

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``path`` whole or not at all: a temporary file, checked by hash, then renamed over
        the old one (littlefs and the unix port rename atomically)."""
        tmp = path + ".tmp"
        self.exec(f"f=open({tmp!r},'wb')\nw=f.write")
        for i in range(0, len(data), CHUNK):
            self.exec(f"w({data[i : i + CHUNK]!r})")
        self.exec("f.close()")
        got = self.sha256(tmp)
        if got != hashlib.sha256(data).hexdigest():
            self.exec(f"import os\ntry:\n os.remove({tmp!r})\nexcept OSError:\n pass")
            raise TechnicianError(f"{path}: the copy on the device does not match (hash differs); try again")
        self.exec(f"import os\nos.rename({tmp!r},{path!r})")

    def remove(self, path: str) -> None:
        self.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass")


@contextmanager
def connect(port: str, soft_reset: bool = True) -> Iterator[Device]:
    """The device on ``port`` in its raw REPL (after a soft reset, for a clean interpreter)."""
    if not os.path.exists(port):
        raise TechnicianError(_port_problem(port))
    try:
        t = SerialTransport(port, baudrate=115200, timeout=3)
    except TransportError:
        raise TechnicianError(_port_problem(port)) from None
    try:
        try:
            t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=5)
        except TransportError:
            raise TechnicianError(
                f"the device on {port} does not answer: no MicroPython REPL there "
                "(is MicroPython flashed? opmob flash), or the wrong port"
            ) from None
        yield Device(port, t)
        try:
            t.exit_raw_repl()
        except (OSError, TransportError):
            pass
    finally:
        try:
            t.close()
        except OSError:
            pass
