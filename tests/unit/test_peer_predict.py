"""Port prediction (peers.predict): learning a sequential allocator's step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peers.predict import MAX_STEP, Allocation, learn, predicted_ports


def test_one_port_for_every_destination_is_endpoint_independent() -> None:
    a = learn([40000, 40000, 40000])
    assert a == Allocation("independent", 0, 40000)
    assert not a.dependent
    assert predicted_ports(a, 8) == []


def test_a_common_step_is_a_sequential_allocator() -> None:
    a = learn([49153, 49154, 49155])
    assert a == Allocation("sequential", 1, 49155) and a.dependent
    assert predicted_ports(a, 4) == [49156, 49157, 49158, 49159]
    assert predicted_ports(learn([1000, 998, 996]), 2) == [994, 992]


def test_random_ports_are_unpredictable() -> None:
    assert learn([51234, 60001, 49999]).kind == "unpredictable"
    # a common step too large for any guess window is a coincidence, not an allocator
    assert learn([1000, 1000 + MAX_STEP + 1, 1000 + 2 * (MAX_STEP + 1)]).kind == "unpredictable"
    # address-dependent mapping: the second and third binding share an address
    assert learn([40000, 40001, 40001]).kind == "unpredictable"


def test_predictions_stay_valid_ports() -> None:
    assert predicted_ports(learn([65532, 65533, 65534]), 4) == [65535]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 bindings"):
        learn([1, 2])
    with pytest.raises(ValueError, match="window must be 1..16"):
        predicted_ports(learn([1, 2, 3]), 17)


@given(st.integers(1024, 60000), st.integers(-MAX_STEP, MAX_STEP).filter(bool))
def test_any_sequential_run_predicts_its_continuation(start: int, step: int) -> None:
    ports = [start, start + step, start + 2 * step]
    want = [start + step * k for k in range(3, 11) if 1 <= start + step * k <= 65535]
    assert predicted_ports(learn(ports), 8) == want
