"""Keep glibc's per-thread malloc arenas from holding the daemons' memory.

glibc gives a thread that allocates under contention an arena of its own, up
to eight per core, each a 64 MiB mapping. librdkafka's threads allocate fetch
and produce buffers that other threads free, so an arena stays mostly
resident after its peak. The replicator on a backlog of a million records
held six such arenas, about 390 MiB, next to 77 MiB of main heap. Capping the
arenas at two trades that memory for some lock contention inside malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
M_ARENA_MAX = -8

DEFAULT_ARENAS = 2


def limit_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts; return True when the cap was set.

    MALLOC_ARENA_MAX in the environment, read by glibc itself at startup,
    takes precedence, and a C library other than glibc is left alone.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
