"""The run spec of a matrix (testbed.matrix.spec): dimensions, slots and their keys, how
slots are dealt to labs and to shards, and the spec as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from testbed.matrix import dimensions as dims
from testbed.matrix.lab import MAX_SLOTS
from testbed.matrix.spec import (
    MatrixSpec,
    Selector,
    Shard,
    Slot,
    SlotIndex,
    plan,
    spec_from_json,
    spec_hash,
    spec_to_json,
)
from testbed.nat import APD, EI, NatSpec, all_nats, nat_from_label
from testbed.strategy import DEFAULT, Strategy

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
    slot = MatrixSpec((FULL, SYM), 1, only=(Selector.cell(SYM, FULL),)).slots()[0]
    assert (slot["a"], slot["b"], slot.cell) == (SYM, FULL, ("symmetric", "full-cone"))
    with pytest.raises(KeyError):
        slot["link"]
    assert [d.name for d in MatrixSpec((FULL,)).dimensions()] == ["a", "b"]


def test_only_some_cells() -> None:
    spec = MatrixSpec((FULL, SYM), 3, only=(Selector.cell(SYM, FULL),))
    assert cells_of(spec.slots()) == Counter({("symmetric", "full-cone", r): 1
                                              for r in (1, 2, 3)})


@pytest.mark.parametrize(("kw", "message"), [
    ({"nats": ()}, "nats"),
    ({"nats": (FULL, FULL)}, "distinct"),
    ({"nats": (FULL,), "only": (Selector.cell(FULL, SYM),)}, "b=symmetric: not one of"),
    ({"nats": (FULL,), "repeats": 0}, "repeats"),
    ({"nats": (FULL,), "repeats": 1001}, "repeats"),
    ({"nats": (FULL,), "only": (Selector((("a", "full-cone"),), 2),)}, "1 repeat"),
    ({"nats": (FULL,), "only": (Selector((("punch", "1s"),)),)}, "not a dimension"),
    ({"nats": (FULL,), "extra": (dims.PUNCH.with_labels(["2s"]),) * 2}, "each named once"),
])
def test_bad_specs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatrixSpec(**kw)  # type: ignore[arg-type]


PUNCH_FAST = dims.PUNCH.with_labels(["0.2s", "1s"])


def test_a_dimension_left_at_its_default_is_not_in_the_grid() -> None:
    plain = MatrixSpec((FULL, SYM), 2)
    at_default = MatrixSpec((FULL, SYM), 2, extra=(dims.PUNCH.with_labels(["auto"]),))
    assert [s.key for s in at_default.slots()] == [s.key for s in plain.slots()]
    assert [d.name for d in at_default.dimensions()] == ["a", "b"]
    assert at_default.setup(at_default.slots()[0]).timing == plain.timing


def test_another_dimension_is_in_every_key_and_reaches_the_slot_setup() -> None:
    spec = MatrixSpec((FULL, SYM), 1, extra=(PUNCH_FAST,))
    slots = spec.slots()
    assert [d.name for d in spec.dimensions()] == ["a", "b", "punch"]
    assert len(slots) == 8 and len({s.key for s in slots}) == 8
    # facet-major: every pairing at 0.2 s, then every pairing at 1 s
    assert [s.key for s in slots[:2]] == ["a=full-cone,b=full-cone,punch=0.2s,repeat=1",
                                          "a=full-cone,b=symmetric,punch=0.2s,repeat=1"]
    assert slots[4].key == "a=full-cone,b=full-cone,punch=1s,repeat=1"
    setup = spec.setup(slots[1])
    assert (setup.nat_a, setup.nat_b, setup.timing.punch_timeout) == (FULL, SYM, 0.2)
    assert spec.setup(slots[4]).timing.punch_timeout == 1.0
    assert slots[1].extra == {"punch": "0.2s"}


def test_a_value_the_model_does_not_cover_is_not_modelled() -> None:
    spec = MatrixSpec((FULL,), 1, extra=(PUNCH_FAST,))
    fast, default = (spec.model_input(p) for p in spec.points())
    assert isinstance(fast, dims.NotModelled) and "punch timeout 0.2s" in fast.reason
    assert default == dims.ModelInput(FULL, FULL)  # the default: as if no dimension


@pytest.fixture
def prediction_dimension() -> Iterator[dims.Dimension]:
    """A dimension made up for the test: it reaches the peers' timing and the model's
    strategy, as a real one (punching strategies, say) would."""

    @dataclass(frozen=True)
    class Guess:
        ports: int

        @property
        def label(self) -> str:
            return f"g{self.ports}"

    def parse(text: str) -> Guess:
        if not text.startswith("g") or not text[1:].isdigit():
            raise ValueError(f"expected gN, got {text!r}")
        return Guess(int(text[1:]))

    def apply(setup: dims.SlotSetup, v: Guess) -> dims.SlotSetup:
        return replace(setup, timing=replace(setup.timing, hold=float(v.ports)))

    def model(inp: dims.ModelInput, v: Guess) -> dims.ModelInput:
        return replace(inp, strategy=replace(inp.strategy, port_prediction=True,
                                             prediction_range=v.ports))

    d = dims.register(dims.Dimension("guess", "port guessing", (), parse, apply, Guess(0),
                                     model, flag="--guess"))
    yield d
    dims.unregister("guess")


def test_a_new_dimension_needs_only_its_three_functions(
        prediction_dimension: dims.Dimension) -> None:
    spec = MatrixSpec((FULL, SYM), 1, extra=(prediction_dimension.with_labels(["g0", "g4"]),
                                             PUNCH_FAST))
    assert [d.name for d in spec.dimensions()] == ["a", "b", "punch", "guess"]  # registry order
    slot = next(s for s in spec.slots() if s.extra == {"punch": "1s", "guess": "g4"})
    assert slot.key.endswith(",punch=1s,guess=g4,repeat=1")
    assert spec.setup(slot).timing.hold == 4.0
    inputs = [spec.model_input(p) for p in spec.points()]
    guessing = [i for i in inputs if isinstance(i, dims.ModelInput)
                and i.strategy.prediction_range == 4]
    assert len(guessing) == 4  # punch=1s (the default) x guess=g4 x 4 pairings
    assert Selector.parse("a=symmetric,guess=g4,b=full-cone").key == \
        "a=symmetric,b=full-cone,guess=g4"
    back = spec_from_json(spec_to_json(spec))
    assert back == spec and [s.key for s in back.slots()] == [s.key for s in spec.slots()]


@pytest.mark.parametrize("name", ["outcome", "alice_ip", "Bad", "nat_x", "repeat"])
def test_a_dimension_cannot_take_the_name_of_a_field(name: str) -> None:
    with pytest.raises(ValueError, match="dimension name"):
        dims.register(dims.Dimension(name, "x", ()))


# ------------------------------------------------------------------ --only selectors


def test_selectors_take_keys_parts_of_keys_and_the_short_form() -> None:
    assert Selector.parse("symmetric,full-cone") == Selector.cell(SYM, FULL)
    assert Selector.parse("b=full-cone, a=symmetric") == Selector.cell(SYM, FULL)
    one = Selector.parse("a=symmetric,b=full-cone,punch=200ms,repeat=3")
    assert one.key == "a=symmetric,b=full-cone,punch=0.2s,repeat=3"
    spec = MatrixSpec((FULL, SYM), 3, only=(one,), extra=(PUNCH_FAST,))
    assert [s.key for s in spec.slots()] == [one.key]
    rows = MatrixSpec((FULL, SYM), 1, only=(Selector.parse("a=symmetric"),))
    assert [s.cell for s in rows.slots()] == [("symmetric", "full-cone"),
                                              ("symmetric", "symmetric")]


@pytest.mark.parametrize(("text", "message"), [
    ("full-cone", "ALICE_NAT,BOB_NAT"),
    ("a=full-cone,b", "NAME=LABEL"),
    ("a=cone", "cone"),
    ("a=full-cone,a=symmetric", "named twice"),
    ("colour=red", "unknown dimension"),
    ("a=full-cone,repeat=0", "repeat"),
    ("punch=fast", "seconds"),
])
def test_bad_selectors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selector.parse(text)


def test_slot_numbers_and_places_round_trip() -> None:
    for spec in (MatrixSpec(nats(3), 4),
                 MatrixSpec(nats(3), 4, only=(Selector.parse("a=none,repeat=2"),
                                              Selector.parse("a=none,b=none")))):
        index = SlotIndex(spec)
        assert len(index) == len(spec.slots())
        for i in range(len(index)):
            cell, repeat = index.locate(i)
            assert index.number(cell, repeat) == i
            assert index[i] == spec.slots()[i]
    assert SlotIndex(MatrixSpec(nats(3), 4)).number(0, 5) is None


# ------------------------------------------------------------------ shards


@pytest.mark.parametrize(("n", "count"), [(25, 1), (25, 4), (8, 3), (121 * 7, 16), (5, 8),
                                          (1, 2), (97, 97)])
def test_shards_partition_the_slots_exactly_and_evenly(n: int, count: int) -> None:
    parts = [list(Shard(k, count).positions(n)) for k in range(1, count + 1)]
    every = sorted(i for p in parts for i in p)
    assert every == list(range(n))  # every slot in exactly one shard
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(p == sorted(p) for p in parts)
    for k, p in enumerate(parts, start=1):
        assert all(Shard(1, count).part(i, n) == k for i in p)


def test_a_shard_is_the_same_on_every_run_and_depends_on_the_seed() -> None:
    assert list(Shard(3, 16).positions(1000)) == list(Shard(3, 16, seed=1).positions(1000))
    assert list(Shard(3, 16).positions(1000)) != list(Shard(3, 16, seed=2).positions(1000))
    # another process, with other string hashes, deals the same
    code = "from testbed.matrix.spec import Shard; print(list(Shard(3, 16).positions(1000)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONHASHSEED="12345")).stdout
    assert json.loads(out) == list(Shard(3, 16).positions(1000))


def test_a_shard_mixes_the_cells_of_the_grid() -> None:
    """25 pairings x 4 repeats over 5 shards: no shard gets whole columns (the symmetric
    column, all relay, would make one shard much slower than the others)."""
    spec = MatrixSpec(nats(5), 4)
    index = SlotIndex(spec)
    for k in range(1, 6):
        columns = Counter(index[i]["b"].label for i in Shard(k, 5).positions(len(index)))
        assert len(columns) >= 4, columns


@pytest.mark.parametrize("text", ["0/4", "5/4", "3", "a/b", "1/0", "-1/2"])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="K/N"):
        Shard.parse(text)


# ------------------------------------------------------------------ the spec as JSON


def test_the_spec_hash_is_stable_and_sees_every_change() -> None:
    spec = MatrixSpec(nats(3), 2, extra=(PUNCH_FAST,))
    h = spec_hash(spec_to_json(spec))
    assert h == spec_hash(spec_to_json(MatrixSpec(nats(3), 2, extra=(PUNCH_FAST,))))
    assert h.startswith("sha256:") and len(h) == 71
    for other in (MatrixSpec(nats(3), 3, extra=(PUNCH_FAST,)), MatrixSpec(nats(3), 2),
                  MatrixSpec(nats(4), 2, extra=(PUNCH_FAST,)),
                  MatrixSpec(nats(3), 2, only=(Selector.parse("a=none"),))):
        assert spec_hash(spec_to_json(other)) != h
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec


def test_a_spec_of_another_version_is_refused_by_name() -> None:
    data = spec_to_json(MatrixSpec(nats(2)))
    data["dimensions"].append({"name": "colour", "values": ["red"]})
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        spec_from_json(data)


def test_the_python_api_takes_other_dimensions_by_name() -> None:
    from testbed.matrix.run import matrix_spec

    spec = matrix_spec([FULL, SYM], repeats=2, dimensions={"punch": ["0.2s", dims.Seconds(3)]})
    assert [d.labels for d in spec.facet_dimensions()] == [("0.2s", "3s")]
    only = matrix_spec(only=[(SYM, FULL)])
    assert [s.key for s in only.slots()] == ["a=symmetric,b=full-cone,repeat=1"]
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        matrix_spec(dimensions={"colour": ["red"]})


def test_a_lab_job_is_plain_data_that_travels() -> None:
    """What a distributed pool sends to another machine: a lab's slots and setups."""
    import pickle

    from testbed.matrix.run import plan_run

    plan = plan_run(MatrixSpec(nats(3), 2, extra=(PUNCH_FAST,)), jobs=2)
    job = next(plan.jobs())
    assert pickle.loads(pickle.dumps(job)) == job
    assert [s.timing.punch_timeout for s in job.setups][:2] == [0.2, 0.2]


