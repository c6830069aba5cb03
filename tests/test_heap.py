import gc
import weakref

from infra.runtime.heap import freeze_long_lived


class Node:
    pass


def test_freezing_takes_the_objects_alive_out_of_collections_and_leaves_later_ones_collectable():
    """A full collection traverses every tracked object: the long-lived ones must leave that set, new ones not."""
    kept = [Node() for _ in range(1000)]
    try:
        frozen = freeze_long_lived()
        assert frozen >= 1000 and gc.get_freeze_count() == frozen
        assert not any(o is kept[0] for o in gc.get_objects())  # no generation holds it: never traversed again
        later = Node()
        later.itself = later  # a cycle, freed only by a collection
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
