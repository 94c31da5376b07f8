"""opmob.relay_config: defaults, every bad key's message, unknown keys; both runtimes."""

from fwtest import raises
from opmob.floor_server import FloorConfig
from opmob.relay_config import ConfigError, RelayConfig


def minimal(**sections):
    d = {"relay": {"identity": "relay-1@no"}, "registry": {"path": "/var/lib/opmob/registry.sqlite"}}
    for name in sections:
        table = dict(d.get(name, {}))
        table.update(sections[name])
        d[name] = table
    return d


def test_defaults():
    cfg = RelayConfig.from_dict(minimal())
    assert cfg.identity == "relay-1@no"
    assert cfg.system == "no"  # from the identity
    assert cfg.accel == "auto"  # the C extension where it is built
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 7700)
    assert (cfg.status_host, cfg.status_port) == ("127.0.0.1", 7780)
    assert cfg.registry_path == "/var/lib/opmob/registry.sqlite"
    assert cfg.registry_import is None
    assert cfg.max_affiliations == 8 and cfg.max_devices == 1000
    assert cfg.keepalive == 15 and cfg.expiry == 3600
    assert cfg.admin_socket is None  # the driver puts it beside the registry
    assert isinstance(cfg.floor, FloorConfig)
    ref = FloorConfig()
    for name in (
        "t1",
        "t2",
        "t3",
        "t7",
        "c7",
        "t8",
        "t20",
        "c20",
        "queueing",
        "queue_max",
        "default_priority",
        "emergency_priority",
        "imminent_peril_priority",
        "deny_only_one",
        "tail_grace",
    ):
        assert getattr(cfg.floor, name) == getattr(ref, name), name


def test_every_key_given():
    d = {
        "relay": {"identity": "relay-tromso-2@no", "system": "no", "accel": "pure"},
        "listen": {"host": "::", "port": 0},
        "status": {"host": "10.0.0.1", "port": 0},
        "registry": {"path": "/data/reg", "import": "/etc/opmob/registry.json"},
        "limits": {"max_affiliations": 3, "max_devices": 200},
        "timers": {"keepalive": 5, "expiry": 600},
        "floor": {
            "t1": 2,
            "t2": 60.5,
            "t3": 1.5,
            "t7": 0.5,
            "c7": 4,
            "t8": 0.25,
            "t20": 0.2,
            "c20": 5,
            "queueing": False,
            "queue_max": 253,
            "default_priority": 10,
            "emergency_priority": 250,
            "imminent_peril_priority": 240,
            "deny_only_one": True,
            "tail_grace": 0,
        },
        "admin": {"socket": "/run/opmob/admin.sock"},
    }
    cfg = RelayConfig.from_dict(d)
    assert cfg.identity == "relay-tromso-2@no" and cfg.system == "no" and cfg.accel == "pure"
    assert (cfg.listen_host, cfg.listen_port, cfg.status_host, cfg.status_port) == ("::", 0, "10.0.0.1", 0)
    assert (cfg.registry_path, cfg.registry_import) == ("/data/reg", "/etc/opmob/registry.json")
    assert (cfg.max_affiliations, cfg.max_devices, cfg.keepalive, cfg.expiry) == (3, 200, 5, 600)
    f = cfg.floor
    assert (f.t1, f.t2, f.t3, f.t7, f.c7, f.t8, f.t20, f.c20) == (2, 60.5, 1.5, 0.5, 4, 0.25, 0.2, 5)
    assert f.queueing is False and f.queue_max == 253 and f.deny_only_one is True
    assert (f.default_priority, f.emergency_priority, f.imminent_peril_priority, f.tail_grace) == (
        10,
        250,
        240,
        0,
    )
    assert cfg.admin_socket == "/run/opmob/admin.sock"
    # to_dict gives back what was given, and reads back to the same settings.
    assert cfg.to_dict() == d
    assert RelayConfig.from_dict(cfg.to_dict()).to_dict() == d
    assert "registry" in repr(cfg)


