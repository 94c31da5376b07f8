# Runs one firmware test module under the MicroPython unix port and prints one line per test:
#   @@OPMOB-TEST <name> PASS|FAIL|SKIP <seconds>
# followed, for a failure, by the traceback between @@BEGIN/@@END markers. The pytest plugin in
# tests/conftest.py turns these lines into pytest results. Usage: micropython mpy_runner.py MODULE [TEST...]
import sys
import time
import io

mod_name = sys.argv[1]
wanted = sys.argv[2:]
mod = __import__(mod_name)
names = sorted(n for n in dir(mod) if n.startswith("test_") and callable(getattr(mod, n)))
if wanted:
    names = [n for n in names if n in wanted]


class Skip(Exception):
    pass


for name in names:
    t0 = time.ticks_ms()
    try:
        getattr(mod, name)()
        status, tb = "PASS", ""
    except Exception as e:
        buf = io.StringIO()
        sys.print_exception(e, buf)
        tb = buf.getvalue()
        status = "SKIP" if type(e).__name__ == "SkipTest" else "FAIL"
    dt = time.ticks_diff(time.ticks_ms(), t0) / 1000
    print("@@OPMOB-TEST %s %s %.3f" % (name, status, dt))
    if tb:
        print("@@BEGIN")
        print(tb)
        print("@@END")
print("@@OPMOB-DONE")
