"""Relay configuration, checked completely before a relay starts.

CPython reads ``relay.toml`` (tomllib), MicroPython the same keys as JSON; both hand the nested
dict to ``RelayConfig.from_dict``. Every key is checked; a problem is reported with the key's
dotted path ("floor.t2") and what is expected, all problems at once (ConfigError.problems), and
an unknown key is an error, so a typo never silently leaves a default in force. Sample:
boards/rpi-relay/relay.toml.
"""

from opmob.floor_server import MAX_QUEUE, FloorConfig
from opmob.sig import system_of, valid_identity
from opmob.ticks import ms

_REQUIRED = object()
MAX_U32 = 0xFFFFFFFF
MAX_TIMER = 3600.0  # s; catches a timer written in milliseconds
EXPIRY_MS_MAX = 5 * 86400000  # the relay's timer for a registration's expiry, at most (see expiry_ms)


class ConfigError(ValueError):
    """``problems``: [(dotted key, what is wrong)]; ``key``: the first bad key."""

    def __init__(self, problems):
        if len(problems) == 1:
            msg = "%s: %s" % problems[0]
        else:
            msg = "%d problems in the relay configuration:\n%s" % (
                len(problems),
                "\n".join("  %s: %s" % p for p in problems),
            )
        super().__init__(msg)
        self.problems = problems
        self.key = problems[0][0]


class _Bad(Exception):
    pass


def _show(v):
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return _is_int(v) or isinstance(v, float)


# --- value checkers: return the value to keep or raise _Bad(what is expected) ------------------


def _identity(v):
    if not valid_identity(v):
        raise _Bad(
            'expected the relay\'s identity name@system in lower-case a-z 0-9 . _ - (e.g. "relay-1@no")'
        )
    return v


def _system(v):
    if not isinstance(v, str) or not valid_identity("x@" + v):
        raise _Bad('expected a system code in lower-case a-z 0-9 - (e.g. "no")')
    return v


_HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:_%"


def _host(v):
    if not isinstance(v, str) or not 0 < len(v) <= 253 or any(c not in _HOST_CHARS for c in v):
        raise _Bad('expected an IP address or host name (e.g. "0.0.0.0", "::", "relay.local")')
    return v


def _port(what_zero):
    def check(v):
        if not _is_int(v) or not 0 <= v <= 65535:
            raise _Bad("expected a port number 0..65535 (0 %s)" % what_zero)
        return v

    return check


def _path(v):
    if not isinstance(v, str) or not v or "\x00" in v:
        raise _Bad("expected a file or directory path as a string")
    return v


def _int_in(lo, hi, unit=""):
    def check(v):
        if not _is_int(v) or not lo <= v <= hi:
            raise _Bad("expected an integer %d..%d%s" % (lo, hi, unit))
        return v

    return check


def _seconds(hi):
    def check(v):
        if not _is_number(v) or not 0 < v <= hi:
            raise _Bad("expected a number of seconds > 0 and <= %g (seconds, not milliseconds)" % hi)
        return v

    return check


def _grace(v):
    if not _is_number(v) or not 0 <= v <= 60:
        raise _Bad("expected a number of seconds 0..60")
    return v


def _bool(v):
    if not isinstance(v, bool):
        raise _Bad("expected true or false")
    return v


ACCEL_CHOICES = ("auto", "c", "pure")


def _accel(v):
    if v not in ACCEL_CHOICES:
        raise _Bad('expected "auto" (the C extension where built), "c" or "pure"')
    return v


_FLOOR_DEFAULTS = FloorConfig()

