"""``opmob virtual``: a virtual device, the MicroPython unix port behind a pseudo-terminal.

The unix port has no raw REPL of its own, so this module speaks it on the pseudo-terminal, as
``shared/runtime/pyexec.c`` does on a board, and runs each command in a MicroPython interpreter
(the *agent*, below) that keeps its globals until a soft reset. ``mpremote`` (and ``opmob deploy``,
``provision``, ``verify``) therefore work on it unchanged (DESIGN.md §8):

- friendly REPL (``>>>``): line editing, echo, one line executed per Enter;
- Ctrl-A: raw REPL (``raw REPL; CTRL-B to exit``, ``>``); Ctrl-B: back to the friendly REPL;
- raw REPL: the command up to Ctrl-D, answered ``OK``, its output, ``\\x04``, its error, ``\\x04``;
  raw-paste mode (``\\x05A\\x01``, answered ``R\\x01`` and a flow-control window);
- Ctrl-D at an empty prompt: soft reset: the interpreter is restarted (``MPY: soft reboot``);
- Ctrl-C: a KeyboardInterrupt in the running command (SIGINT to the interpreter);
- ``machine.reset()`` (``mpremote reset``): a power cycle, as a board's hard reset: the input not
  yet read is lost, the interpreter restarted, ``/boot.py`` and ``/main.py`` run;
- as a board does, ``/boot.py`` then ``/main.py`` run when the device starts and at a soft reset
  from the friendly REPL, with their output on the console; a soft reset from the raw REPL runs
  ``/boot.py`` only (MicroPython's ``ports/esp32/main.c``). Ctrl-C stops them and leaves the REPL.

The device's file system is a directory (``--state DIR``, or a temporary one): the interpreter
mounts it as its VFS root (``os.VfsPosix``), so ``/lib``, ``/board.json`` and ``/config.json``
are files under it, ``sys.path`` is ``['', '.frozen', '/lib']`` as on a board.

The virtual hardware is described beside the firmware's files, never in them (``opmob deploy``
owns ``/board.json`` and vouches for it by hash): ``/.hwid`` is its serial number, and
``/.sim.json`` its wiring, written at each start from the command line: the control channel's
port (a free one unless ``--control-port``; printed on the second line of stdout) and, when
given, the microphone, speaker and WiFi scenario files. Those are host files, reached from the
device's file system through symbolic links in ``/.sim/``. The firmware's ``main.run()`` lets the
wiring override the board's ``sim`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import tty
from pathlib import Path
from typing import Any

from opmob_host.resources import ResourceMissing, micropython_command

HEAP = "2M"
PASTE_WINDOW = 256
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
CONTROL_HOST = "127.0.0.1"  # the unix-sim board's sim.control_host
WIRING = ".sim.json"  # firmware/opmob/accessory/main.py WIRING, relative to the root
WIRING_DIR = ".sim"
LOCK = ".opmob-virtual.lock"  # in the state directory: one virtual device per file system

# The interpreter side. Frames on stdin: b"R<n>\n" or b"S<n>\n" then n bytes of source (R: a
# raw-REPL command, S: one friendly-REPL line, whose expression value is printed). The output of a
# command goes to stdout, then b"\x04", the exception (if any), b"\x04". b"\x06" on stderr says a
# command has started (a Ctrl-C before it would hit the frame reader instead).
AGENT = r"""
import os, sys
_R = sys.argv[1]
_raw = os.VfsPosix()
def _host(p):
    if not p.startswith("/"):
        p = os.getcwd().rstrip("/") + "/" + p
    return _R + p
class _OS:
    # VfsPosix with a root joins both of rename's paths in one buffer (the first is lost), and
    # a subclass of it loses the import hook: os.rename is mended here, in sys.modules.
    def __getattr__(self, name):
        return getattr(os, name)
    def rename(self, a, b):
        _raw.rename(_host(a), _host(b))
os.umount("/")
os.mount(os.VfsPosix(_R), "/")
sys.modules["os"] = _OS()
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
import machine as _machine
class _Machine:
    # machine.reset() (mpremote's ``reset``): the host powers the device off and on (b"\x07" on
    # stderr asks it to); the unix port has no reset of its own.
    def __getattr__(self, name):
        return getattr(_machine, name)
    def reset(self):
        sys.stderr.write("\x07")
        while True:
            _machine.idle()
