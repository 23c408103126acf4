"""emm.identity.ByIdentity: one computation per set of argument objects, not per equal value."""

from __future__ import annotations

from emm.identity import ByIdentity


def test_computes_once_per_object_and_again_for_an_equal_copy() -> None:
    calls: list[tuple[int, ...]] = []

    def total(values: tuple[int, ...]) -> int:
        calls.append(values)
        return sum(values)

    cache = ByIdentity(total)
    shared = (1, 2, 3)
    assert [cache(shared), cache(shared), cache(shared)] == [6, 6, 6]
    assert len(calls) == 1
    copy = tuple(list(shared))
    assert copy == shared and copy is not shared
    assert cache(copy) == 6
    assert len(calls) == 2


def test_empties_itself_when_full_and_keeps_its_arguments_alive() -> None:
    cache = ByIdentity(lambda values: len(values), size=2)
    kept = [(i,) * i for i in range(1, 4)]
    assert [cache(v) for v in kept] == [1, 2, 3]
    # the third entry emptied the cache: the first is computed again, still right
    assert cache(kept[0]) == 1
    assert len(cache._entries) == 2
