"""Board definitions: which pins, buses and peripherals an accessory board has.

A board is a JSON file (``boards/<name>.json`` in the repository, ``/board.json`` on a device),
read and checked completely at boot by ``load(path)`` / ``Board.from_dict(doc)``. Every problem
is reported at once, each with the dotted key it concerns ("buttons.ptt.pin") and what is
expected; an unknown key is an error, so a misspelt key never leaves a default in force; a GPIO
used twice, or one the MCU reserves (flash, PSRAM, USB) or cannot drive (input-only pins), is
refused with both users named. Format: docs/accessory.md.

    board = load("/board.json")         # BoardError (a ValueError) with .problems and .key
    board.name, board.mcu, board.has("speaker"), board.buttons["ptt"]["pin"], board.i2s_in["sd"]
"""

FORMAT = "opmob-board"
VERSION = 1

MCUS = ("esp32", "esp32s3", "unix")
CAPABILITIES = ("ptt", "emergency", "group_select", "leds", "mic", "speaker", "battery", "wifi", "watchdog")
BUTTONS = ("ptt", "emergency", "group_up", "group_down")
LEDS = ("green", "red", "amber")
PULLS = ("up", "down", "none")
PSRAM = ("none", "quad", "octal")
AUDIO_RATE = 8000  # the accessory link is DVI4 at 8 kHz (RFC 3551)
AUDIO_BITS = 16
DMA_FRAMES = 2  # the speaker's I2S buffer, in 20 ms frames, unless the board says

_TOP = (
    "format",
    "version",
    "name",
    "description",
    "mcu",
    "psram",
    "usb_console",
    "capabilities",
    "buttons",
    "debounce_ms",
    "long_press_ms",
    "leds",
    "i2s_in",
    "i2s_out",
    "battery",
    "watchdog",
    "sim",
    "flash",  # host only: opmob flash (offset, baud); not read on the device
)
_SIM = ("control_host", "control_port", "mic", "speaker", "wifi_scenario", "battery_mv")


class BoardError(ValueError):
    """``problems``: [(dotted key, what is wrong)]; ``key``: the first bad key."""

    def __init__(self, where, problems):
        if len(problems) == 1:
            msg = "%s: %s: %s" % (where, problems[0][0], problems[0][1])
        else:
            msg = "%s: %d problems:\n%s" % (
                where,
                len(problems),
                "\n".join("  %s: %s" % p for p in problems),
            )
        super().__init__(msg)
        self.problems = problems
        self.key = problems[0][0]


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v):
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


class _Pins:
    """What each MCU allows, and who uses which GPIO."""

    def __init__(self, mcu, psram, usb):
        self.mcu = mcu
        self.used = {}  # gpio -> key
        reserved = {}
        if mcu == "esp32":
            self.valid = [p for p in range(40) if p not in (20, 24, 28, 29, 30, 31)]
            for p in range(6, 12):
                reserved[p] = "the SPI flash"
            if psram != "none":
                reserved[16] = reserved[17] = "the PSRAM (WROVER modules)"
            self.input_only = (34, 35, 36, 37, 38, 39)
            self.adc1 = tuple(range(32, 40))
        elif mcu == "esp32s3":
            self.valid = list(range(0, 22)) + list(range(26, 49))
            for p in range(26, 33):
                reserved[p] = "the SPI flash"
            if psram == "octal":
                for p in range(33, 38):
                    reserved[p] = "the octal PSRAM"
            if usb:
                reserved[19] = reserved[20] = "the native USB console"
            self.input_only = ()
            self.adc1 = tuple(range(1, 11))
        else:
            self.valid = list(range(256))  # virtual pins of the unix-sim board: any number
            self.input_only = ()
            self.adc1 = tuple(range(256))
        self.reserved = reserved

    def use(self, key, v, problems, output=False, pull="none", adc=False):
        if not _is_int(v) or v not in self.valid:
            problems.append((key, "expected a GPIO number of the %s, got %s" % (self.mcu, _show(v))))
            return
        if v in self.reserved:
            problems.append((key, "GPIO %d is taken by %s on this board" % (v, self.reserved[v])))
            return
        if output and v in self.input_only:
            problems.append(
                (key, "GPIO %d is input-only on the %s and cannot drive this line" % (v, self.mcu))
            )
        if pull != "none" and v in self.input_only:
            problems.append(
                (key, 'GPIO %d has no internal pull resistor; fit one and set pull to "none"' % v)
            )
        if adc and v not in self.adc1:
            problems.append(
                (
                    key,
                    "GPIO %d is not an ADC1 input of the %s (ADC2 is unusable while WiFi runs)"
                    % (v, self.mcu),
                )
            )
        other = self.used.get(v)
        if other is not None:
            problems.append((key, "GPIO %d is already used by %s" % (v, other)))
        else:
            self.used[v] = key