sys.modules["machine"] = _Machine()
def _agent():
    rd = sys.stdin.buffer
    out = sys.stdout
    err = sys.stderr
    g = {"__name__": "__main__"}
    while True:
        try:
            h = rd.readline()
            if not h:
                return
            n = int(h[1:])
            src = b""
            while len(src) < n:
                c = rd.read(n - len(src))
                if not c:
                    return
                src += c
        except KeyboardInterrupt:
            continue
        try:
            err.write("\x06")
            try:
                exec(compile(src.decode(), "<stdin>", "single" if h[:1] == b"S" else "exec"), g)
                out.write("\x04")
            except BaseException as e:
                out.write("\x04")
                sys.print_exception(e, out)
            out.write("\x04")
        except KeyboardInterrupt:
            out.write("\x04\x04")
_agent()
"""


class VirtualDevice:
    """The raw REPL on a pseudo-terminal in front of a restartable MicroPython interpreter."""

    def __init__(self, root: Path, board: str = "unix-sim", heap: str = HEAP) -> None:
        self.micropython = micropython_command()
        self.root = root
        self.board = board
        self.heap = heap
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self._agent_dir = Path(tempfile.mkdtemp(prefix="opmob-virtual-"))
        self._agent_path = self._agent_dir / "agent.py"
        self._agent_path.write_text(AGENT)
        self.proc: subprocess.Popen[bytes] | None = None
        self.mode = "friendly"  # friendly | raw | paste | exec
        self.exec_friendly = False
        self.line = b""
        self.paste = b""
        self.paste_count = 0
        self.pending = b""  # input that arrived while a command ran
        self.eots = 0
        self.started = False
        self.interrupt_wanted = False
        self.out = bytearray()
        self.boot_queue: list[bytes] = []
        self.booting = False
        self.after_boot = "friendly"
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.master, selectors.EVENT_READ, "pty")
        self._start_interpreter()
        if any((root / f).is_file() for f in ("boot.py", "main.py")):
            self._boot(("boot.py", "main.py"), "friendly")

    # -- the interpreter -------------------------------------------------------------------------
    def _start_interpreter(self) -> None:
        env = dict(os.environ, MICROPYPATH=":.frozen:/lib")
        self.proc = subprocess.Popen(
            [*self.micropython, "-X", f"heapsize={self.heap}", str(self._agent_path), str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(self.root),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.sel.register(self.proc.stdout, selectors.EVENT_READ, "out")
        self.sel.register(self.proc.stderr, selectors.EVENT_READ, "err")

    def _stop_interpreter(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                try:
                    self.sel.unregister(f)
                except (KeyError, ValueError):
                    pass
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        self.proc = None

    def _soft_reset(self) -> None:
        self._stop_interpreter()
        self._start_interpreter()

    def _hard_reset(self) -> None:
        # A chip's reset loses its UART's input (mpremote's Ctrl-B after ``reset``, typically).
        self.pending = b""
        self.line = b""
        self._soft_reset()
        self._emit(b"\r\n")
        self._boot(("boot.py", "main.py"), "friendly")

    def _boot(self, files: tuple[str, ...], then: str) -> None:
        """Run the device's boot files in order (console output, friendly line endings), then
        show the prompt of ``then`` (raw or friendly)."""
        self.boot_queue = [(self.root / f).read_bytes() for f in files if (self.root / f).is_file()]
        self.booting = True
        self.after_boot = then
        self._next_boot()

    def _next_boot(self) -> None:
        if self.boot_queue:
            self._run(self.boot_queue.pop(0), friendly=True, kind=b"F")
            return
        self.booting = False
        if self.after_boot == "raw":
            self.mode = "raw"
            self._emit(RAW_BANNER + b">")
        else:
            self.mode = "friendly"
            self._emit(self._banner() + b">>> ")
        pending, self.pending = self.pending, b""
        if pending:
            self._input(pending)

    def _run(self, src: bytes, friendly: bool, kind: bytes | None = None) -> None:
        if self.proc is None or self.proc.stdin is None:
            self._start_interpreter()
        assert self.proc is not None and self.proc.stdin is not None
        self.mode = "exec"
        self.exec_friendly = friendly
        self.eots = 0
        self.started = False
        self.interrupt_wanted = False
        try:
            frame = kind or (b"S" if friendly else b"R")
            self.proc.stdin.write(b"%s%d\n" % (frame, len(src)) + src)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._interpreter_died()

    def _interpreter_died(self) -> None:
        # The command ended the process (os._exit, a crash): close the command, restart.
        if self.mode == "exec":
            for _ in range(self.eots, 2):
                self._output(b"\x04")
        self._soft_reset()

    # -- output to the terminal ------------------------------------------------------------------
    def _emit(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > 1 << 20:  # nobody reads the terminal: keep the newest megabyte
            del self.out[: len(self.out) - (1 << 20)]
        self._flush()

    def _flush(self) -> None:
        while self.out:
            try:
                n = os.write(self.master, self.out)
            except BlockingIOError:
                break
            del self.out[:n]

    def _output(self, data: bytes) -> None:
        """Bytes from the interpreter's stdout while a command runs."""
        for i in range(len(data)):
            b = data[i : i + 1]
            if b == b"\x04" and self.mode == "exec":
                self.eots += 1
                if not self.exec_friendly:
                    self._emit(b)
                if self.eots == 2:
                    self._command_done()
            elif self.exec_friendly:
                self._emit(b"\r\n" if b == b"\n" else b)
            else:
                self._emit(b)

    def _command_done(self) -> None:
        if self.booting:
            self._next_boot()
            return
        if self.exec_friendly:
            self.mode = "friendly"
            self._emit(b">>> ")
        else:
            self.mode = "raw"
            self._emit(b">")
        pending, self.pending = self.pending, b""
        if pending:
            self._input(pending)

    # -- input from the terminal -----------------------------------------------------------------
    def _banner(self) -> bytes:
        return (
            b"MicroPython v1.29 (opmob virtual device); %s with unix\r\n"
            b'Type "help()" for more information.\r\n' % self.board.encode()
        )

    def _input(self, data: bytes) -> None:
        for i in range(len(data)):
            c = data[i : i + 1]
            if self.mode == "exec":
                if c == b"\x03":
                    self._interrupt()
                else:
                    self.pending += c
            elif self.mode == "raw":
                self._raw_char(c)
            elif self.mode == "paste":
                self._paste_char(c)
            else:
                self._friendly_char(c)

    def _interrupt(self) -> None:
        if self.proc is None:
            return
        self.boot_queue = []  # Ctrl-C during boot: the REPL, not main.py
        if self.started:
            self.proc.send_signal(signal.SIGINT)
        else:
            self.interrupt_wanted = True

    def _raw_char(self, c: bytes) -> None:
        if c == b"\x01":
            if self.line == b"\x05A":
                self.line = b""
                self.mode = "paste"
                self.paste = b""
                self.paste_count = 0
                self._emit(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
                return
            self.line = b""
            self._emit(RAW_BANNER + b">")
        elif c == b"\x02":
            self.line = b""
            self.mode = "friendly"
            self._emit(b"\r\n" + self._banner() + b">>> ")
        elif c == b"\x03":
            self.line = b""
        elif c == b"\x04":
            src, self.line = self.line, b""
            self._emit(b"OK")
            if not src:
                self._emit(b"\r\n")
                self._soft_reset()
                self._emit(b"MPY: soft reboot\r\n")
                self._boot(("boot.py",), "raw")
            else:
                self._run(src, friendly=False)
        else:
            self.line += c

    def _paste_char(self, c: bytes) -> None:
        if c == b"\x03":  # the host gave up (killed mid-command): drop the paste
            self.paste = b""
            self.mode = "raw"
            return
        if c == b"\x04":
            self._emit(b"\x04")
            src, self.paste = self.paste, b""
            self._run(src, friendly=False)
            return
        self.paste += c
        self.paste_count += 1
        if self.paste_count >= PASTE_WINDOW:
            self.paste_count -= PASTE_WINDOW
            self._emit(b"\x01")

    def _friendly_char(self, c: bytes) -> None:
        if c == b"\x01":
            self.line = b""
            self.mode = "raw"
            self._emit(b"\r\n" + RAW_BANNER + b">")
        elif c == b"\x02":
            self.line = b""
            self._emit(b"\r\n" + self._banner() + b">>> ")
        elif c == b"\x03":
            self.line = b""
            self._emit(b"\r\n>>> ")
        elif c == b"\x04":
            if self.line:
                return
            self._soft_reset()
            self._emit(b"\r\nMPY: soft reboot\r\n")
            self._boot(("boot.py", "main.py"), "friendly")
        elif c in (b"\r", b"\n"):
            if c == b"\n":
                return
            src, self.line = self.line, b""
            self._emit(b"\r\n")
            if src.strip():
                self._run(src, friendly=True)
            else:
                self._emit(b">>> ")
        elif c in (b"\x7f", b"\x08"):
            if self.line:
                self.line = self.line[:-1]
                self._emit(b"\x08 \x08")
        elif c >= b" " or c == b"\t":
            self.line += c
            self._emit(c)

    # -- the loop --------------------------------------------------------------------------------
    def step(self, timeout: float | None = None) -> None:
        for key, _ in self.sel.select(timeout):
            proc = self.proc
            if key.data == "pty":
                try:
                    data = os.read(self.master, 4096)
                except (BlockingIOError, OSError):
                    continue
                self._input(data)
            elif proc is not None and key.fileobj is proc.stdout:
                got = self._read(proc.stdout)
                if got is None:
                    continue
                if got:
                    self._output(got)
                else:
                    self._interpreter_died()
            elif proc is not None and key.fileobj is proc.stderr:
                err = self._read(proc.stderr) or b""
                if b"\x06" in err:
                    self.started = True
                    if self.interrupt_wanted:
                        self.interrupt_wanted = False
                        proc.send_signal(signal.SIGINT)
                    err = err.replace(b"\x06", b"")
                if b"\x07" in err:
                    self._hard_reset()
                    continue
                if err and self.mode == "exec":
                    self._emit(err)
        self._flush()

    @staticmethod
    def _read(f: Any) -> bytes | None:
        try:
            data: bytes = os.read(f.fileno(), 65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        return data

    def close(self) -> None:
        self._stop_interpreter()
        self.sel.close()
        os.close(self.master)
        os.close(self.slave)
        shutil.rmtree(self._agent_dir, ignore_errors=True)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "virtual",
        help="a virtual device: the MicroPython unix port behind a pseudo-terminal (raw REPL)",
        description="Start a virtual device and print its port (the pseudo-terminal) on the first line "
        "of stdout and its control channel (control HOST:PORT) on the second; it runs until killed. "
        "mpremote and opmob deploy/provision/verify work on it; once deployed and provisioned, its "
        "/main.py runs the accessory firmware with the sim wiring below.",
    )
    p.add_argument("--board", default="unix-sim", help="the board it pretends to be (only unix-sim)")
    p.add_argument("--state", help="directory holding the device's file system (default: a temporary one)")
    p.add_argument("--link", help="also make this path a symbolic link to the port (a stable name)")
    w = p.add_argument_group(
        "sim wiring",
        "The unix-sim board's peripherals, for the firmware that /main.py starts: written to the "
        "device's /.sim.json at each start, overriding the board file's sim section.",
    )
    w.add_argument(
        "--control-port",
        type=_port,
        default=0,
        help="TCP port of the control channel on 127.0.0.1 (default: a free one); printed on the "
        "second line of stdout",
    )
    w.add_argument(
        "--mic", help="host file played into the microphone: raw s16le, or .wav (8 kHz mono 16-bit)"
    )
    w.add_argument(
        "--speaker", help="host file the speaker writes (WAV); default: speaker.wav in the state directory"
    )
    w.add_argument(
        "--wifi-scenario", help="host JSON file of access points (accessory.md, the unix-sim board)"
    )
    w.add_argument("--battery-mv", type=int, help="the battery's voltage at start")
    w.add_argument(
        "--watchdog-ms",
        type=int,
        help="start the app's watchdog with this timeout: when not fed, the interpreter is killed "
        "and started again, as a board resets",
    )


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1..65535, or 0: a free one)")
    return n


