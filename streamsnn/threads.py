"""Worker threads for the Numba kernels that release the GIL (to_frame's threads).

One process-wide pool, grown on demand; a forked child (a DataLoader worker)
gets its own, since threads do not survive fork. Plain threads running
``nogil`` kernels rather than Numba's ``parallel=True``: any number of
callers (streams) may use them at once, and there is no threading layer to
pick or to compile for.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOL_LOCK = threading.Lock()
_POOL: list = [None, 0, 0]  # executor, its size, the process it belongs to


def available_threads() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pool(size: int) -> ThreadPoolExecutor:
    """The shared pool, with at least size threads."""
    with _POOL_LOCK:
        executor, have, pid = _POOL
        if executor is None or have < size or pid != os.getpid():
            executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="streamsnn")
            _POOL[:] = [executor, size, os.getpid()]
        return executor



def run_parts(fn, parts: list) -> list:
    """``[fn(*args) for args in parts]``, the first part on the calling thread and the others on the
    shared pool at the same time; returns their results in order, and never before every part is done
    (their outputs may share memory with the caller's), even when one raises."""
    futures = [pool(len(parts) - 1).submit(fn, *args) for args in parts[1:]]
    try:
        first = fn(*parts[0])
    finally:
        rest = [future.result() for future in futures]
    return [first] + rest