# --- the transport dimension ---------------------------------------------------------


def test_transport_is_a_dimension_of_udp_and_tcp() -> None:
    both = dims.TRANSPORT.with_labels(["udp", "tcp"])
    spec = MatrixSpec((FULL, SYM), 1, extra=(both,))
    assert [d.name for d in spec.dimensions()] == ["a", "b", "transport"]
    slots = spec.slots()
    assert slots[4].key == "a=full-cone,b=full-cone,transport=tcp,repeat=1"
    assert (spec.setup(slots[0]).transport, spec.setup(slots[4]).transport) == ("udp", "tcp")
    tcp = spec.model_input(list(spec.points())[4])
    assert isinstance(tcp, dims.ModelInput) and tcp.transport == "tcp"
    only_udp = MatrixSpec((FULL, SYM), 1, extra=(dims.TRANSPORT.with_labels(["udp"]),))
    assert [s.key for s in only_udp.slots()][0] == "a=full-cone,b=full-cone,repeat=1"
    with pytest.raises(ValueError, match="expected udp or tcp, got 'quic'"):
        dims.TRANSPORT.parse("quic")
# --------------------------------------------------------------------------- strategies


def test_the_strategy_dimension_reaches_the_slot_and_the_model() -> None:
    seq = nat_from_label("symmetric:sequential")
    spec = MatrixSpec((seq,), extra=(dims.STRATEGY.with_labels(["stun", "predict"]),))
    keys = [s.key for s in spec.slots()]
    assert keys == [f"a={seq.label},b={seq.label},strategy=stun,repeat=1",
                    f"a={seq.label},b={seq.label},strategy=predict,repeat=1"]
    assert spec.setup(spec.slots()[0]).strategy == DEFAULT
    assert spec.setup(spec.slots()[1]).strategy == Strategy("predict")
    inp = spec.model_input(list(spec.points())[1])
    assert isinstance(inp, dims.ModelInput) and inp.peer_strategy == Strategy("predict")
    assert inp.strategy.announce_predictions
    # left at stun alone it is not a dimension: keys stay as they were
    plain = MatrixSpec((seq,), extra=(dims.STRATEGY.with_labels(["stun"]),))
    assert [s.key for s in plain.slots()] == [f"a={seq.label},b={seq.label},repeat=1"]
    with pytest.raises(ValueError, match="unknown strategy 'guess'"):
        dims.STRATEGY.with_labels(["guess"])


