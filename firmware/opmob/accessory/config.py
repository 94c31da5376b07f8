"""The accessory's provisioned configuration: who it is, whom it trusts, which groups it uses.

Written by provisioning (``opmob provision``, issue 6) as one JSON file (``/config.json`` on a
device), read and checked completely at boot by ``load(path)``. A missing, unreadable or invalid
file raises ``ConfigError``: the app then runs in unprovisioned mode (its LED pattern, a console
message naming the problem) instead of crashing. Format: docs/accessory.md.

The secret (and group keys) are held as bytes on the object and never appear in a repr, a message
or an error: errors about them name the key only.

    cfg = load("/config.json")
    cfg.identity, cfg.secret (16 bytes), cfg.home, cfg.relays [{identity, host, port, ssid, psk}],
    cfg.partners, cfg.talk_groups [{identity, priority, label}], cfg.scan_groups [...],
    cfg.keys {(group, key_id): 16 bytes}, cfg.floor_priority, cfg.status ("active" or "killed")
"""

import binascii
import json

from opmob.sig import system_of, valid_identity

FORMAT = "opmob-accessory"
VERSION = 1
MAX_GROUPS = 16
MAX_RELAYS = 16
ACTIVE = "active"
KILLED = "killed"

_TOP = (
    "format",
    "version",
    "identity",
    "secret",
    "status",
    "home",
    "partners",
    "relays",
    "groups",
    "scan",
    "keys",
    "floor_priority",
    "comment",
)
_RELAY = ("identity", "host", "port", "ssid", "psk")
_GROUP = ("identity", "priority", "label")
_KEY = ("group", "key_id", "key")
_HEX = "0123456789abcdefABCDEF"


class ConfigError(ValueError):
    """``problems``: [(dotted key, what is wrong)]; ``key``: the first bad key. Never holds a secret."""

    def __init__(self, where, problems):
        if len(problems) == 1:
            msg = "%s: %s: %s" % (where, problems[0][0], problems[0][1])
        else:
            msg = "%s: %d problems:\n%s" % (where, len(problems), "\n".join("  %s: %s" % p for p in problems))
        super().__init__(msg)
        self.problems = problems
        self.key = problems[0][0]


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _hex16(v):
    """16 bytes from 32 hex digits, or None."""
    if not isinstance(v, str) or len(v) != 32:
        return None
    for c in v:
        if c not in _HEX:
            return None
    return binascii.unhexlify(v)


def _unknown(d, key, known, problems):
    for k in d:
        if k not in known:
            problems.append(("%s%s" % (key, k), "unknown key (a typo?); known: %s" % ", ".join(known)))


