"""Memory estimates checked before large allocations: a one-line refusal instead of a swap storm or an OOM kill."""

from __future__ import annotations

import os

from latentcache.errors import LatentcacheError


def available_memory() -> int:
    """Bytes a new allocation can get now: MemAvailable on Linux, else all physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: int, what: str, fix: str) -> None:
    """Refuse ``what`` when its estimated ``needed`` bytes exceed the memory available now."""
    available = available_memory()
    if needed > available:
        raise LatentcacheError(f"{what} needs about {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB "
                               f"of memory available; {fix}")


def cache_bytes(layers: int, batch: int, kv_heads: int, max_seq: int, head_dim: int, itemsize: int) -> int:
    """The kv-cache: keys and values of every layer, ``[batch, kv_heads, max_seq, head_dim]`` each."""
    return 2 * layers * batch * kv_heads * max_seq * head_dim * itemsize
