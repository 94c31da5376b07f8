"""The relay's store adapter: what the relay keeps in its store (registrations, affiliations,
pending revives) and how a failing store is survived, sans-I/O (docs/relay.md "Persistence").

    st = RelayStore(store, counters)
    st.apply(ops)                       ops as ``store.apply`` takes them; a failure is counted
    st.save(s) / st.unsave(identity) / st.moved(s)
    st.revive_pending(identity) -> bool / st.set_revive_pending(identity, on)
    st.registrations() -> [(identity, record)] / st.affiliation(identity)

Never a key: a registration record holds ids and an address (relay_session.py).
"""

from opmob.store import StoreError


class RelayStore:
    def __init__(self, store, counters):
        self.store = store
        self.counters = counters

    def apply(self, ops):
        # A store that cannot be written must not stop a call: the relay carries on from memory,
        # and the counter (in status) tells the operator that a restart would lose state.
        try:
            self.store.apply(ops)
        except (StoreError, OSError, ValueError):
            self.counters["store_errors"] += 1

    def save(self, s):
        ops = [("put", "registration", s.identity, s.registration_record())]
        if s.affs:
            ops.append(("put", "affiliation", s.identity, s.affiliation_record()))
        else:
            ops.append(("delete", "affiliation", s.identity))
        self.apply(ops)

    def moved(self, s):
        """``s``'s address changed."""
        self.apply((("put", "registration", s.identity, s.registration_record()),))

    def unsave(self, identity):
        self.apply((("delete", "registration", identity), ("delete", "affiliation", identity)))

    def revive_pending(self, identity):
        try:
            m = self.store.get("meta", "revive:" + identity)
        except (StoreError, ValueError):
            self.counters["store_errors"] += 1
            m = None
        return isinstance(m, dict) and m.get("pending") is True

    def set_revive_pending(self, identity, on):
        # A device stunned earlier stays stunned in its own mind until the home's proof reaches
        # it, so a revive it has not acknowledged is delivered whenever it next registers.
        if self.revive_pending(identity) != on:
            key = "revive:" + identity
            if on:
                self.apply((("put", "meta", key, {"pending": True}),))
            else:
                self.apply((("delete", "meta", key),))

    def registrations(self):
        """Every stored registration, or None when the store cannot be read (counted)."""
        try:
            return self.store.items("registration")
        except (StoreError, ValueError):
            self.counters["store_errors"] += 1
            return None

    def affiliation(self, identity):
        return self.store.get("affiliation", identity)
