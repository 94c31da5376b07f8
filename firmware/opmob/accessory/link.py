"""Which relay to use, from a WiFi scan (DESIGN.md §5), and how long to wait before trying again.

``RelaySelector.choose(now, scan, current)`` (``now``: integer milliseconds modulo 2^30,
opmob/ticks.py): the configured relays whose access point is in the
scan and strong enough are candidates. The home system's relays come first, then partners' in the
configuration's order; within a tier the strongest. A device moves away from a relay it still hears
only to a better tier, or to the same tier at ``hysteresis_db`` more signal, and not within
``dwell_s`` of its last move: no ping-pong between two access points at the edge of both.

``Backoff``: 1, 2, 4 ... ``cap`` seconds, reset on success (the driver's asyncio sleeps).
"""

from opmob.sig import system_of
from opmob.ticks import ms, tdiff

MIN_RSSI = -88  # dBm: below this an access point carries no usable voice
HYSTERESIS_DB = 8
DWELL_S = 20.0


class RelaySelector:
    def __init__(
        self, relays, home, partners, hysteresis_db=HYSTERESIS_DB, dwell_s=DWELL_S, min_rssi=MIN_RSSI
    ):
        self.relays = relays
        self.home = home
        self.partners = tuple(partners)
        self.hysteresis_db = hysteresis_db
        self.dwell_s = dwell_s
        self.dwell_ms = ms(dwell_s)
        self.min_rssi = min_rssi
        self.moved_at = None

    def tier(self, relay):
        s = system_of(relay["identity"])
        if s == self.home:
            return 0
        if s in self.partners:
            return 1 + self.partners.index(s)
        return None

    def candidates(self, scan):
        """[(tier, -rssi, index, relay)] best first, from ``scan``: [(ssid, rssi)]."""
        heard = {}
        for ssid, rssi in scan:
            if rssi >= self.min_rssi and (ssid not in heard or rssi > heard[ssid]):
                heard[ssid] = rssi
        out = []
        for i, r in enumerate(self.relays):
            t = self.tier(r)
            rssi = heard.get(r["ssid"])
            if t is not None and rssi is not None:
                out.append((t, -rssi, i, r))
        out.sort(key=lambda c: (c[0], c[1], c[2]))
        return out

    def choose(self, now, scan, current=None):
        """The relay to use now (``current`` to stay), or None when none is in reach."""
        cands = self.candidates(scan)
        if not cands:
            return None
        best = cands[0]
        if current is None:
            self.moved_at = now
            return best[3]
        cur = None
        for c in cands:
            if c[3] is current or c[3]["identity"] == current["identity"]:
                cur = c
        if cur is None:
            self.moved_at = now  # lost the current one: move at once
            return best[3]
        if best is cur:
            return current
        if self.moved_at is not None and tdiff(now, self.moved_at) < self.dwell_ms:
            return current
        better_tier = best[0] < cur[0]
        much_stronger = best[0] == cur[0] and -best[1] >= -cur[1] + self.hysteresis_db
        if better_tier or much_stronger:
            self.moved_at = now
            return best[3]
        return current


class Backoff:
    def __init__(self, first=1.0, cap=30.0):
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self):
        d = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return d

    def reset(self):
        self.delay = self.first