class AccessoryConfig:
    def __init__(self):
        self.identity = None
        self.secret = None
        self.status = ACTIVE
        self.home = None
        self.partners = ()
        self.relays = []
        self.talk_groups = []
        self.scan_groups = []
        self.keys = {}
        self.floor_priority = None  # None: requests name no priority; the relay uses its default

    def __repr__(self):
        return "AccessoryConfig(%s, %d relays, %d talk groups, secret=<hidden>)" % (
            self.identity,
            len(self.relays),
            len(self.talk_groups),
        )

    @property
    def killed(self):
        return self.status == KILLED

    def relay_for_ssid(self, ssid):
        for r in self.relays:
            if r["ssid"] == ssid:
                return r
        return None

    def group_names(self):
        return [g["identity"] for g in self.talk_groups] + [g["identity"] for g in self.scan_groups]

    @classmethod
    def from_dict(cls, doc, where="config"):
        problems = []
        c = cls()
        if not isinstance(doc, dict):
            raise ConfigError(where, [("(document)", "expected a JSON object")])
        _unknown(doc, "", _TOP, problems)
        if doc.get("format") != FORMAT:
            problems.append(("format", 'expected "%s"' % FORMAT))
        if doc.get("version") != VERSION:
            problems.append(
                ("version", "this firmware reads version %d, got %r" % (VERSION, doc.get("version")))
            )
        ident = doc.get("identity")
        if not valid_identity(ident):
            problems.append(("identity", "expected the device's identity name@system (e.g. ola.nordmann@no)"))
            ident = None
        c.identity = ident
        status = doc.get("status", ACTIVE)
        if status not in (ACTIVE, KILLED):
            problems.append(("status", "expected active or killed"))
            status = ACTIVE
        c.status = status
        if status == ACTIVE:
            c.secret = _hex16(doc.get("secret"))
            if c.secret is None:
                problems.append(("secret", "expected the device secret K as 32 hex digits"))
        elif "secret" in doc:
            problems.append(("secret", "a killed device holds no secret"))
        home = doc.get("home", system_of(ident) if ident else None)
        if not isinstance(home, str) or not valid_identity("x@" + home):
            problems.append(("home", "expected the home system code (e.g. no)"))
        elif ident and home != system_of(ident):
            problems.append(("home", "must be the identity's system (%s)" % system_of(ident)))
        c.home = home
        partners = doc.get("partners", [])
        if not isinstance(partners, list) or any(
            not isinstance(p, str) or not valid_identity("x@" + p) or p == home for p in partners
        ):
            problems.append(("partners", "expected a list of partner system codes (other than home)"))
            partners = []
        c.partners = tuple(partners)

        relays = doc.get("relays")
        if status == ACTIVE and (not isinstance(relays, list) or not 0 < len(relays) <= MAX_RELAYS):
            problems.append(("relays", "expected 1..%d relays the device may use" % MAX_RELAYS))
            relays = []
        for i, r in enumerate(relays or ()):
            key = "relays[%d]" % i
            if not isinstance(r, dict):
                problems.append((key, "expected an object"))
                continue
            _unknown(r, key + ".", _RELAY, problems)
            rid = r.get("identity")
            if not valid_identity(rid):
                problems.append((key + ".identity", "expected the relay's identity name@system"))
            elif system_of(rid) != home and system_of(rid) not in c.partners:
                problems.append((key + ".identity", "a relay of neither the home system nor a partner"))
            host = r.get("host")
            if not isinstance(host, str) or not 0 < len(host) <= 64 or not _numeric_host(host):
                problems.append((key + ".host", "expected the relay's numeric IP address"))
            port = r.get("port", 7700)
            if not _is_int(port) or not 0 < port <= 65535:
                problems.append((key + ".port", "expected a UDP port 1..65535"))
            ssid = r.get("ssid")
            if not isinstance(ssid, str) or not 0 < len(ssid) <= 32:
                problems.append(
                    (key + ".ssid", "expected the WiFi network (SSID, 1..32 bytes) the relay serves")
                )
            psk = r.get("psk")
            if psk is not None and (not isinstance(psk, str) or not 8 <= len(psk) <= 63):
                problems.append((key + ".psk", "expected a WPA2 passphrase of 8..63 characters"))
            c.relays.append({"identity": rid, "host": host, "port": port, "ssid": ssid, "psk": psk})

        seen = {}
        c.talk_groups = _groups(doc, "groups", status == ACTIVE, problems, seen)
        c.scan_groups = _groups(doc, "scan", False, problems, seen)

        keys = doc.get("keys", [])
        if not isinstance(keys, list):
            problems.append(("keys", "expected a list of group keys"))
            keys = []
        for i, k in enumerate(keys):
            key = "keys[%d]" % i
            if not isinstance(k, dict):
                problems.append((key, "expected an object"))
                continue
            _unknown(k, key + ".", _KEY, problems)
            g = k.get("group")
            kid = k.get("key_id")
            raw = _hex16(k.get("key"))
            if g not in seen:
                problems.append((key + ".group", "a key for a group not in groups or scan"))
            if not _is_int(kid) or not 0 <= kid <= 0xFFFF:
                problems.append((key + ".key_id", "expected a key id 0..65535"))
            if raw is None:
                problems.append((key + ".key", "expected a 128-bit group key as 32 hex digits"))
            if (g, kid) in c.keys:
                problems.append((key, "the same group and key id twice"))
            c.keys[(g, kid)] = raw

        fp = doc.get("floor_priority")
        if fp is not None and (not _is_int(fp) or not 0 <= fp <= 255):
            problems.append(("floor_priority", "expected 0..255 (the relay caps it at the device's ceiling)"))
            fp = None
        c.floor_priority = fp
        if "comment" in doc and not isinstance(doc["comment"], str):
            problems.append(("comment", "expected text"))
        if problems:
            raise ConfigError(where, problems)
        return c