# section -> ((key, checker, default, attribute or None), ...); attribute None: the value goes to
# FloorConfig under the key's own name.
_SCHEMA = (
    (
        "relay",
        (
            ("identity", _identity, _REQUIRED, "identity"),
            ("system", _system, None, "system"),
            # The per-packet SRTP path: the C extension ("c"), the pure-Python twin ("pure") or
            # the extension where it is built ("auto"). CPython only; OPMOB_ACCEL overrides it.
            ("accel", _accel, "auto", "accel"),
        ),
    ),
    (
        "listen",
        (
            ("host", _host, "0.0.0.0", "listen_host"),
            ("port", _port("picks any free port"), 7700, "listen_port"),
        ),
    ),
    (
        "status",
        (
            ("host", _host, "127.0.0.1", "status_host"),
            ("port", _port("turns the status endpoint off"), 7780, "status_port"),
        ),
    ),
    (
        "registry",
        (
            ("path", _path, _REQUIRED, "registry_path"),
            ("import", _path, None, "registry_import"),
        ),
    ),
    (
        "limits",
        (
            ("max_affiliations", _int_in(1, 255, " groups per device"), 8, "max_affiliations"),
            ("max_devices", _int_in(1, 1000000, " registered devices"), 1000, "max_devices"),
        ),
    ),
    (
        "timers",
        (
            ("keepalive", _int_in(1, 65535, " s"), 15, "keepalive"),
            ("expiry", _int_in(1, MAX_U32, " s"), 3600, "expiry"),
        ),
    ),
    (
        "floor",
        (
            ("t1", _seconds(MAX_TIMER), _FLOOR_DEFAULTS.t1, None),
            ("t2", _seconds(65535), _FLOOR_DEFAULTS.t2, None),  # sent in a 16-bit Duration field
            ("t3", _seconds(MAX_TIMER), _FLOOR_DEFAULTS.t3, None),
            ("t7", _seconds(MAX_TIMER), _FLOOR_DEFAULTS.t7, None),
            ("c7", _int_in(1, 100, " transmissions"), _FLOOR_DEFAULTS.c7, None),
            ("t8", _seconds(MAX_TIMER), _FLOOR_DEFAULTS.t8, None),
            ("t20", _seconds(MAX_TIMER), _FLOOR_DEFAULTS.t20, None),
            ("c20", _int_in(1, 100, " transmissions"), _FLOOR_DEFAULTS.c20, None),
            ("queueing", _bool, _FLOOR_DEFAULTS.queueing, None),
            ("queue_max", _int_in(1, MAX_QUEUE), _FLOOR_DEFAULTS.queue_max, None),
            ("default_priority", _int_in(0, 255), _FLOOR_DEFAULTS.default_priority, None),
            ("emergency_priority", _int_in(0, 255), _FLOOR_DEFAULTS.emergency_priority, None),
            ("imminent_peril_priority", _int_in(0, 255), _FLOOR_DEFAULTS.imminent_peril_priority, None),
            ("deny_only_one", _bool, _FLOOR_DEFAULTS.deny_only_one, None),
            ("tail_grace", _grace, _FLOOR_DEFAULTS.tail_grace, None),
        ),
    ),
    (
        # The operator's channel to a running CPython relay (stun, revive, kill, cancel an
        # emergency): a Unix socket, mode 0600. None: beside the registry (relay_cmd decides);
        # the MicroPython driver has no admin channel and ignores the key.
        "admin",
        (("socket", _path, None, "admin_socket"),),
    ),
)


LINK_CODECS = ("codec2_3200", "codec2_1600", "codec2_700c", "dvi4")
MIN_LINK_KEY_HEX = 32
_LINK_KEYS = ("peer", "host", "port", "key_file", "codec", "attach")


class LinkConfig:
    """One ``[[link]]`` entry. ``host``/``port`` None: this relay answers the peer's LINK_HELLO
    (the responder); set: it initiates. ``psk`` is filled by ``load_link_keys`` just before the
    relay starts, never by ``from_dict``: a configuration check must not need the key."""

    __slots__ = ("peer", "host", "port", "key_file", "codec", "attach", "psk")

    def __init__(self, peer, host, port, key_file, codec, attach):
        self.peer = peer
        self.host = host
        self.port = port
        self.key_file = key_file
        self.codec = codec
        self.attach = attach
        self.psk = None

    @property
    def initiator(self):
        return self.host is not None

    @property
    def transcodes(self):
        return self.codec != "dvi4"

    def mode(self):
        """The Codec2 mode name ("3200", "1600", "700C"), or None for "dvi4"."""
        if self.codec == "dvi4":
            return None
        return self.codec[len("codec2_") :].upper()

    def to_dict(self):
        d = {"peer": self.peer, "key_file": self.key_file, "codec": self.codec, "attach": list(self.attach)}
        if self.host is not None:
            d["host"] = self.host
            d["port"] = self.port
        return d


