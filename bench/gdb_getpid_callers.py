"""A gdb script: who makes the serve worker's getpid() system calls, counted by caller (the C frames
above `getpid` and the Python frames of the thread holding the GIL, each named by its file, its
function's first line and its qualified name). On CPython 3.11 every asyncio.get_running_loop(),
asyncio.get_event_loop() and asyncio._get_running_loop() (and so asyncio.Future() and
asyncio.Task() without a loop, ensure_future, create_task, current_task, shield, sleep) is one.
Needs the interpreter's debug information (pyenv's build has it); nothing is called in the process.

  GP_OUT=/tmp/callers.txt gdb -q -batch -p <worker pid> -x bench/gdb_getpid_callers.py \
      -ex continue -ex detach -ex quit &
  wrk ... against the worker; then kill -INT <that gdb's pid>: gdb stops, writes GP_OUT and detaches

GP_OUT is written every 500 calls and when gdb stops; divide by the calls wrk made.
"""

import collections
import os

import gdb  # type: ignore[import-not-found]  # provided by gdb itself

OUT = os.environ.get("GP_OUT", "/tmp/getpid-callers.txt")
counts: collections.Counter = collections.Counter()
TSTATE = gdb.lookup_type("PyThreadState").pointer()
CHAR = gdb.lookup_type("char").pointer()
ASCII = gdb.lookup_type("PyASCIIObject").sizeof


def text(obj: "gdb.Value") -> str:
    return (obj.cast(CHAR) + ASCII).string()  # a compact ASCII str: its characters follow its header


def python_frames(n: int = 4) -> list[str]:
    frame = gdb.parse_and_eval("_PyRuntime.gilstate.tstate_current._value").cast(TSTATE)["cframe"]["current_frame"]
    found = []
    while frame and len(found) < n:
        code = frame["f_code"]
        found.append(f"{text(code['co_filename'])}:{int(code['co_firstlineno'])} {text(code['co_qualname'])}")
        frame = frame["previous"]
    return found


def c_frames(n: int = 4) -> list[str]:
    frame, found = gdb.newest_frame(), []
    while frame and len(found) < n:
        found.append(frame.name() or "?")
        frame = frame.older()
    return found


def report(_event: object = None) -> None:
    with open(OUT, "w") as out:
        for (c, py), n in counts.most_common():
            out.write(f"{n:7d}  C: {c}\n         PY: {py}\n")


class Caller(gdb.Breakpoint):
    def stop(self) -> bool:
        try:
            py = " < ".join(python_frames())
        except gdb.error as exc:
            py = f"(no Python frame: {exc})"
        counts[(" < ".join(c_frames()), py)] += 1
        if sum(counts.values()) % 500 == 0:
            report()
        return False


Caller("getpid")
gdb.events.stop.connect(report)
