"""Functions run in worker processes by tests/process/test_pool_processes.py.

Module-level in an importable module (tests/ is on sys.path, which a worker process
inherits): the workers import them by name. Processes share no memory with the test,
so gates and counters are files.
"""

from __future__ import annotations

import os
import time

PROMPT = 15.0


def square(x):
    return x * x


def pid(_=None):
    return os.getpid()


def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


def gated(gate, value=None, started=None):
    """Mark `started` (a directory: one file per pid), then wait for the file `gate`."""
    if started is not None:
        with open(os.path.join(started, str(os.getpid())), "w"):
            pass
    end = time.monotonic() + PROMPT * 2
    while not os.path.exists(gate):
        if time.monotonic() > end:
            raise TimeoutError("gate never opened")
        time.sleep(0.005)
    return value


def flaky(counter, fail_times, value=None):
    """Fail the first `fail_times` calls (counted in the file `counter`)."""
    with open(counter, "a") as f:
        f.write("x")
    with open(counter) as f:
        n = len(f.read())
    if n <= fail_times:
        raise ValueError(f"attempt {n} fails")
    return value


def die(code=3):
    os._exit(code)


def die_once(counter, value=None):
    """Crash the process on the first call, succeed after."""
    with open(counter, "a") as f:
        f.write("x")
    with open(counter) as f:
        if len(f.read()) == 1:
            os._exit(9)
    return value


def boom(msg):
    raise KeyError(msg)


def unpicklable_result():
    import threading
    return threading.Lock()  # pickles with neither pickle nor cloudpickle


STATE = {}


def init(value):
    STATE["init"] = (value, os.getpid())


def init_fails():
    raise OSError("no database")


def read_init():
    return STATE.get("init")


def alive(pid):
    """True if `pid` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def descendants(root):
    """pids of every process below `root` (Linux /proc), zombies left out."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def record(path, value):
    """Append `value` to the file `path` (one line per run: how often it ran), return it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)
    return value


def runs(path):
    """The values record() appended to `path`, in order."""
    try:
        with open(path) as f:
            return [line.strip() for line in f]
    except FileNotFoundError:
        return []


class Unloadable:
    """Pickles in the parent, fails to unpickle in a worker (raises KeyError there)."""

    def __reduce__(self):
        return (boom, ("cannot load me",))


def blob(n, fill=b"x"):
    return fill * n


def act(log, value, do=None, *args):
    """One function for the pipelining tests (a dispatcher pipelines the calls of one
    function): do nothing, record `value` in `log`, or, by `do`: "gate" (args: gate,
    started), "die", "die_once" (args: counter), "sleep" (args: seconds), "sleep_pid" (the same, returns the pid), "pid"."""
    if do == "gate":
        return gated(args[0], value, args[1])
    if do == "die":
        os._exit(7)
    if do == "die_once":
        return die_once(args[0], value)
    if do == "sleep":
        return sleep(args[0], value)
    if do == "sleep_pid":
        return sleep(args[0], os.getpid())
    if do == "pid":
        return os.getpid()
    return value if log is None else record(log, value)