def _links(value, own_identity, problems):
    if not isinstance(value, list):
        problems.append(("link", "expected an array of tables ([[link]] entries)"))
        return []
    links = []
    peers = {}
    attached = {}
    for i, t in enumerate(value):
        where = "link[%d]" % i
        if not isinstance(t, dict):
            problems.append((where, "expected a table with peer, key_file, ..."))
            continue
        for k in t:
            if k not in _LINK_KEYS:
                problems.append(("%s.%s" % (where, k), _unknown(str(k), _LINK_KEYS)))
        n0 = len(problems)
        peer = t.get("peer")
        if peer is None:
            problems.append((where + ".peer", "missing; this key is required"))
        elif not valid_identity(peer):
            problems.append(
                (
                    where + ".peer",
                    'expected the peer relay\'s identity (e.g. "relay-b@no"), got %s' % _show(peer),
                )
            )
        elif peer == own_identity:
            problems.append((where + ".peer", "is this relay's own identity"))
        elif peer in peers:
            problems.append((where + ".peer", "a second link to %s (first: link[%d])" % (peer, peers[peer])))
        else:
            peers[peer] = i
        host = t.get("host")
        port = t.get("port")
        if (host is None) != (port is None):
            problems.append(
                (where, "host and port go together (both on the initiating side, neither on the responder)")
            )
        if host is not None:
            try:
                _host(host)
            except _Bad as e:
                problems.append((where + ".host", "%s, got %s" % (e.args[0], _show(host))))
        if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
            problems.append((where + ".port", "expected a port number 1..65535, got %s" % _show(port)))
        key_file = t.get("key_file")
        if key_file is None:
            problems.append(
                (
                    where + ".key_file",
                    "missing; this key is required (a file holding the link key, mode 0600)",
                )
            )
        elif not isinstance(key_file, str) or not key_file:
            problems.append((where + ".key_file", "expected a file path as a string"))
        codec = t.get("codec", "codec2_3200")
        if codec not in LINK_CODECS:
            problems.append(
                (where + ".codec", "expected one of %s, got %s" % (", ".join(LINK_CODECS), _show(codec)))
            )
        attach = t.get("attach", [])
        if not isinstance(attach, list):
            problems.append((where + ".attach", "expected a list of group identities"))
            attach = []
        for g in attach:
            if not valid_identity(g):
                problems.append(
                    (where + ".attach", "expected group identities (name@system), got %s" % _show(g))
                )
            elif g in attached:
                problems.append(
                    (where + ".attach", "%s is attached over link[%d] already" % (g, attached[g]))
                )
            else:
                attached[g] = i
        if len(problems) == n0:
            links.append(LinkConfig(peer, host, port, key_file, codec, list(attach)))
    return links


def read_link_key(path):
    """The link key in ``path``: 32+ hex digits (whitespace around them ignored), the file mode
    0600 or stricter. Raises ValueError saying what is wrong, never quoting the file."""
    import os

    try:
        mode = os.stat(path)[0]
    except OSError:
        raise ValueError("cannot read the link key file %s" % path)
    if mode & 0o077:
        raise ValueError(
            "link key file %s is readable by others (mode %o): chmod 600 it" % (path, mode & 0o777)
        )
    try:
        with open(path, "rb") as f:
            text = f.read(4096)
    except OSError:
        raise ValueError("cannot read the link key file %s" % path)
    text = text.strip()
    if len(text) < MIN_LINK_KEY_HEX or len(text) % 2 or any(c not in b"0123456789abcdefABCDEF" for c in text):
        raise ValueError(
            "link key file %s must hold %d or more hex digits, nothing else" % (path, MIN_LINK_KEY_HEX)
        )
    import binascii

    return binascii.unhexlify(text)


def load_link_keys(cfg, base=None):
    """Read every link's key (``base``: the directory relative key_file paths start from).
    ConfigError listing each link whose key cannot be used."""
    problems = []
    for i, lk in enumerate(cfg.links):
        path = lk.key_file
        if base is not None and not path.startswith("/"):
            path = base.rstrip("/") + "/" + path
        try:
            lk.psk = read_link_key(path)
        except ValueError as e:
            problems.append(("link[%d].key_file" % i, "%s (link to %s)" % (e.args[0], lk.peer)))
    if problems:
        raise ConfigError(problems)


def _near(word, choices):
    """The choice a typo most likely meant (edit distance at most 2), or None."""
    best, best_d = None, 3
    for c in choices:
        prev = list(range(len(c) + 1))
        for i in range(1, len(word) + 1):
            cur = [i] + [0] * len(c)
            for j in range(1, len(c) + 1):
                cost = 0 if word[i - 1] == c[j - 1] else 1
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            prev = cur
        if prev[-1] < best_d:
            best, best_d = c, prev[-1]
    return best