# --- peer implementations: peer_a x peer_b ------------------------------------------


def peers(*names: str) -> tuple[dims.Dimension, dims.Dimension]:
    return dims.PEER_A.with_labels(names), dims.PEER_B.with_labels(names)


def test_peer_implementations_are_two_dimensions_and_pairs_of_one_family_run() -> None:
    spec = MatrixSpec((FULL, SYM), 1, extra=peers("own", "aioice"))
    assert [d.name for d in spec.dimensions()] == ["a", "b", "peer_a", "peer_b"]
    assert len(list(spec.points())) == 16  # every ordered implementation pair x pairing
    keys = [s.key for s in spec.slots()]
    assert len(keys) == 8  # own x aioice and aioice x own: no common protocol, skipped
    assert "a=full-cone,b=symmetric,peer_a=aioice,peer_b=aioice,repeat=1" in keys
    assert not any("peer_a=own,peer_b=aioice" in k or "peer_a=aioice,peer_b=own" in k
                   for k in keys)
    asked = replace(spec, run_skipped=True)  # --cross-family
    assert len(asked.slots()) == 16


def test_every_slot_of_a_peers_run_is_judged_from_the_wire() -> None:
    spec = MatrixSpec((FULL,), 1, extra=peers("own", "aioice"))
    setups = {(s["peer_a"].name, s["peer_b"].name): spec.setup(s) for s in spec.slots()}
    own, ice = setups[("own", "own")], setups[("aioice", "aioice")]
    assert own.wire and own.peer_a.name == "own"  # the default value, applied in the grid
    assert ice.wire and (ice.peer_a.name, ice.peer_b.name) == ("aioice", "aioice")
    assert not MatrixSpec((FULL,)).setup(MatrixSpec((FULL,)).slots()[0]).wire