class WiringError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((CONTROL_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def lock_state(root: Path) -> Any:
    """An exclusive lock on the state directory, held while the device runs: two devices on one
    file system would overwrite each other's configuration and files."""
    import fcntl

    f = open(root / LOCK, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise WiringError(
            f"the state directory {root} is in use by another virtual device (pid {pid}): give each "
            "device its own --state directory"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def check_control_port(port: int) -> None:
    """A fixed control port must be free now: the firmware binds it only once /main.py runs, and
    would then fail where nobody reads its console."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the firmware's server binds
        try:
            s.bind((CONTROL_HOST, port))
        except OSError as e:
            raise WiringError(
                f"--control-port {port}: {CONTROL_HOST}:{port} is in use ({e.strerror}), by another "
                "virtual device or program: choose another port, or 0 for a free one"
            ) from None


def write_wiring(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The device's /.sim.json (and /.sim/ links to the host files) from the command line; returns
    the wiring. Whatever an earlier start wired and this one does not say is gone."""
    if args.control_port:
        check_control_port(args.control_port)
    doc: dict[str, Any] = {"control_port": args.control_port or free_port()}
    links: dict[str, Path] = {}
    if args.mic:
        mic = Path(args.mic).resolve()
        if not mic.is_file():
            raise WiringError(f"--mic {args.mic}: no such file")
        # The firmware tells a WAV from raw samples by the name, as it does on the host.
        links["mic.wav" if mic.name.endswith(".wav") else "mic.raw"] = mic
    if args.speaker:
        spk = Path(args.speaker).resolve()
        if not spk.parent.is_dir():
            raise WiringError(f"--speaker {args.speaker}: no directory {spk.parent}")
        links["speaker.wav"] = spk
    if args.wifi_scenario:
        scen = Path(args.wifi_scenario).resolve()
        try:
            ok = isinstance(json.loads(scen.read_text()), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise WiringError(f"--wifi-scenario {args.wifi_scenario}: not a readable JSON object")
        links["wifi.json"] = scen
    if args.battery_mv is not None:
        if not 0 <= args.battery_mv <= 10000:
            raise WiringError(f"--battery-mv {args.battery_mv}: expected millivolts 0..10000")
        doc["battery_mv"] = args.battery_mv
    if args.watchdog_ms is not None:
        if not 1000 <= args.watchdog_ms <= 60000:  # a board definition's range (board.py)
            raise WiringError(f"--watchdog-ms {args.watchdog_ms}: expected 1000..60000")
        doc["watchdog_ms"] = args.watchdog_ms
    d = root / WIRING_DIR
    if d.is_symlink() or d.is_file():
        d.unlink()
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for name, target in links.items():
        (d / name).symlink_to(target)
        key = {"mic.wav": "mic", "mic.raw": "mic", "speaker.wav": "speaker", "wifi.json": "wifi_scenario"}[
            name
        ]
        doc[key] = f"/{WIRING_DIR}/{name}"
    (root / WIRING).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def run(args: argparse.Namespace) -> int:
    if args.board != "unix-sim":
        print(f"opmob virtual: board {args.board!r}: only unix-sim runs on this machine", file=sys.stderr)
        return 2
    try:
        micropython_command()
    except ResourceMissing as e:
        print(f"opmob virtual: {e}", file=sys.stderr)
        return 2
    temp = args.state is None
    root = Path(tempfile.mkdtemp(prefix="opmob-device-") if temp else args.state).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"opmob virtual: cannot create the state directory {root}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        lock = lock_state(root)
    except WiringError as e:
        print(f"opmob virtual: {e}", file=sys.stderr)
        return 2
    hwid = root / ".hwid"  # the virtual hardware's serial number (machine.unique_id on a board)
    if not hwid.exists():
        hwid.write_text(os.urandom(6).hex() + "\n")
    try:
        wiring = write_wiring(root, args)
    except (WiringError, OSError) as e:
        print(f"opmob virtual: {e}", file=sys.stderr)
        if temp:
            shutil.rmtree(root, ignore_errors=True)
        return 2
    control = f"{CONTROL_HOST}:{wiring['control_port']}"
    dev = VirtualDevice(root, board=args.board)
    link = Path(args.link) if args.link else None
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        if link is not None:
            if link.is_symlink():
                link.unlink()
            link.symlink_to(dev.port)
        print(dev.port, flush=True)
        print(f"control {control}", flush=True)
        print(
            f"opmob virtual: {args.board} on {dev.port}, control channel {control}, file system {root}",
            file=sys.stderr,
            flush=True,
        )
        while not stop:
            dev.step(0.5)
    finally:
        dev.close()
        lock.close()
        if link is not None and link.is_symlink():
            link.unlink()
        if temp:
            shutil.rmtree(root, ignore_errors=True)
    return 0
