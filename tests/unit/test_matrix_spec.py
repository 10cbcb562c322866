"""The run spec of a matrix (testbed.matrix.spec): dimensions, slots and their keys, and
how slots are dealt to labs."""

from __future__ import annotations

from collections import Counter

import pytest

from testbed.matrix.lab import MAX_SLOTS
from testbed.matrix.spec import MatrixSpec, Slot, plan, slot_strategy
from testbed.nat import APD, EI, NatSpec, all_nats, nat_from_label
from testbed.strategy import DEFAULT, strategies_from_list

FULL, SYM = NatSpec(mapping=EI, filtering=EI), NatSpec(mapping=APD, filtering=APD)


def nats(n: int) -> tuple[NatSpec, ...]:
    return tuple(all_nats()[:n])


def cells_of(slots: list[Slot]) -> Counter[tuple[str, str, int]]:
    return Counter((s["a"].label, s["b"].label, s.repeat) for s in slots)


@pytest.mark.parametrize(("n", "repeats", "jobs"), [(5, 1, 2), (11, 1, 2), (11, 5, 2), (2, 3, 1),
                                                    (1, 1, 4), (11, 1, 1)])
def test_plan_runs_every_pairing_and_repeat_once(n: int, repeats: int, jobs: int) -> None:
    spec = MatrixSpec(nats(n), repeats)
    labs = plan(spec.slots(), jobs, MAX_SLOTS)
    slots = [s for lab in labs for s in lab]
    labels = [x.label for x in nats(n)]
    assert cells_of(slots) == Counter(
        {(a, b, r): 1 for a in labels for b in labels for r in range(1, repeats + 1)})
    assert all(1 <= len(lab) <= MAX_SLOTS for lab in labs)
    assert len(labs) >= min(jobs, n * n * repeats)  # every job gets a lab when there is work
    sizes = [len(lab) for lab in labs]
    assert max(sizes) - min(sizes) <= 1  # dealt evenly


def test_a_big_run_is_split_into_labs_that_fit_the_address_plan() -> None:
    labs = plan(MatrixSpec(nats(11), 5).slots(), 2, MAX_SLOTS)  # 605 slots
    assert len(labs) == 6 and max(len(lab) for lab in labs) <= MAX_SLOTS


def test_one_slot_per_lab_gives_every_slot_its_own_lab() -> None:
    labs = plan(MatrixSpec((FULL, SYM), 2).slots(), 3, 1)
    assert len(labs) == 8 and all(len(lab) == 1 for lab in labs)


def test_slot_keys_are_stable_and_unique() -> None:
    spec = MatrixSpec((FULL, nat_from_label("symmetric:random:30s")), 2)
    keys = [s.key for s in spec.slots()]
    assert len(set(keys)) == len(keys) == 8
    assert keys[0] == "a=full-cone,b=full-cone,repeat=1"
    assert "a=full-cone,b=symmetric:random:30s,repeat=2" in keys
    # the same spec built again, or its slots in another order: the same keys
    again = MatrixSpec((FULL, nat_from_label("symmetric:random:30s")), 2).slots()
    assert sorted(s.key for s in reversed(again)) == sorted(keys)


def test_a_slot_reads_its_values_by_dimension_name() -> None:
    slot = MatrixSpec((FULL, SYM), 1, cells=((SYM, FULL),)).slots()[0]
    assert (slot["a"], slot["b"], slot.cell) == (SYM, FULL, ("symmetric", "full-cone"))
    with pytest.raises(KeyError):
        slot["link"]
    assert [d.name for d in MatrixSpec((FULL,)).dimensions()] == ["a", "b"]


def test_only_some_cells() -> None:
    spec = MatrixSpec((FULL, SYM), 3, cells=((SYM, FULL),))
    assert cells_of(spec.slots()) == Counter({("symmetric", "full-cone", r): 1
                                              for r in (1, 2, 3)})


@pytest.mark.parametrize(("kw", "message"), [
    ({"nats": ()}, "nats"),
    ({"nats": (FULL, FULL)}, "distinct"),
    ({"nats": (FULL,), "cells": ((FULL, SYM),)}, "cells"),
    ({"nats": (FULL,), "repeats": 0}, "repeats"),
])
def test_bad_specs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatrixSpec(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- strategies


def test_the_default_strategy_is_not_a_dimension() -> None:
    spec = MatrixSpec((nat_from_label("symmetric"),))
    assert [d.name for d in spec.dimensions()] == ["a", "b"]
    (slot,) = spec.slots()
    assert slot.key == "a=symmetric,b=symmetric,repeat=1"  # keys of older runs stay
    assert slot_strategy(slot) == DEFAULT


def test_strategies_are_a_dimension_with_a_short_key() -> None:
    spec = MatrixSpec((nat_from_label("symmetric"), nat_from_label("full-cone")),
                      strategies=tuple(strategies_from_list("stun,predict")))
    assert [d.name for d in spec.dimensions()] == ["a", "b", "strategy"]
    slots = spec.slots()
    assert len(slots) == 8
    keys = {s.key for s in slots}
    assert "a=symmetric,b=full-cone,strategy=predict,repeat=1" in keys
    assert {slot_strategy(s).label for s in slots} == {"stun", "predict"}
    with pytest.raises(ValueError, match="strategies"):
        MatrixSpec((nat_from_label("symmetric"),), strategies=())
