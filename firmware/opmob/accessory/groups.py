"""Talk group selection and the scan list, and the accessory's small persistent state.

``Groups``: the talk groups the user steps through with the group buttons (one is *selected*:
the group a PTT press talks to) and a scan list of groups it also listens to, by priority, while
scanning is on. The selection and the scan switch survive a reboot.

``State``: what must outlive a reboot, in a ``FileStore`` directory (atomic, checksummed writes):
kind ``groups`` (selection), kind ``session`` (the registration's replay windows, written
before the messages that depend on them are sent). A damaged store is moved aside and started
afresh, with a console message: a bad flash sector must not stop the accessory from booting.
"""

from opmob import sig
from opmob.store import FileStore, StoreError

SELECTED_RANK = 0  # the talk group outranks every scan group


class State:
    """Small persistent state; ``log(line)`` is told of problems, which never raise."""

    def __init__(self, path, log):
        self.path = path
        self.log = log
        self.errors = 0
        self.store = None
        try:
            self.store = FileStore(path)
        except (StoreError, OSError) as e:
            self.log("opmob state: %s is damaged (%s); starting from empty state" % (path, type(e).__name__))
            self._reset()

    def _reset(self):
        import os

        aside = self.path + ".damaged"
        try:
            _remove_tree(aside)
        except OSError:
            pass
        try:
            os.rename(self.path, aside)
        except OSError:
            pass
        try:
            self.store = FileStore(self.path)
        except (StoreError, OSError) as e:
            self.log("opmob state: cannot create %s (%s); running without persistent state" % (self.path, e))
            self.store = None

    def get(self, kind, key):
        if self.store is None:
            return None
        try:
            return self.store.get(kind, key)
        except (StoreError, ValueError):
            return None

    def put(self, kind, key, value):
        """True once written; False (logged, counted) when the flash refused it."""
        if self.store is None:
            self.errors += 1
            return False
        try:
            self.store.put(kind, key, value)
            return True
        except (StoreError, ValueError) as e:
            self.errors += 1
            self.log("opmob state: cannot write %s/%s (%s)" % (kind, key, type(e).__name__))
            return False

    # The registration's replay windows (DeviceSession's "persist" event).
    def windows(self):
        d = self.get("session", "windows")
        try:
            vid = tuple(d["vid"]) if d and d.get("vid") else None
            ctrl = tuple(d["ctrl"]) if d and d.get("ctrl") else None
            if vid is not None and vid[0] is None:
                vid = None
            if ctrl is not None and ctrl[0] is None:
                ctrl = None
            return vid, ctrl
        except (KeyError, TypeError, IndexError):
            return None, None

    def save_windows(self, vid_state, ctrl_state):
        return self.put("session", "windows", {"vid": list(vid_state), "ctrl": list(ctrl_state)})

    def close(self):
        if self.store is not None:
            self.store.close()


def _remove_tree(path):
    import os

    for name in os.listdir(path):
        p = path + "/" + name
        try:
            os.remove(p)
        except OSError:
            _remove_tree(p)
    os.rmdir(path)


class Groups:
    """``talk``/``scan``: [{"identity", "priority", "label"}] from the configuration."""

    def __init__(self, talk, scan, state=None):
        if not talk:
            raise ValueError("at least one talk group")
        self.talk = list(talk)
        # Scan list by priority, highest first; ties keep the configuration's order.
        order = list(range(len(scan)))
        order.sort(key=lambda i: (-scan[i]["priority"], i))
        self.scan = [scan[i] for i in order]
        self.state = state
        self.index = 0
        self.scan_on = bool(self.scan)
        saved = state.get("groups", "selection") if state is not None else None
        if saved:
            names = [g["identity"] for g in self.talk]
            if saved.get("talk") in names:
                self.index = names.index(saved["talk"])
            if isinstance(saved.get("scan"), bool) and self.scan:
                self.scan_on = saved["scan"]

    @property
    def selected(self):
        return self.talk[self.index]["identity"]

    @property
    def label(self):
        return self.talk[self.index]["label"]

    def step(self, delta):
        """Select the next (+1) or previous (-1) talk group, wrapping; persisted at once."""
        self.index = (self.index + delta) % len(self.talk)
        self._save()
        return self.selected

    def set_scan(self, on):
        self.scan_on = bool(on) and bool(self.scan)
        self._save()
        return self.scan_on

    def _save(self):
        if self.state is not None:
            self.state.put("groups", "selection", {"talk": self.selected, "scan": self.scan_on})

    def listening(self):
        """Groups to be affiliated to now, best first: the talk group, then the scan list."""
        out = [self.selected]
        if self.scan_on:
            for g in self.scan:
                if g["identity"] not in out:
                    out.append(g["identity"])
        return out

    def affiliations(self):
        """``[(group, priority, flags)]`` for DeviceSession: the selected group flagged SELECTED,
        scan groups flagged SCAN with their scan priority."""
        out = [(self.selected, self.talk[self.index]["priority"], sig.AFF_SELECTED)]
        if self.scan_on:
            for g in self.scan:
                if g["identity"] != self.selected:
                    out.append((g["identity"], g["priority"], sig.AFF_SCAN))
        return out

    def rank(self, group):
        """Playback rank of ``group`` (0 best), or None if we do not listen to it."""
        if group == self.selected:
            return SELECTED_RANK
        if self.scan_on:
            for i, g in enumerate(self.scan):
                if g["identity"] == group:
                    return i + 1
        return None
