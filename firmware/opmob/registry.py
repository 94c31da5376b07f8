"""Home registry: device and group records, authentication vectors, the export format.

``Registry(store, system)`` keeps its records in a store (opmob.store) under the kinds "device"
and "group", and remembers its system under ("meta", "registry") so that a store is never opened
for the wrong system. Records are validated whenever they enter: from an export, from the store
at start, from a status change. Format and merge rules: docs/registry.md.

A device record holds the device's 128-bit secret K only when this registry is the device's home
(the device's system is the registry's); records of other systems, or of this system on a relay
that is not its home, come from a *partner view* and carry no secret. Secrets never appear in a
repr, a message or an exception.
"""

import binascii

from opmob import authvec
from opmob.sig import system_of, valid_identity

EXPORT_FORMAT = "opmob-registry"
EXPORT_VERSION = 1
VIEW_HOME = "home"
VIEW_PARTNER = "partner"

ACTIVE = "active"
STUNNED = "stunned"
KILLED = "killed"
STATUSES = (ACTIVE, STUNNED, KILLED)
# An import never lowers a status: a restart that re-reads an old export must not revive a device
# a dispatcher stunned, and killed is final.
_SEVERITY = {ACTIVE: 0, STUNNED: 1, KILLED: 2}

OPEN = "open"
MEMBERS = "members"
POLICIES = (OPEN, MEMBERS)

KIND_DEVICE = "device"
KIND_GROUP = "group"
KIND_META = "meta"
META_KEY = "registry"

MAX_U32 = 0xFFFFFFFF
MAX_KEY_ID = 0xFFFF  # key_id travels as a 16-bit field (protocol.md, field registry)
MAX_LIST = 1024
SECRET_HEX = 2 * authvec.K_LEN

_DEVICE_FIELDS = ("identity", "secret", "groups", "ceiling", "status", "vid", "cseq")
_PARTNER_DEVICE_FIELDS = ("identity", "groups", "ceiling", "status")
_SECRET_FIELDS = ("secret", "vid", "cseq")
_GROUP_FIELDS = ("identity", "policy", "e2e", "key_ids", "receive_only")
_EXPORT_FIELDS = ("format", "version", "system", "view", "comment", "devices", "groups")
_HEX = "0123456789abcdefABCDEF"


class RegistryError(ValueError):
    """A record or an export is not valid, or an operation is not allowed on a record.

    ``record`` names it ("device 'ola@no'", "devices[3]", "export"), ``field`` the field or None.
    """

    def __init__(self, record, field, problem):
        if field is None:
            msg = "%s: %s" % (record, problem)
        else:
            msg = "%s, field '%s': %s" % (record, field, problem)
        super().__init__(msg)
        self.record = record
        self.field = field


def _show(v):
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v):
    # bool is an int on CPython but not on MicroPython; refuse it on both.
    return isinstance(v, int) and not isinstance(v, bool)


def _check_system(system):
    if not isinstance(system, str) or not valid_identity("x@" + system):
        return False
    return True


class DeviceRecord:
    """One device. ``secret`` (16 bytes) and ``vid``/``cseq`` are None where this registry is not
    the device's home. ``vid``: last vector id issued; ``cseq``: last device-control sequence."""

    __slots__ = ("identity", "secret", "groups", "ceiling", "status", "vid", "cseq")

    def __init__(self, identity, secret, groups, ceiling, status, vid, cseq):
        self.identity = identity
        self.secret = secret
        self.groups = groups
        self.ceiling = ceiling
        self.status = status
        self.vid = vid
        self.cseq = cseq

    def copy(self, status=None, vid=None, cseq=None):
        return DeviceRecord(
            self.identity,
            self.secret,
            self.groups,
            self.ceiling,
            self.status if status is None else status,
            self.vid if vid is None else vid,
            self.cseq if cseq is None else cseq,
        )

    def to_dict(self, partner=False):
        d = {"identity": self.identity, "groups": list(self.groups), "ceiling": self.ceiling}
        d["status"] = self.status
        if self.secret is not None and not partner:
            d["secret"] = binascii.hexlify(self.secret).decode()
            d["vid"] = self.vid
            d["cseq"] = self.cseq
        return d

    def __eq__(self, other):
        if not isinstance(other, DeviceRecord):
            return False
        for name in DeviceRecord.__slots__:
            if getattr(self, name) != getattr(other, name):
                return False
        return True

    def __repr__(self):
        return "DeviceRecord(%r, groups=%r, ceiling=%d, status=%r, vid=%r, secret=%s)" % (
            self.identity,
            self.groups,
            self.ceiling,
            self.status,
            self.vid,
            "None" if self.secret is None else "<hidden>",
        )