def _unknown(key, choices):
    guess = _near(key.rsplit(".", 1)[-1], choices)
    hint = " (did you mean '%s'?)" % guess if guess else ""
    return "unknown key%s; expected one of: %s" % (hint, ", ".join(choices))


class RelayConfig:
    """Checked relay settings. Attributes: identity, system, accel ("auto", "c" or "pure"), listen_host, listen_port,
    status_host, status_port (0: off), registry_path, registry_import (None: nothing to load),
    max_affiliations, max_devices, keepalive, expiry (s), floor (a FloorConfig), admin_socket (None:
    the driver's default, beside the registry), links ([LinkConfig], docs/relay.md "Links")."""

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigError([("(top)", "expected a table of sections ([relay], [listen], ...)")])
        problems = []
        sections = [s for s, _ in _SCHEMA] + ["link"]
        for name in d:
            if name not in sections:
                problems.append((str(name), _unknown(str(name), sections)))
        cfg = cls()
        floor = {}
        given = {}
        for section, keys in _SCHEMA:
            table = d.get(section, {})
            if not isinstance(table, dict):
                problems.append((section, "expected a table (a [%s] section)" % section))
                table = {}
            names = [k for k, _, _, _ in keys]
            for k in table:
                if k not in names:
                    problems.append(("%s.%s" % (section, k), _unknown(str(k), names)))
            for key, check, default, attr in keys:
                dotted = "%s.%s" % (section, key)
                if key in table:
                    try:
                        value = check(table[key])
                        given[dotted] = True
                    except _Bad as e:
                        problems.append((dotted, "%s, got %s" % (e.args[0], _show(table[key]))))
                        value = None if default is _REQUIRED else default
                elif default is _REQUIRED:
                    problems.append((dotted, "missing; this key is required"))
                    value = None
                else:
                    value = default
                if attr is None:
                    floor[key] = value
                else:
                    setattr(cfg, attr, value)
        cfg.links = _links(d.get("link", []), cfg.identity, problems)
        if cfg.identity is not None:
            if cfg.system is None:
                cfg.system = system_of(cfg.identity)
            elif "relay.system" in given and cfg.system != system_of(cfg.identity):
                problems.append(
                    (
                        "relay.system",
                        "'%s' differs from the system of relay.identity '%s'" % (cfg.system, cfg.identity),
                    )
                )
        if _is_int(cfg.keepalive) and _is_int(cfg.expiry) and cfg.expiry <= cfg.keepalive:
            problems.append(
                (
                    "timers.expiry",
                    "must be longer than timers.keepalive (%d s), got %d" % (cfg.keepalive, cfg.expiry),
                )
            )
        if not problems:
            try:
                cfg.floor = FloorConfig(**floor)
            except ValueError as e:
                problems.append(("floor", str(e)))
        if problems:
            raise ConfigError(problems)
        return cfg

    def __init__(self):
        self.identity = None
        self.system = None
        self.accel = None
        self.listen_host = None
        self.listen_port = None
        self.status_host = None
        self.status_port = None
        self.registry_path = None
        self.registry_import = None
        self.max_affiliations = None
        self.max_devices = None
        self.keepalive = None
        self.expiry = None
        self.floor = None
        self.admin_socket = None
        self.links = []

    # The cores count time in int milliseconds (opmob/ticks.py); the file says seconds. An expiry
    # beyond EXPIRY_MS_MAX is kept for the wire (REGISTER_ACK) but the relay's own timer for it is
    # brought forward: wrap-safe comparison holds only for times less than 2^29 ms apart.
    @property
    def keepalive_ms(self):
        return ms(self.keepalive)

    @property
    def expiry_ms(self):
        e = ms(self.expiry)
        return e if e < EXPIRY_MS_MAX else EXPIRY_MS_MAX

    def link(self, peer):
        for lk in self.links:
            if lk.peer == peer:
                return lk
        return None

    def to_dict(self):
        """The settings in force, defaults included, in from_dict's shape (for a status page)."""
        out = {}
        for section, keys in _SCHEMA:
            table = {}
            for key, _, _, attr in keys:
                value = getattr(self.floor, key) if attr is None else getattr(self, attr)
                if value is not None:
                    table[key] = value
            out[section] = table
        if self.links:
            out["link"] = [lk.to_dict() for lk in self.links]
        return out

    def __repr__(self):
        return "RelayConfig(%r)" % self.to_dict()
