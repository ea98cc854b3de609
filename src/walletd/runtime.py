"""Process-wide helpers of long-running walletd processes (API workers, relay).

:func:`settle_heap` tunes the garbage collector once start-up is done.

CPython's cycle collector walks every tracked object in its oldest generation. An API
worker holds a few hundred thousand long-lived objects from imports (FastAPI, pydantic,
asyncpg), so each full collection stopped the event loop for 40-100 ms under load —
every request in flight waited for it, and it set the tail latency. After start-up the
live objects are moved out of the collector's sight (:func:`gc.freeze`) and the youngest
generation is collected less often: reference counting still frees almost everything
at once, and cycles are still collected, just among objects made after start-up.
"""

from __future__ import annotations

import gc
from typing import Final

# Young collections every 10,000 net allocations (CPython's default is 700); the older
# generations keep their default ratios.
GC_THRESHOLDS: Final = (10_000, 10, 10)


def settle_heap() -> None:
    """Call once, when start-up is done: collect, then freeze what survived."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
