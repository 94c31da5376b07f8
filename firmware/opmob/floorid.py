"""The SSRC of a group's floor-control server, known to relay and device without a message.

One UDP port carries the floor control of every group, and a TS 24.380 message names only its
sender's SSRC, not a group. So each group's floor-control server sends with an SSRC derived from the
group's identity: a device tells which group a Floor Taken belongs to by the packet's SSRC, and it
names the group a Floor Request, Release or Ack is meant for by putting that SSRC in the message's
SSRC field (docs/relay.md, "Which group"). A hash of the identity needs no signalling and gives the
same value on every relay that serves the group.
"""

import hashlib

_LABEL = b"OpMob v1 floor\x00"


def floor_ssrc(group):
    """32-bit SSRC of ``group``'s floor-control server (never 0)."""
    d = hashlib.sha256(_LABEL + group.encode()).digest()
    return int.from_bytes(d[:4], "big") or 1