def _numeric_host(h):
    if ":" in h:
        return all(ch in _HEX + ":." for ch in h)
    parts = h.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or not all(ch in "0123456789" for ch in p) or int(p) > 255:
            return False
    return True


def _groups(doc, key, required, problems, seen):
    v = doc.get(key, [])
    if not isinstance(v, list) or len(v) > MAX_GROUPS or (required and not v):
        problems.append(
            (key, "expected a list of 1..%d groups" % MAX_GROUPS if required else "expected a list of groups")
        )
        return []
    out = []
    for i, g in enumerate(v):
        k = "%s[%d]" % (key, i)
        if isinstance(g, str):
            g = {"identity": g}
        if not isinstance(g, dict):
            problems.append((k, "expected a group identity or an object"))
            continue
        _unknown(g, k + ".", _GROUP, problems)
        gid = g.get("identity")
        if not valid_identity(gid):
            problems.append((k + ".identity", "expected the group's identity name@system"))
            continue
        if gid in seen:
            problems.append((k + ".identity", "%s is listed twice (%s)" % (gid, seen[gid])))
            continue
        seen[gid] = k
        prio = g.get("priority", 0)
        if not _is_int(prio) or not 0 <= prio <= 255:
            problems.append((k + ".priority", "expected 0..255"))
            prio = 0
        label = g.get("label", gid.split("@")[0])
        if not isinstance(label, str) or not 0 < len(label) <= 32:
            problems.append((k + ".label", "expected a short label (1..32 characters)"))
            label = gid
        out.append({"identity": gid, "priority": prio, "label": label})
    return out


def load(path):
    """Read and check ``path``; ConfigError says why it cannot be used (never quoting a secret)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(
            path, [("(file)", "no configuration (%s): the accessory is not provisioned" % _errno(e))]
        )
    try:
        doc = json.loads(text)
    except ValueError:
        # The parser's message can quote the text around the error, which may be the secret.
        raise ConfigError(
            path, [("(file)", "not valid JSON (damaged or cut short): provision the accessory again")]
        )
    return AccessoryConfig.from_dict(doc, path)


def _errno(e):
    import errno

    if e.args and e.args[0] == errno.ENOENT:
        return "file not found"
    return "cannot read it: %s" % type(e).__name__


def erase_secret(path, cfg):
    """After a kill: rewrite the configuration without the secret and group keys, atomically, so
    the device never registers again (a relay refuses it anyway; the secret must not stay)."""
    import os

    from opmob.compat import fsync_file, open_private

    try:
        with open(path) as f:
            old = json.load(f)
        if not isinstance(old, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        # What the device knows of itself is enough to stay killed across a reboot.
        old = {"format": FORMAT, "version": VERSION, "identity": cfg.identity}
    doc = {}
    for k in old:
        if k not in ("secret", "keys"):
            doc[k] = old[k]
    doc["status"] = KILLED
    tmp = path + ".tmp"
    f = open_private(tmp)
    try:
        f.write(json.dumps(doc).encode())
        fsync_file(f)
    finally:
        f.close()
    try:
        os.rename(tmp, path)
    except OSError:
        os.remove(path)
        os.rename(tmp, path)
    cfg.secret = None
    cfg.keys = {}
    cfg.status = KILLED