def test_the_model_covers_ice_pairs_but_not_other_transports_or_mixed_families() -> None:
    spec = MatrixSpec((FULL, SYM), 1, extra=peers("own", "aioice", "libp2p"), run_skipped=True)
    by = {(dict(p)["peer_a"].name, dict(p)["peer_b"].name, dict(p)["a"].label,
           dict(p)["b"].label): spec.model_input(p) for p in spec.points()}
    assert by[("aioice", "aioice", "full-cone", "symmetric")] == dims.ModelInput(FULL, SYM)
    assert by[("own", "own", "symmetric", "full-cone")] == dims.ModelInput(SYM, FULL)
    libp2p = by[("libp2p", "libp2p", "full-cone", "full-cone")]
    assert isinstance(libp2p, dims.NotModelled) and "over tcp" in libp2p.reason
    mixed = by[("own", "aioice", "full-cone", "full-cone")]
    assert isinstance(mixed, dims.NotModelled)
    assert mixed.reason == ("no common protocol: own speaks own, aioice speaks ice "
                            "(run on request)")
    skipped = MatrixSpec((FULL,), 1, extra=peers("own", "aioice"))
    point = next(p for p in skipped.points() if dict(p)["peer_a"].name == "own"
                 and dict(p)["peer_b"].name == "aioice")
    assert "skipped; --cross-family runs it" in skipped.model_input(point).reason