class Board:
    """A checked board definition. Sections are plain dicts with every default filled in."""

    def __init__(self):
        self.name = ""
        self.description = ""
        self.mcu = ""
        self.psram = "none"
        self.usb_console = False
        self.capabilities = ()
        self.buttons = {}
        self.debounce_ms = 25
        self.long_press_ms = 1500
        self.leds = {}
        self.i2s_in = None
        self.i2s_out = None
        self.battery = None
        self.watchdog_ms = None
        self.sim = None

    def __repr__(self):
        return "Board(%s, %s)" % (self.name, self.mcu)

    def has(self, capability):
        return capability in self.capabilities

    @property
    def is_sim(self):
        return self.mcu == "unix"

    @classmethod
    def from_dict(cls, doc, where="board"):
        problems = []
        b = cls()
        if not isinstance(doc, dict):
            raise BoardError(where, [("(document)", "expected a JSON object")])
        for k in doc:
            if k not in _TOP:
                problems.append((k, "unknown key (a typo?); known keys: %s" % ", ".join(_TOP)))
        if doc.get("format") != FORMAT:
            problems.append(("format", 'expected "%s", got %s' % (FORMAT, _show(doc.get("format")))))
        if doc.get("version") != VERSION:
            problems.append(
                ("version", "this firmware reads version %d, got %s" % (VERSION, _show(doc.get("version"))))
            )
        name = doc.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 32:
            problems.append(("name", "expected the board's name, 1..32 characters"))
        else:
            b.name = name
            where = "board %s (%s)" % (name, where) if where != name else "board %s" % name
        desc = doc.get("description", "")
        if not isinstance(desc, str):
            problems.append(("description", "expected text"))
        else:
            b.description = desc
        mcu = doc.get("mcu")
        if mcu not in MCUS:
            problems.append(("mcu", "expected one of %s, got %s" % (", ".join(MCUS), _show(mcu))))
            raise BoardError(where, problems)
        b.mcu = mcu
        psram = doc.get("psram", "none")
        if psram not in PSRAM or (mcu == "esp32" and psram == "octal"):
            problems.append(("psram", "expected none, quad or octal (octal only on the esp32s3)"))
            psram = "none"
        b.psram = psram
        usb = doc.get("usb_console", False)
        if not isinstance(usb, bool):
            problems.append(("usb_console", "expected true or false"))
            usb = False
        b.usb_console = usb
        pins = _Pins(mcu, psram, usb)

        caps = doc.get("capabilities")
        if (
            not isinstance(caps, list)
            or any(c not in CAPABILITIES for c in caps)
            or len(set(caps)) != len(caps)
        ):
            problems.append(
                ("capabilities", "expected a list without repeats of: %s" % ", ".join(CAPABILITIES))
            )
            caps = []
        b.capabilities = tuple(caps)

        b.debounce_ms = _int(doc, "debounce_ms", 25, 1, 200, problems)
        b.long_press_ms = _int(doc, "long_press_ms", 1500, 300, 10000, problems)
        if b.long_press_ms <= 4 * b.debounce_ms:
            problems.append(("long_press_ms", "must be well above debounce_ms (more than 4 times)"))

        wanted = []
        if "ptt" in caps:
            wanted.append("ptt")
        if "emergency" in caps:
            wanted.append("emergency")
        if "group_select" in caps:
            wanted.extend(("group_up", "group_down"))
        btns = _section(doc, "buttons", bool(wanted), problems)
        if btns is not None:
            for k in btns:
                if k not in BUTTONS:
                    problems.append(("buttons." + k, "unknown button; known: %s" % ", ".join(BUTTONS)))
            for name in wanted:
                d = btns.get(name)
                key = "buttons." + name
                if not isinstance(d, dict):
                    problems.append((key, "missing: the board has the capability that needs it"))
                    continue
                _unknown(d, key, ("pin", "active_low", "pull"), problems)
                active_low = d.get("active_low", True)
                if not isinstance(active_low, bool):
                    problems.append((key + ".active_low", "expected true or false"))
                    active_low = True
                pull = d.get("pull", "up" if active_low else "down")
                if pull not in PULLS:
                    problems.append((key + ".pull", "expected up, down or none"))
                    pull = "none"
                pins.use(key + ".pin", d.get("pin"), problems, pull=pull)
                b.buttons[name] = {"pin": d.get("pin"), "active_low": active_low, "pull": pull}

        leds = _section(doc, "leds", "leds" in caps, problems)
        if leds is not None and "leds" in caps:
            for k in leds:
                if k not in LEDS:
                    problems.append(("leds." + k, "unknown LED; known: %s" % ", ".join(LEDS)))
            for name in LEDS:
                d = leds.get(name)
                key = "leds." + name
                if not isinstance(d, dict):
                    problems.append((key, "missing: every board with leds has green, red and amber"))
                    continue
                _unknown(d, key, ("pin", "active_low"), problems)
                active_low = d.get("active_low", False)
                if not isinstance(active_low, bool):
                    problems.append((key + ".active_low", "expected true or false"))
                    active_low = False
                pins.use(key + ".pin", d.get("pin"), problems, output=True)
                b.leds[name] = {"pin": d.get("pin"), "active_low": active_low}

        b.i2s_in = _i2s(doc, "i2s_in", "mic" in caps, pins, problems, False)
        b.i2s_out = _i2s(doc, "i2s_out", "speaker" in caps, pins, problems, True)
        if b.i2s_in is not None and b.i2s_out is not None and b.i2s_in["id"] == b.i2s_out["id"]:
            problems.append(("i2s_out.id", "the microphone and the speaker need separate I2S peripherals"))

        bat = _section(doc, "battery", "battery" in caps, problems)
        if bat is not None and "battery" in caps:
            _unknown(bat, "battery", ("adc", "divider", "empty_mv", "full_mv", "low_percent"), problems)
            pins.use("battery.adc", bat.get("adc"), problems, adc=True)
            div = bat.get("divider", 1.0)
            if not (_is_int(div) or isinstance(div, float)) or not 1.0 <= div <= 10.0:
                problems.append(("battery.divider", "expected the voltage divider ratio 1.0..10.0"))
                div = 1.0
            empty = _int(bat, "empty_mv", 3300, 2500, 5000, problems, "battery.")
            full = _int(bat, "full_mv", 4150, 2500, 5000, problems, "battery.")
            if full <= empty:
                problems.append(("battery.full_mv", "must be above empty_mv"))
            low = _int(bat, "low_percent", 15, 0, 100, problems, "battery.")
            b.battery = {
                "adc": bat.get("adc"),
                "divider": float(div),
                "empty_mv": empty,
                "full_mv": full,
                "low_percent": low,
            }

        wd = _section(doc, "watchdog", "watchdog" in caps, problems)
        if wd is not None and "watchdog" in caps:
            _unknown(wd, "watchdog", ("timeout_ms",), problems)
            b.watchdog_ms = _int(wd, "timeout_ms", 8000, 1000, 60000, problems, "watchdog.")

        sim = doc.get("sim")
        if mcu == "unix":
            if not isinstance(sim, dict):
                problems.append(
                    ("sim", "the unix board needs its sim section (control channel, audio files)")
                )
            else:
                _unknown(sim, "sim", _SIM, problems)
                s = {
                    "control_host": sim.get("control_host", "127.0.0.1"),
                    "control_port": sim.get("control_port", 7790),
                    "mic": sim.get("mic", ""),
                    "speaker": sim.get("speaker", ""),
                    "wifi_scenario": sim.get("wifi_scenario", ""),
                    "battery_mv": sim.get("battery_mv", 4000),
                }
                for k in ("control_host", "mic", "speaker", "wifi_scenario"):
                    if not isinstance(s[k], str):
                        problems.append(("sim." + k, "expected text (a host or a file path)"))
                if not _is_int(s["control_port"]) or not 0 < s["control_port"] <= 65535:
                    problems.append(("sim.control_port", "expected a TCP port 1..65535"))
                if not _is_int(s["battery_mv"]) or not 0 <= s["battery_mv"] <= 10000:
                    problems.append(("sim.battery_mv", "expected millivolts 0..10000"))
                b.sim = s
        elif sim is not None:
            problems.append(("sim", "only the unix board has a sim section"))

        if problems:
            raise BoardError(where, problems)
        return b


