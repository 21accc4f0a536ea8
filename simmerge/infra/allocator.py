"""Let the C allocator reuse freed tensor memory instead of handing it back to the kernel.

A streaming merge or scan allocates and frees the same few tensor sizes hundreds of times. By
default glibc serves such blocks with ``mmap`` once its (adaptive) threshold is exceeded and
trims freed heap memory eagerly, so nearly every tensor read lands in fresh pages that the
kernel must fault in and zero: on CPU that costs as much system time as the copy itself.
Pinning the mmap threshold at its maximum and not trimming keeps freed blocks in the process for
the next tensor of the same size. Peak memory is unchanged (the same tensors are alive at the
peak); resident memory simply does not shrink between tensors.

The setting is process-wide and permanent, so only the command line applies it (the process is
simmerge's own); a library user can call :func:`reuse_freed_memory` themselves. On anything but
glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # the largest value of the int parameter: trim only past 2 GiB


@functools.cache
def reuse_freed_memory() -> bool:
    """Tune glibc's allocator for repeated large tensors (once per process); True if applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has both  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_set = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(mmap_set and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