def test_a_peers_run_round_trips_through_json_with_its_options() -> None:
    spec = MatrixSpec((FULL, SYM), 2, extra=peers("own", "webrtc"), run_skipped=True,
                      deadline=4.0)
    data = spec_to_json(spec)
    assert data["run_skipped"] is True and data["deadline"] == 4.0
    again = spec_from_json(json.loads(json.dumps(data)))
    assert again == spec and spec_hash(spec_to_json(again)) == spec_hash(data)
    plain = spec_to_json(MatrixSpec((FULL,)))
    assert "run_skipped" not in plain and "deadline" not in plain  # older hashes stay


@pytest.mark.parametrize("deadline", [0.5, 601.0])
def test_a_deadline_out_of_range_is_refused(deadline: float) -> None:
    with pytest.raises(ValueError, match="deadline: must be 1 to 600 s"):
        MatrixSpec((FULL,), deadline=deadline)


def test_unknown_peers_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown peer 'quic'"):
        dims.PEER_A.with_labels(["own", "quic"])
    sel = Selector.parse("a=full-cone,peer_a=aioice")
    assert sel.point == (("a", "full-cone"), ("peer_a", "aioice"))
# ------------------------------------------------------------------ link conditions


def test_condition_parameters_are_dimensions_with_canonical_labels() -> None:
    loss = dims.PARAMS["loss"].with_labels(dims.split_units("0,1,5,20%"))
    delay = dims.PARAMS["delay"].with_labels(dims.split_units("0,0.05s,200ms"))
    assert loss.labels == ("0%", "1%", "5%", "20%")
    assert delay.labels == ("0ms", "50ms", "200ms")
    spec = MatrixSpec((FULL,), 1, extra=(delay, loss))
    assert [d.name for d in spec.dimensions()] == ["a", "b", "delay", "loss"]
    slots = spec.slots()
    assert len(slots) == 12
    assert slots[0].key == "a=full-cone,b=full-cone,delay=0ms,loss=0%,repeat=1"
    c = spec.setup(next(s for s in slots if s.extra == {"delay": "50ms", "loss": "5%"}))
    assert (c.conditions.delay, c.conditions.loss) == (0.05, 0.05)


def test_a_preset_and_parameters_over_it() -> None:
    spec = MatrixSpec((FULL,), 1, extra=(dims.COND.with_labels(["lte", "satellite"]),
                                          dims.PARAMS["loss"].with_labels(["2%"])))
    first = spec.setup(spec.slots()[0]).conditions
    assert (first.delay, first.jitter, first.loss) == (0.040, 0.010, 0.02)  # lte, loss over it
    assert dims.COND.parse("none").label == "none"
    with pytest.raises(ValueError, match="not a preset"):
        dims.COND.parse("marsnet")


def test_bursty_loss_labels_and_bad_values() -> None:
    assert dims.PARAMS["loss"].parse("ge:1%:30%").label == "ge:1%:30%:100%:0%"
    for name, label, message in [("loss", "200%", "over 100%"), ("delay", "-5ms", "negative"),
                                 ("delay", "50", "no unit"), ("rate", "0", "greater than 0"),
                                 ("loss", "ge:1%", "bursty loss is ge:P:R")]:
        with pytest.raises(ValueError, match=message):
            dims.PARAMS[name].parse(label)
    assert dims.split_units("1,2") == ["1", "2"]  # no unit: nothing added (then refused)


