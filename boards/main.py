# /main.py on an OpMob accessory: starts the firmware (frozen into the image, boards/manifest.py)
# with /board.json, /config.json and /state. It returns only when the board definition is rejected
# (the console says which key) or the PTT key is held at power-on (safe mode), leaving the REPL to
# a technician: never a crash loop. docs/accessory.md.
from opmob.accessory.main import run

run()