class GroupRecord:
    """One group: member ``policy``, end-to-end flag and group key ids, receive-only members."""

    __slots__ = ("identity", "policy", "e2e", "key_ids", "receive_only")

    def __init__(self, identity, policy, e2e, key_ids, receive_only):
        self.identity = identity
        self.policy = policy
        self.e2e = e2e
        self.key_ids = key_ids
        self.receive_only = receive_only

    def to_dict(self):
        return {
            "identity": self.identity,
            "policy": self.policy,
            "e2e": self.e2e,
            "key_ids": list(self.key_ids),
            "receive_only": list(self.receive_only),
        }

    def __eq__(self, other):
        if not isinstance(other, GroupRecord):
            return False
        for name in GroupRecord.__slots__:
            if getattr(self, name) != getattr(other, name):
                return False
        return True

    def __repr__(self):
        return "GroupRecord(%r, policy=%r, e2e=%r, key_ids=%r, receive_only=%r)" % (
            self.identity,
            self.policy,
            self.e2e,
            self.key_ids,
            self.receive_only,
        )


# --- parsing ------------------------------------------------------------------------------------


def _identity_of(d, where, kind):
    if not isinstance(d, dict):
        raise RegistryError(where, None, "must be an object")
    ident = d.get("identity")
    if not valid_identity(ident):
        raise RegistryError(
            where,
            "identity",
            "must be name@system in lower-case a-z 0-9 . _ - (at most 64 bytes), got %s" % _show(ident),
        )
    return ident, "%s '%s'" % (kind, ident)


def _identities(v, rec, field):
    if not isinstance(v, (list, tuple)) or len(v) > MAX_LIST:
        raise RegistryError(rec, field, "must be a list of identities (at most %d)" % MAX_LIST)
    seen = []
    for x in v:
        if not valid_identity(x):
            raise RegistryError(rec, field, "%s is not a name@system identity" % _show(x))
        if x in seen:
            raise RegistryError(rec, field, "%s is listed twice" % _show(x))
        seen.append(x)
    return tuple(seen)


def _u32(v, rec, field):
    if not _is_int(v) or not 0 <= v <= MAX_U32:
        raise RegistryError(rec, field, "must be an integer 0..%d, got %s" % (MAX_U32, _show(v)))
    return v


def parse_device(d, where, home):
    """A DeviceRecord from its dict form. ``home``: the secret is required (and allowed)."""
    ident, rec = _identity_of(d, where, "device")
    allowed = _DEVICE_FIELDS if home else _PARTNER_DEVICE_FIELDS
    for k in d:
        if k not in allowed:
            if k in _SECRET_FIELDS:
                raise RegistryError(rec, k, "a partner view carries no secrets or counters")
            raise RegistryError(rec, k, "unknown field (expected: %s)" % ", ".join(allowed))
    secret = None
    if home:
        s = d.get("secret")
        # Never echo the value: it may be a secret with one character wrong.
        if not isinstance(s, str) or len(s) != SECRET_HEX or any(c not in _HEX for c in s):
            raise RegistryError(rec, "secret", "must be %d hex digits (a 128-bit key)" % SECRET_HEX)
        secret = binascii.unhexlify(s)
    if "groups" not in d:
        raise RegistryError(rec, "groups", "missing (a list of the groups it may join; [] for none)")
    groups = _identities(d["groups"], rec, "groups")
    ceiling = d.get("ceiling")
    if not _is_int(ceiling) or not 0 <= ceiling <= 255:
        raise RegistryError(
            rec, "ceiling", "must be an integer 0..255 (highest floor priority), got %s" % _show(ceiling)
        )
    status = d.get("status", ACTIVE)
    if status not in STATUSES:
        raise RegistryError(rec, "status", "must be one of %s, got %s" % (", ".join(STATUSES), _show(status)))
    vid = _u32(d.get("vid", 0), rec, "vid") if home else None
    cseq = _u32(d.get("cseq", 0), rec, "cseq") if home else None
    return DeviceRecord(ident, secret, groups, ceiling, status, vid, cseq)