def test_delay_is_modelled_loss_and_lossy_presets_are_not() -> None:
    spec = MatrixSpec((FULL,), 1, extra=(dims.PARAMS["delay"].with_labels(["50ms"]),
                                          dims.PARAMS["loss"].with_labels(["0%", "5%"])))
    clean, lossy = (spec.model_input(p) for p in spec.points())
    assert clean == dims.ModelInput(FULL, FULL)
    assert isinstance(lossy, dims.NotModelled) and "loss (5%)" in lossy.reason
    spec = MatrixSpec((FULL,), 1, extra=(dims.COND.with_labels(["intercontinental", "lte"]),))
    far, lte = (spec.model_input(p) for p in spec.points())
    assert far == dims.ModelInput(FULL, FULL) and isinstance(lte, dims.NotModelled)


def test_peers_and_link_conditions_together() -> None:
    """Both kinds of dimension in one grid: every slot carries its programs, the wire
    judge and its links' conditions; loss is not modelled whatever the programs."""
    delay = dims.PARAMS["delay"].with_labels(["20ms"])
    loss = dims.PARAMS["loss"].with_labels(["0%", "5%"])
    spec = MatrixSpec((FULL,), 1, extra=(*peers("own", "aioice"), delay, loss))
    assert [d.name for d in spec.dimensions()] == ["a", "b", "peer_a", "peer_b", "delay",
                                                  "loss"]
    slots = spec.slots()
    assert len(slots) == 4  # own x own and aioice x aioice, each at 0% and 5% loss
    assert slots[0].key == ("a=full-cone,b=full-cone,peer_a=own,peer_b=own,"  # as listed
                            "delay=20ms,loss=0%,repeat=1")
    for s in slots:
        setup = spec.setup(s)
        assert setup.wire and setup.peer_a.name == s["peer_a"].name
        assert setup.conditions.delay == 0.02
        assert setup.conditions.loss == (0.05 if s.extra["loss"] == "5%" else 0.0)
    by = {(dict(p)["peer_a"].name, dict(p)["peer_b"].name, dict(p)["loss"].label):
          spec.model_input(p) for p in spec.points()}
    assert by[("aioice", "aioice", "0%")] == dims.ModelInput(FULL, FULL)
    assert isinstance(by[("aioice", "aioice", "5%")], dims.NotModelled)
    assert isinstance(by[("own", "aioice", "0%")], dims.NotModelled)


def test_a_punch_timeout_given_alone_is_fixed_and_the_default_is_scaled() -> None:
    """`--punch-timeout 1s` alone once equalled the dimension's default, so it was dropped
    from the grid and the peers scaled their timeout anyway: any value given is fixed."""
    from testbed.matrix.run import matrix_spec

    def timings(spec: MatrixSpec) -> set[tuple[float, bool]]:
        return {(t.punch_timeout, t.punch_fixed)
                for t in (spec.setup(s).timing for s in spec.slots())}

    fixed = matrix_spec([FULL, SYM], dimensions={"punch": ["1s"]})
    assert [d.labels for d in fixed.facet_dimensions()] == [("1s",)]
    assert timings(fixed) == {(1.0, True)}
    assert all("punch=1s" in s.key for s in fixed.slots())
    auto = matrix_spec([FULL, SYM], dimensions={"punch": ["auto"]})
    for spec in (matrix_spec([FULL, SYM]), auto):
        assert spec.facet_dimensions() == ()
        assert timings(spec) == {(1.0, False)}  # the floor; peers.pacing scales it
    with pytest.raises(ValueError, match="more than 0 s or auto"):
        dims.PUNCH.parse("0s")


def test_only_a_punch_timeout_that_leaves_punching_its_rounds_is_modelled() -> None:
    inp = dims.ModelInput(nat_a=FULL, nat_b=SYM)
    assert dims.PUNCH.predict_input(inp, dims.PUNCH.parse("auto")) == inp
    assert dims.PUNCH.predict_input(inp, dims.PUNCH.parse("2.5s")) == inp
    short = dims.PUNCH.predict_input(inp, dims.PUNCH.parse("0.2s"))
    assert isinstance(short, dims.NotModelled) and "0.2s" in short.reason
