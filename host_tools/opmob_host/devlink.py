"""The link to a device's REPL for ``deploy``, ``provision``, ``verify`` and ``ports``: mpremote's own
serial transport (raw REPL, raw-paste mode), with its failures turned into sentences for the
technician.

A command never leaves a device worse than it found it:

- the accessory app, stopped by the raw REPL's Ctrl-C, is started again when it was running
  (``Device.restarted`` says so, for the command's output);
- Ctrl-C on the host: the scratch files the command wrote (``Device.scratch``: a ``.tmp`` being
  written, deploy's staging directory) are removed, the app is started again if it ran, and
  ``Interrupted`` says the device is as it was and to run the command again. Device commands
  that must not be cut in two (a rename, deploy's switch) run inside ``Device.critical()``, which
  holds a Ctrl-C back until they are done.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

CHUNK = 512
# Tests only: a pause before each command sent to the device, so that a test can kill a
# provision at every point of its run (tests/host/test_provision.py).
STEP_DELAY_S = float(os.environ.get("OPMOB_TEST_STEP_DELAY", "0"))
# What a vanished device raises out of mpremote: pyserial's SerialException is an OSError, and a
# raw-paste header cut short is a struct.error.
LINK_ERRORS = (TransportError, OSError, struct.error)


class TechnicianError(Exception):
    """A problem the technician can act on; the message says what and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the device was put back as it was; the message says so."""


# boards/main.py's marker: "running", or "returned N" (the app returns 0 when a Ctrl-C stops it),
# and _opmob_app_at, the device's ticks_ms when the app ended. An older /main.py has neither: the
# app's module imported by it says the app was started.
APP_RUNNING = (
    "import sys,time\ng=globals().get('_opmob_app')\nt=globals().get('_opmob_app_at')\n"
    "print(g in ('running','returned 0') and (t is None or time.ticks_diff(time.ticks_ms(),t)<=%d) "
    "if g is not None else 'opmob.accessory.main' in sys.modules)"
)
# Sending the probe itself (raw REPL, 115200 baud) takes the device some tens of ms more.
PROBE_SLACK_MS = 300


def app_running(t: Any, since: float) -> bool:
    """Whether the app ran until the Ctrl-C this command sent at host time ``since`` (monotonic):
    it ended no longer ago than that Ctrl-C was sent. One stopped earlier by a Ctrl-C typed in a
    terminal (it returned to the friendly REPL, marker and all) was not running: not started again."""
    window = int((time.monotonic() - since) * 1000) + PROBE_SLACK_MS
    return bool(t.exec(APP_RUNNING % window).strip() == b"True")


def lost(port: str, step: str) -> TechnicianError:
    return TechnicianError(
        f"the device on {port} stopped answering (unplugged or reset?) during {step}; "
        "nothing was left half-written: run the same command again"
    )


def holders(port: str) -> list[tuple[int, str]]:
    """(pid, command name) of the other processes that have ``port`` open, from /proc as fuser
    finds them: a program that opened it without pyserial's exclusive lock (screen, cat) would
    otherwise eat the device's answers. The process that holds the master side of a
    pseudo-terminal is the device itself (a virtual device), not a competitor."""
    try:
        target = os.path.realpath(port)
    except OSError:
        return []
    pts = target.rsplit("/", 1)[1] if target.startswith("/dev/pts/") else None
    found: list[tuple[int, str]] = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        fd_dir = f"/proc/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # another user's process, or gone
            continue
        holds = device_side = False
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link == target:
                holds = True
            elif pts is not None and link in ("/dev/ptmx", "/dev/pts/ptmx"):
                device_side = device_side or _ptmx_index(entry.name, fd) in (pts, None)
        if holds and not device_side:
            try:
                comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
            except OSError:
                comm = "?"
            found.append((int(entry.name), comm))
    return found


def _ptmx_index(pid: str, fd: str) -> str | None:
    """The pseudo-terminal a master fd drives (None: the kernel does not say, so it may be ours)."""
    try:
        for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("tty-index:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return ""  # gone: drives nothing
    return None


def _tty_driver(rdev: int) -> bool:
    """Whether a character device is a terminal, by the kernel's list of tty drivers (major,
    minors), without opening it: an open can reset a board. True when the list is unreadable."""
    major, minor = os.major(rdev), os.minor(rdev)
    try:
        lines = Path("/proc/tty/drivers").read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        f = line.split()
        try:
            lo, _, hi = f[3].partition("-")
            if int(f[2]) == major and int(lo) <= minor <= int(hi or lo):
                return True
        except (IndexError, ValueError):
            continue
    return False


def check_port(port: str) -> None:
    """What can be told about ``port`` without opening it: a TechnicianError when it is absent,
    not a serial device, or held by another program."""
    try:
        st = os.stat(port)
    except FileNotFoundError:
        raise TechnicianError(_port_problem(port)) from None
    except OSError as e:
        raise TechnicianError(f"port {port} cannot be used: {e.strerror}") from None
    if not stat.S_ISCHR(st.st_mode) or not _tty_driver(st.st_rdev):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a device that is not a terminal"
            if stat.S_ISCHR(st.st_mode)
            else "a file"
        )
        raise TechnicianError(f"{port} is not a serial port ({kind}): opmob ports lists the serial ports")
    busy = holders(port)
    if busy:
        who = ", ".join(f"{comm} (pid {pid})" for pid, comm in busy)
        raise TechnicianError(f"port {port} is busy: open in {who}; close it first")


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
        if "Inappropriate ioctl" in str(e):  # ENOTTY: a character device, but no terminal
            return f"{port} is not a serial port: opmob ports lists the serial ports"
        return f"port {port} cannot be opened: {e}"
    s.close()
    return f"port {port} cannot be opened"


class Device:
    """A device in its raw REPL."""

    def __init__(self, port: str, transport: SerialTransport) -> None:
        self.port = port
        self.t = transport
        self.step = "a command"
        self.app_was_running = False
        self.restarted = False  # the app was started again when the command ended
        self.scratch: dict[str, bool] = {}  # path -> is a directory: removed on Ctrl-C

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Hold a Ctrl-C back while the block runs (a command the device must finish), then act
        on it. Only in the main thread, where Python delivers signals."""
        got: list[int] = []

        def hold(signum: int, frame: Any) -> None:
            got.append(signum)

        try:
            old = signal.signal(signal.SIGINT, hold)
        except ValueError:  # not the main thread: nothing to hold back
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)
        if got:
            raise KeyboardInterrupt

    @contextmanager
    def during(self, step: str) -> Iterator[None]:
        """Name what is being done, for the message if the device vanishes meanwhile."""
        outer, self.step = self.step, step
        try:
            yield
        finally:
            self.step = outer

    def exec(self, code: str) -> bytes:
        if STEP_DELAY_S:
            time.sleep(STEP_DELAY_S)
        try:
            # mpremote prints what it got when the raw REPL misbehaves: ours is the message.
            with contextlib.redirect_stdout(io.StringIO()):
                out: bytes = self.t.exec(code)
        except TransportExecError as e:
            raise TechnicianError(
                f"the device on {self.port} failed a command: {e.error_output.strip().splitlines()[-1:]}"
            ) from None
        except LINK_ERRORS:
            raise lost(self.port, self.step) from None
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
        with self.during(f"writing {path}"):
            self.scratch[tmp] = False
            self.exec(f"f=open({tmp!r},'wb')\nw=f.write")
            for i in range(0, len(data), CHUNK):
                self.exec(f"w({data[i : i + CHUNK]!r})")
            self.exec("f.close()")
            got = self.sha256(tmp)
            if got != hashlib.sha256(data).hexdigest():
                self.exec(f"import os\ntry:\n os.remove({tmp!r})\nexcept OSError:\n pass")
                raise TechnicianError(
                    f"{path}: the copy on the device does not match (hash differs); try again"
                )
            with self.critical():
                self.exec(f"import os\nos.rename({tmp!r},{path!r})")
                del self.scratch[tmp]

    def remove(self, path: str) -> None:
        with self.during(f"removing {path}"):
            self.exec(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass")


RMTREE = (
    "import os\n"
    "def _rm(p):\n"
    " try:\n  m=os.stat(p)[0]\n except OSError:\n  return\n"
    " if m&0x4000:\n  for e in os.ilistdir(p):\n   _rm(p+'/'+e[0])\n  os.rmdir(p)\n"
    " else:\n  os.remove(p)\n"
)


def _remove_scratch(dev: Device) -> None:
    if dev.scratch:
        dev.exec(RMTREE + "".join(f"_rm({p!r})\n" for p in dev.scratch))
        dev.scratch.clear()


def _restart_app(t: SerialTransport) -> None:
    """A soft reset from the friendly REPL: boot.py, then main.py, as at power-on."""
    t.exit_raw_repl()
    t.serial.write(b"\x04")
    t.read_until(1, b"soft reboot", timeout=1)


def _recover(port: str, t: SerialTransport, dev: Device | None, restart: bool) -> str:
    """After Ctrl-C on the host: the device back in its raw REPL, the scratch files gone, the app
    started again if it ran. Returns what the technician is told."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            t.enter_raw_repl(soft_reset=False, timeout_overall=5)  # stops a command cut short
            if dev is not None:
                _remove_scratch(dev)
            if restart:
                _restart_app(t)
    except (TechnicianError, *LINK_ERRORS):
        return (
            f"interrupted; the device on {port} did not answer afterwards, so what this command "
            "wrote may be left in scratch files (never in use): run the same command again"
        )
    again = "; the app was started again" if restart else ""
    return f"interrupted: the device on {port} is as it was before this command{again}; run the same command again"


@contextmanager
def connect(port: str, soft_reset: bool = True, run_after: bool = False) -> Iterator[Device]:
    """The device on ``port`` in its raw REPL (after a soft reset, for a clean interpreter, unless
    ``soft_reset`` is False). When the block ends, the app is started again if it was running
    (``Device.restarted``); ``run_after``: started in any case, as a board's reset would."""
    check_port(port)
    try:
        t = SerialTransport(port, baudrate=115200, timeout=3)
    except TransportError:
        raise TechnicianError(_port_problem(port)) from None
    dev: Device | None = None
    done = False
    try:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote's prints of what it got
                interrupted_at = time.monotonic()
                t.enter_raw_repl(soft_reset=False, timeout_overall=5)
                dev = Device(port, t)
                # Asked before anything else: whether the Ctrl-C just sent stopped the app.
                dev.app_was_running = app_running(t, interrupted_at)
                if soft_reset:
                    t.enter_raw_repl(soft_reset=True, timeout_overall=5)
        except (TransportError, TransportExecError):
            raise TechnicianError(
                f"the device on {port} does not answer: no MicroPython REPL there "
                "(is MicroPython flashed? opmob flash), or the wrong port"
            ) from None
        except LINK_ERRORS:
            raise lost(port, "connecting") from None
        restart = run_after or dev.app_was_running
        try:
            yield dev
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the recovery
            try:
                message = _recover(port, t, dev, restart)
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            raise Interrupted(message) from None
        except BaseException:
            if dev.scratch:  # a device gone or a failed command: best effort, it may not answer
                with contextlib.suppress(TechnicianError, *LINK_ERRORS):
                    _remove_scratch(dev)
            raise
        done = True
        try:
            if restart:
                _restart_app(t)
                dev.restarted = True
            else:
                t.exit_raw_repl()
        except LINK_ERRORS:
            pass  # all was done; the next command finds the device as it is
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        if done:
            raise Interrupted(
                f"interrupted after the work on {port} was done; the app may not have been started "
                "again: reset the device (its reset button, or mpremote reset)"
            ) from None
        # Before the device was reached: nothing on it was changed.
        raise Interrupted(
            f"interrupted: nothing on the device on {port} was changed; run the same command again"
        ) from None
    finally:
        try:
            t.close()
        except OSError:
            pass
