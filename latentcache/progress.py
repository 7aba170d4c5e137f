"""Step lines with elapsed time for long commands (dequantization, export, build, bench), on stderr.

A line when a step starts, so a user watching a 2-core machine knows what it is doing, and one when it ends
with its time and the total so far; nothing else (no bars redrawn in logs). Pure Python: runtime/ uses it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Steps:
    """``with steps.step("exporting prefill.onnx"):`` prints ``exporting prefill.onnx ...`` then
    ``exporting prefill.onnx: 23.4 s (total 31 s)``."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say or to_stderr
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        self.say(f"{what} ...")
        yield
        now = time.perf_counter()
        self.say(f"{what}: {now - start:.1f} s (total {now - self.started:.0f} s)")

    def total(self) -> float:
        return time.perf_counter() - self.started