# (section, key, bad value, words the message must hold)
BAD = [
    ("relay", "identity", "relay-1", "name@system"),
    ("relay", "identity", "Relay@no", "name@system"),
    ("relay", "identity", 7, "name@system"),
    ("relay", "system", "NO", "system code"),
    ("relay", "accel", "C", '"auto"'),
    ("relay", "accel", "fast", '"c" or "pure"'),
    ("relay", "accel", True, '"auto"'),
    ("relay", "system", "", "system code"),
    ("listen", "host", "", "IP address or host name"),
    ("listen", "host", "0.0.0.0 ", "IP address or host name"),
    ("listen", "host", ["0.0.0.0"], "IP address or host name"),
    ("listen", "port", 65536, "0..65535"),
    ("listen", "port", -1, "0..65535"),
    ("listen", "port", "7700", "0..65535"),
    ("listen", "port", 7700.0, "0..65535"),
    ("listen", "port", True, "0..65535"),
    ("status", "host", "local host", "IP address or host name"),
    ("status", "port", 70000, "0 turns the status endpoint off"),
    ("registry", "path", "", "path"),
    ("registry", "path", 5, "path"),
    ("registry", "import", False, "path"),
    ("limits", "max_affiliations", 0, "1..255"),
    ("limits", "max_affiliations", 256, "1..255"),
    ("limits", "max_devices", 0, "1..1000000"),
    ("limits", "max_devices", 2.5, "1..1000000"),
    ("timers", "keepalive", 0, "1..65535"),
    ("timers", "keepalive", 15.5, "1..65535"),
    ("timers", "expiry", 0, "1..4294967295"),
    ("floor", "t1", 0, "seconds > 0"),
    ("floor", "t1", -4, "seconds > 0"),
    ("floor", "t1", 4000, "not milliseconds"),
    ("floor", "t1", "4", "seconds > 0"),
    ("floor", "t2", 65536, "<= 65535"),
    ("floor", "t3", False, "seconds > 0"),
    ("floor", "t7", 0, "seconds > 0"),
    ("floor", "t8", 0, "seconds > 0"),
    ("floor", "t20", None, "seconds > 0"),
    ("floor", "c7", 0, "1..100"),
    ("floor", "c7", 1.0, "1..100"),
    ("floor", "c20", 101, "1..100"),
    ("floor", "queueing", 1, "true or false"),
    ("floor", "queueing", "yes", "true or false"),
    ("floor", "queue_max", 0, "1..253"),
    ("floor", "queue_max", 254, "1..253"),
    ("floor", "default_priority", 256, "0..255"),
    ("floor", "emergency_priority", -1, "0..255"),
    ("floor", "imminent_peril_priority", "high", "0..255"),
    ("floor", "deny_only_one", 0, "true or false"),
    ("floor", "tail_grace", -0.1, "0..60"),
    ("admin", "socket", "", "path"),
    ("admin", "socket", 7, "path"),
    ("admin", "socket", "/run/a\x00b", "path"),
]


def test_each_bad_value_names_its_key_and_what_is_expected():
    for section, key, value, words in BAD:
        d = minimal(**{section: {key: value}})
        e = raises(ConfigError, RelayConfig.from_dict, d)
        dotted = "%s.%s" % (section, key)
        assert isinstance(e, ValueError)
        assert e.key == dotted and e.problems == [(dotted, e.problems[0][1])], (dotted, e.problems)
        msg = str(e)
        assert msg.startswith(dotted + ": "), msg
        assert words in msg and "expected" in msg, (words, msg)
        assert "got %r" % (value,) in msg, msg


def test_accel_choices():
    for v in ("auto", "c", "pure"):
        assert RelayConfig.from_dict(minimal(relay={"accel": v})).accel == v
    assert RelayConfig.from_dict(minimal()).to_dict()["relay"]["accel"] == "auto"


def test_required_keys():
    e = raises(ConfigError, RelayConfig.from_dict, {})
    assert [k for k, _ in e.problems] == ["relay.identity", "registry.path"]
    assert "missing" in str(e) and "required" in str(e)
    e = raises(ConfigError, RelayConfig.from_dict, {"relay": {"identity": "relay-1@no"}})
    assert e.key == "registry.path"


def test_unknown_keys_are_errors():
    e = raises(ConfigError, RelayConfig.from_dict, minimal(listen={"prot": 7700}))
    assert e.key == "listen.prot"
    assert "unknown key" in str(e) and "did you mean 'port'" in str(e) and "host, port" in str(e)
    e = raises(ConfigError, RelayConfig.from_dict, dict(minimal(), lisen={"port": 1}))
    assert e.key == "lisen" and "did you mean 'listen'" in str(e)
    e = raises(ConfigError, RelayConfig.from_dict, minimal(floor={"queing": True}))
    assert e.key == "floor.queing" and "did you mean 'queueing'" in str(e)
    e = raises(ConfigError, RelayConfig.from_dict, minimal(timers={"zzzzzzzz": 1}))
    assert "did you mean" not in str(e) and "keepalive, expiry" in str(e)
    # A section that is not a table.
    e = raises(ConfigError, RelayConfig.from_dict, dict(minimal(), listen=7700))
    assert e.key == "listen" and "table" in str(e)
    raises(ConfigError, RelayConfig.from_dict, None)
    raises(ConfigError, RelayConfig.from_dict, [("relay", {})])


def test_cross_key_rules():
    e = raises(ConfigError, RelayConfig.from_dict, minimal(relay={"system": "se"}))
    assert e.key == "relay.system" and "relay-1@no" in str(e)
    assert RelayConfig.from_dict(minimal(relay={"system": "no"})).system == "no"
    e = raises(ConfigError, RelayConfig.from_dict, minimal(timers={"keepalive": 60, "expiry": 60}))
    assert e.key == "timers.expiry" and "keepalive" in str(e)
    e = raises(ConfigError, RelayConfig.from_dict, minimal(timers={"expiry": 10}))
    assert e.key == "timers.expiry"
    assert RelayConfig.from_dict(minimal(timers={"keepalive": 60, "expiry": 61})).expiry == 61


def test_all_problems_are_reported_at_once():
    d = minimal(listen={"port": "x"}, floor={"t2": 0, "c7": 0}, limits={"typo": 1})
    e = raises(ConfigError, RelayConfig.from_dict, d)
    keys = sorted(k for k, _ in e.problems)
    assert keys == ["floor.c7", "floor.t2", "limits.typo", "listen.port"], keys
    msg = str(e)
    assert msg.startswith("4 problems")
    for k in keys:
        assert "\n  %s: " % k in msg