def parse_group(d, where):
    ident, rec = _identity_of(d, where, "group")
    for k in d:
        if k not in _GROUP_FIELDS:
            raise RegistryError(rec, k, "unknown field (expected: %s)" % ", ".join(_GROUP_FIELDS))
    policy = d.get("policy")
    if policy not in POLICIES:
        raise RegistryError(rec, "policy", "must be 'open' or 'members', got %s" % _show(policy))
    e2e = d.get("e2e", False)
    if not isinstance(e2e, bool):
        raise RegistryError(rec, "e2e", "must be true or false, got %s" % _show(e2e))
    key_ids = d.get("key_ids", [])
    if not isinstance(key_ids, (list, tuple)) or len(key_ids) > MAX_LIST:
        raise RegistryError(rec, "key_ids", "must be a list of key ids")
    for k in key_ids:
        if not _is_int(k) or not 0 <= k <= MAX_KEY_ID:
            raise RegistryError(rec, "key_ids", "%s is not a key id 0..%d" % (_show(k), MAX_KEY_ID))
        if key_ids.count(k) > 1:
            raise RegistryError(rec, "key_ids", "%d is listed twice" % k)
    if e2e and not key_ids:
        raise RegistryError(rec, "key_ids", "an end-to-end group needs at least one group key id")
    if key_ids and not e2e:
        raise RegistryError(rec, "key_ids", "only an end-to-end group (e2e: true) has group keys")
    receive_only = _identities(d.get("receive_only", []), rec, "receive_only")
    return GroupRecord(ident, policy, e2e, tuple(key_ids), receive_only)


# --- the registry -------------------------------------------------------------------------------


