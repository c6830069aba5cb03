"""Keeping a process's long-lived objects out of the garbage collector.

A worker holds millions of objects for its whole life (the graph's adjacency and histories, the model, the
tokenizer, the catalogue; a benchmark's load generator its dataset). CPython's full collections traverse every
tracked object: on the Book-Crossing graph one took ~250-300 ms, pausing the click loop, the scorer (p99 at
150 requests/s 453-743 ms before, 143-230 ms after) or a paced load generator (its sends then left as a burst).
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect once, then move every object alive into the permanent generation, which later collections skip
    (``gc.freeze``): call it when the long-lived state is built, before serving. Objects created afterwards are
    collected as usual; the frozen ones are not freed until ``gc.unfreeze()`` returns them to the collector (a
    partitioned updater does before it rebuilds a new share).
    Returns how many objects are frozen now."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