def _int(d, k, default, lo, hi, problems, prefix=""):
    v = d.get(k, default)
    if not _is_int(v) or not lo <= v <= hi:
        problems.append((prefix + k, "expected an integer %d..%d, got %s" % (lo, hi, _show(v))))
        return default
    return v


def _unknown(d, key, known, problems):
    for k in d:
        if k not in known:
            problems.append(("%s.%s" % (key, k), "unknown key (a typo?); known: %s" % ", ".join(known)))


def _section(doc, key, required, problems):
    v = doc.get(key)
    if v is None:
        if required:
            problems.append((key, "missing: the board's capabilities need it"))
        return None
    if not isinstance(v, dict):
        problems.append((key, "expected an object"))
        return None
    return v


def _i2s(doc, key, required, pins, problems, out):
    d = _section(doc, key, required, problems)
    if d is None or not required:
        return None
    known = ("id", "sck", "ws", "sd", "rate", "bits") + (
        ("enable", "dma_frames") if out else ("slot_bits", "gain_shift")
    )
    _unknown(d, key, known, problems)
    res = {"id": _int(d, "id", 0, 0, 1, problems, key + ".")}
    for line in ("sck", "ws", "sd"):
        # sck and ws are driven by the ESP32 (I2S controller mode); sd is an output only to the amplifier.
        pins.use("%s.%s" % (key, line), d.get(line), problems, output=(line != "sd" or out))
        res[line] = d.get(line)
    if out:
        en = d.get("enable")
        if en is not None:
            pins.use(key + ".enable", en, problems, output=True)
        res["enable"] = en
        # The speaker's I2S buffer, in 20 ms frames: all of it is queued ahead of what is played,
        # so it adds its length to mouth-to-ear; two keep the amplifier fed while one is written.
        res["dma_frames"] = _int(d, "dma_frames", DMA_FRAMES, 1, 8, problems, key + ".")
    rate = d.get("rate")
    if rate != AUDIO_RATE:
        problems.append(
            (key + ".rate", "the accessory's audio runs at %d Hz, got %s" % (AUDIO_RATE, _show(rate)))
        )
    bits = d.get("bits")
    if bits != AUDIO_BITS:
        problems.append(
            (key + ".bits", "the accessory's audio is %d-bit PCM, got %s" % (AUDIO_BITS, _show(bits)))
        )
    res["rate"] = AUDIO_RATE
    res["bits"] = AUDIO_BITS
    if not out:
        slot = d.get("slot_bits", AUDIO_BITS)
        if slot not in (16, 32):
            problems.append(
                (key + ".slot_bits", "expected 16 or 32 (an INMP441 sends 24-bit samples in 32-bit slots)")
            )
            slot = AUDIO_BITS
        res["slot_bits"] = slot
        res["gain_shift"] = _int(d, "gain_shift", 0, 0, 16, problems, key + ".")
    return res


def load(path):
    """Read and check a board file; BoardError names the file and every bad key."""
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise BoardError(path, [("(file)", "cannot read the board definition (%s)" % e)])
    except ValueError as e:
        raise BoardError(path, [("(file)", "not valid JSON (%s)" % e)])
    return Board.from_dict(doc, path)
