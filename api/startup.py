"""Process start-up shared by the API and the workers' command."""

import gc

_frozen = False


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, the app, the ML stack a
    worker preloads) out of the garbage collector's reach, once per process.

    A full collection walks every tracked object, and after start-up there
    are ~190,000 of them that live as long as the process: in the API each
    full collection took 80-125 ms, and under 100 paced clients those pauses
    were the whole tail (p99 97-115 ms, p50 5 ms; bench/api_load.py --think 1).
    Frozen, a full collection takes 5-8 ms. Objects made later are collected
    as usual; what is frozen is still freed when nothing refers to it, only
    reference cycles among start-up objects are never reclaimed. In a parent
    that forks (the training worker), frozen objects also stay shared with the
    children instead of being copied when the collector touches them."""
    global _frozen
    if _frozen:
        return
    gc.collect()
    gc.freeze()
    _frozen = True