class Registry:
    def __init__(self, store, system):
        if not _check_system(system):
            raise RegistryError(
                "registry", "system", "must be a system code in a-z 0-9 -, got %s" % _show(system)
            )
        self.store = store
        self.system = system
        meta = store.get(KIND_META, META_KEY)
        if meta is None:
            store.put(KIND_META, META_KEY, {"system": system})
        elif meta.get("system") != system:
            raise RegistryError(
                "registry",
                "system",
                "this store belongs to system %s, not %s" % (_show(meta.get("system")), _show(system)),
            )
        self._devices = {}
        self._groups = {}
        for key, d in store.items(KIND_DEVICE):
            rec = self._check_home(parse_device(d, "stored device %s" % _show(key), "secret" in d))
            if rec.identity != key:
                raise RegistryError("stored device %s" % _show(key), "identity", "does not match its key")
            self._devices[key] = rec
        for key, d in store.items(KIND_GROUP):
            rec = parse_group(d, "stored group %s" % _show(key))
            if rec.identity != key:
                raise RegistryError("stored group %s" % _show(key), "identity", "does not match its key")
            self._groups[key] = rec

    def _check_home(self, rec):
        if rec.secret is not None and system_of(rec.identity) != self.system:
            raise RegistryError(
                "device '%s'" % rec.identity,
                "secret",
                "only the home registry of system '%s' may hold it, not this one ('%s')"
                % (system_of(rec.identity), self.system),
            )
        return rec

    # --- lookups ----------------------------------------------------------------------------

    def device(self, identity):
        return self._devices.get(identity)

    def group(self, identity):
        return self._groups.get(identity)

    def devices(self):
        return [self._devices[k] for k in sorted(self._devices)]

    def groups(self):
        return [self._groups[k] for k in sorted(self._groups)]

    def may_affiliate(self, device_identity, group_identity):
        """Whether an active device may join a group: "open" groups take any device this registry
        knows, "members" groups only devices that list them."""
        dev = self._devices.get(device_identity)
        if dev is None or dev.status != ACTIVE:
            return False
        grp = self._groups.get(group_identity)
        if grp is None:
            # A group homed elsewhere that this registry has no record of: the device's own list
            # decides here, and the group's controlling relay has the last word.
            return (
                valid_identity(group_identity)
                and system_of(group_identity) != self.system
                and group_identity in dev.groups
            )
        return grp.policy == OPEN or group_identity in dev.groups

    # --- changes ----------------------------------------------------------------------------

    def _home_device(self, identity):
        dev = self._devices.get(identity)
        rec = "device %s" % _show(identity)
        if dev is None:
            raise RegistryError(rec, None, "unknown device")
        if dev.secret is None:
            raise RegistryError(rec, "secret", "not held here: the device's home registry makes its vectors")
        if dev.status == KILLED:
            raise RegistryError(rec, "status", "killed: it gets no more vectors or commands")
        return dev

    def _save_device(self, dev):
        self.store.put(KIND_DEVICE, dev.identity, dev.to_dict())
        self._devices[dev.identity] = dev

    def next_vector(self, identity, rand):
        """A fresh authentication vector ``(vid, rand, xres, ks, autn)``. The new vid is stored
        before the vector leaves, so a restart can never issue the same vid twice."""
        dev = self._home_device(identity)
        if not isinstance(rand, (bytes, bytearray)) or len(rand) != authvec.RAND_LEN:
            raise ValueError("rand must be %d random bytes" % authvec.RAND_LEN)
        vid = dev.vid + 1
        if vid > MAX_U32:
            raise RegistryError(
                "device '%s'" % identity, "vid", "vector ids exhausted: provision a new secret"
            )
        self._save_device(dev.copy(vid=vid))
        return authvec.make_vector(dev.secret, rand, vid)

    def resync(self, identity, rand, highest_vid, auts):
        """Sync failure (protocol.md §6.3): once AUTS proves the device has seen ``highest_vid``,
        the next vector is above it. Raises AuthFailed when AUTS does not verify."""
        dev = self._home_device(identity)
        authvec.check_auts(dev.secret, rand, highest_vid, auts)
        if highest_vid > dev.vid:
            self._save_device(dev.copy(vid=highest_vid))

    def next_control(self, identity, action):
        """``(seq, proof)`` for a DEVICE_CONTROL the device will obey (protocol.md §6.6)."""
        dev = self._home_device(identity)
        seq = dev.cseq + 1
        if seq > MAX_U32:
            raise RegistryError("device '%s'" % identity, "cseq", "control sequence exhausted")
        proof = authvec.control_proof(dev.secret, identity, action, seq)
        self._save_device(dev.copy(cseq=seq))
        return seq, proof

    def set_status(self, identity, status):
        dev = self._devices.get(identity)
        rec = "device %s" % _show(identity)
        if dev is None:
            raise RegistryError(rec, None, "unknown device")
        if status not in STATUSES:
            raise RegistryError(
                rec, "status", "must be one of %s, got %s" % (", ".join(STATUSES), _show(status))
            )
        if dev.status == KILLED and status != KILLED:
            raise RegistryError(rec, "status", "killed is final")
        if dev.status != status:
            self._save_device(dev.copy(status=status))
        return self._devices[identity]

    # --- export and import --------------------------------------------------------------------

    def export(self, partner=False):
        """This registry's own system as an export document (docs/registry.md). The partner view
        leaves out secrets and counters; the home view needs every secret of the system."""
        devices = []
        for dev in self.devices():
            if system_of(dev.identity) != self.system:
                continue
            if dev.secret is None and not partner:
                raise RegistryError(
                    "export",
                    None,
                    "no secret held for %s: this registry can give only a partner view" % dev.identity,
                )
            devices.append(dev.to_dict(partner))
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "system": self.system,
            "view": VIEW_PARTNER if partner else VIEW_HOME,
            "devices": devices,
            "groups": [g.to_dict() for g in self.groups() if system_of(g.identity) == self.system],
        }

    def load_export(self, doc):
        """Add or update the records of an export, all or nothing; returns what changed.

        Nothing is written unless every record is valid. Counters never go back (a vid stays at
        the higher of stored and exported) and a status is never lowered (killed stays killed, a
        stunned device is revived by ``set_status``, not by an old export). Records missing from
        the export are kept.
        """
        view, system, devices, groups = self._parse_export(doc)
        ops = []
        report = {"devices_added": 0, "devices_updated": 0, "groups_added": 0, "groups_updated": 0}
        report["status_kept"] = []
        new_devices = {}
        for dev in devices:
            old = self._devices.get(dev.identity)
            if old is not None:
                if old.secret is not None and view == VIEW_PARTNER:
                    raise RegistryError(
                        "device '%s'" % dev.identity,
                        "secret",
                        "held here: load the home view, not a partner view",
                    )
                if _SEVERITY[old.status] > _SEVERITY[dev.status]:
                    report["status_kept"].append(dev.identity)
                    dev = dev.copy(status=old.status)
                if dev.vid is not None and old.vid is not None and old.vid > dev.vid:
                    dev = dev.copy(vid=old.vid)
                if dev.cseq is not None and old.cseq is not None and old.cseq > dev.cseq:
                    dev = dev.copy(cseq=old.cseq)
                if dev == old:
                    continue
            report["devices_added" if old is None else "devices_updated"] += 1
            new_devices[dev.identity] = dev
            ops.append(("put", KIND_DEVICE, dev.identity, dev.to_dict()))
        new_groups = {}
        for grp in groups:
            old = self._groups.get(grp.identity)
            if grp == old:
                continue
            report["groups_added" if old is None else "groups_updated"] += 1
            new_groups[grp.identity] = grp
            ops.append(("put", KIND_GROUP, grp.identity, grp.to_dict()))
        if ops:
            self.store.apply(ops)
        self._devices.update(new_devices)
        self._groups.update(new_groups)
        return report

    def _parse_export(self, doc):
        if not isinstance(doc, dict):
            raise RegistryError("export", None, "must be a JSON object")
        for k in doc:
            if k not in _EXPORT_FIELDS:
                raise RegistryError("export", k, "unknown field (expected: %s)" % ", ".join(_EXPORT_FIELDS))
        if doc.get("format") != EXPORT_FORMAT:
            raise RegistryError(
                "export", "format", "must be '%s', got %s" % (EXPORT_FORMAT, _show(doc.get("format")))
            )
        if doc.get("version") != EXPORT_VERSION:
            raise RegistryError(
                "export",
                "version",
                "this relay reads version %d, got %s" % (EXPORT_VERSION, _show(doc.get("version"))),
            )
        system = doc.get("system")
        if not _check_system(system):
            raise RegistryError(
                "export", "system", "must be a system code in a-z 0-9 -, got %s" % _show(system)
            )
        view = doc.get("view", VIEW_HOME)
        if view not in (VIEW_HOME, VIEW_PARTNER):
            raise RegistryError("export", "view", "must be 'home' or 'partner', got %s" % _show(view))
        if view == VIEW_HOME and system != self.system:
            raise RegistryError(
                "export",
                "system",
                "a home view of system '%s' holds secrets only its own registry may keep (this is '%s')"
                % (system, self.system),
            )
        comment = doc.get("comment", "")
        if not isinstance(comment, str):
            raise RegistryError("export", "comment", "must be a string")
        lists = []
        for name in ("devices", "groups"):
            v = doc.get(name, [])
            if not isinstance(v, list):
                raise RegistryError("export", name, "must be a list")
            lists.append(v)
        devices = []
        seen = {}
        for i, d in enumerate(lists[0]):
            dev = parse_device(d, "devices[%d]" % i, view == VIEW_HOME)
            self._check_in_system(dev.identity, system, "device")
            if dev.identity in seen:
                raise RegistryError("device '%s'" % dev.identity, None, "appears twice in the export")
            seen[dev.identity] = True
            devices.append(dev)
        groups = []
        defined = {}
        for i, d in enumerate(lists[1]):
            grp = parse_group(d, "groups[%d]" % i)
            self._check_in_system(grp.identity, system, "group")
            if grp.identity in defined:
                raise RegistryError("group '%s'" % grp.identity, None, "appears twice in the export")
            defined[grp.identity] = True
            groups.append(grp)
        # A device allowed into a group of the export's own system that nobody defined is a typo
        # until proved otherwise; groups of other systems are defined by their own homes.
        for dev in devices:
            for g in dev.groups:
                if system_of(g) == system and g not in defined and g not in self._groups:
                    raise RegistryError(
                        "device '%s'" % dev.identity,
                        "groups",
                        "group '%s' is not defined in the export or the registry" % g,
                    )
        return view, system, devices, groups

    @staticmethod
    def _check_in_system(identity, system, kind):
        if system_of(identity) != system:
            raise RegistryError(
                "%s '%s'" % (kind, identity),
                "identity",
                "belongs to system '%s', but this export describes system '%s'"
                % (system_of(identity), system),
            )
