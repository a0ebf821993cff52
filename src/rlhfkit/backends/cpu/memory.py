"""The allocator switch of ``runtime.return_freed_memory`` (glibc malloc tuning)."""

from __future__ import annotations


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations of ``threshold`` bytes and more from their own mappings, so
    freeing them returns the memory to the OS instead of leaving reusable but resident holes in
    the heap (which is what lets a CPU run's peak RSS creep up over the first steps). False
    where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
