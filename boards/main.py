# /main.py on an OpMob accessory: starts the firmware (frozen into the image, boards/manifest.py)
# with /board.json, /config.json and /state (and, on a virtual device, the sim wiring in
# /.sim.json that opmob virtual writes). It returns only when the board definition (or that
# wiring) is rejected (the console says which key) or the PTT key is held at power-on (safe
# mode), leaving the REPL to a technician: never a crash loop. docs/accessory.md.
import time

from opmob.accessory.main import run

# Read by opmob's commands after their Ctrl-C (devlink.app_running): the app stops on that Ctrl-C
# and returns 0, so "running" or "returned 0" means it ran, and they start it again when done; 2 (a
# board or wiring file rejected) leaves the REPL to the technician. _opmob_app_at is when it ended:
# a Ctrl-C typed in a terminal earlier stopped it before the command's, which stopped nothing.
_opmob_app = "running"
try:
    _opmob_app = "returned " + str(run())
finally:
    _opmob_app_at = time.ticks_ms()
