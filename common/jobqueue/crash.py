"""Named crash points for the fault tests: JSTYLEID_CRASH=<point>:<n> SIGKILLs this process the n-th time
it reaches `point`, which makes each row of the crash table (docs/queue.md §4) deterministic."""
import os
import signal

_armed = {}


def arm(spec: str):
    """Set the crash point from a `<point>:<n>` spec ('' disarms); the environment sets it at import."""
    _armed.clear()
    name, _, n = spec.partition(":")
    if name:
        _armed[name] = int(n or 1)


def point(name: str):
    left = _armed.get(name)
    if left:
        _armed[name] = left - 1
        if left == 1:
            os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get("JSTYLEID_CRASH", ""))
