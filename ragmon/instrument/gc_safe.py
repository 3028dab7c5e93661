"""Work that a garbage collection would otherwise run in the middle of whatever code it interrupted.

CPython's cyclic garbage collector starts at an arbitrary allocation, in whichever thread makes
it, and runs the finalizers of what it collects right there: a generator's ``close()`` (its
``finally`` blocks) and weakref callbacks. A stream a client abandoned becomes such garbage
(Starlette drops its iterator inside an exception's reference cycle). If the interrupted code
holds a non-reentrant lock that the finalizer needs too, the thread deadlocks for good: seen
with httpx's connection-pool lock, taken by ``client.chat.completions.create()`` in one worker
thread, and the abandoned generator's ``finally: stream.close()`` run by a collection that began
inside it; every later call then waits on that lock. prometheus_client's value locks and a record
sink's lock are of the same kind.

So what a finalizer would do inside a collection (closing the application's generator,
recording the query) is handed to one daemon thread per process, ``ragmon-finisher``, which runs
it with no lock held. Outside a collection it runs at once, as before. ``queue.SimpleQueue.put``
is documented as safe to call from finalizers; nothing else runs inside the collection.
"""
from __future__ import annotations

import gc
import logging
import os
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("ragmon")

_collecting_thread: int | None = None  # the thread running a collection now (one at a time)


def _note_collection(phase: str, info: dict) -> None:
    global _collecting_thread
    _collecting_thread = threading.get_ident() if phase == "start" else None


gc.callbacks.append(_note_collection)


def in_collection() -> bool:
    """True while this thread runs a garbage collection (its finalizers included)."""
    return _collecting_thread == threading.get_ident()


_work: queue.SimpleQueue = queue.SimpleQueue()
_finisher_pid: int | None = None
_start_lock = threading.Lock()


def start_finisher() -> None:
    """Makes sure this process runs the finisher thread. Call it outside a collection (starting a
    thread takes locks), before anything may need it: each monitored stream does, when it starts.
    Work handed over while no finisher runs waits in the queue until one starts."""
    global _finisher_pid
    pid = os.getpid()
    if _finisher_pid == pid:
        return
    with _start_lock:
        if _finisher_pid != pid:
            threading.Thread(target=_finish_forever, args=(_work,), name="ragmon-finisher",
                             daemon=True).start()
            _finisher_pid = pid


def call_outside_collection(fn: Callable[..., Any], *args: Any) -> None:
    """Calls ``fn(*args)`` now, or from the finisher thread when this thread is inside a garbage
    collection. Exceptions from ``fn`` are the caller's concern now, logged in the finisher."""
    if in_collection():
        _work.put((fn, args))
    else:
        fn(*args)


def _finish_forever(work: queue.SimpleQueue) -> None:
    while True:
        fn, args = work.get()
        try:
            fn(*args)
        except BaseException as failure:  # the thread must outlive any one piece of work
            log.warning("monitoring: finishing an abandoned stream failed: %r", failure)


def _after_fork_in_child() -> None:
    # The parent's finisher thread does not exist here, and its queue may have been mid-call.
    global _work, _finisher_pid, _start_lock, _collecting_thread
    _work = queue.SimpleQueue()
    _finisher_pid = None
    _start_lock = threading.Lock()
    _collecting_thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
