"""Block deltas: edits, insertions and deletions cost about a block; unrelated files go whole."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relsync.delta import BLOCK, Copy, apply_delta, make_delta, signatures_of

MB = 1 << 20


def literal(ops: list[Copy | bytes]) -> int:
    return sum(len(op) for op in ops if isinstance(op, bytes))


@pytest.fixture(scope="module")
def old() -> bytes:
    return random.Random(7).randbytes(10 * MB)


def test_one_kilobyte_changed_in_place_sends_about_a_block(old: bytes) -> None:
    new = old[: 5 * MB] + bytes(1024) + old[5 * MB + 1024 :]
    ops = make_delta(new, signatures_of(old))
    assert ops is not None and apply_delta(old, ops) == new
    assert literal(ops) <= 2 * BLOCK
    assert sum(1 for op in ops if isinstance(op, Copy)) == 2  # adjacent copies merged


@pytest.mark.parametrize("shift", [1, 1000, BLOCK + 3])
def test_insertion_and_deletion_resynchronise(old: bytes, shift: int) -> None:
    inserted = old[: 3 * MB] + b"x" * shift + old[3 * MB :]
    deleted = old[: 3 * MB] + old[3 * MB + shift :]
    for new in (inserted, deleted):
        ops = make_delta(new, signatures_of(old))
        assert ops is not None and apply_delta(old, ops) == new
        assert literal(ops) <= 2 * BLOCK + shift


def test_an_unrelated_file_is_not_worth_a_delta(old: bytes) -> None:
    assert make_delta(random.Random(8).randbytes(MB), signatures_of(old)) is None


def test_small_files_and_tails() -> None:
    assert make_delta(b"", []) == []
    assert make_delta(b"short", signatures_of(b"short"), max_literal=1.0) == [b"short"]
    base = random.Random(9).randbytes(3 * BLOCK + 100)
    ops = make_delta(base + b"tail", signatures_of(base))
    assert ops is not None and apply_delta(base, ops) == base + b"tail"


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=0, max_size=4 * 512),
    st.lists(st.tuples(st.integers(0, 2047), st.binary(max_size=40)), max_size=4),
)
def test_any_edit_round_trips(base: bytes, edits: list[tuple[int, bytes]]) -> None:
    new = base
    for at, text in edits:
        at = min(at, len(new))
        new = new[:at] + text + new[at + len(text) // 2 :]
    ops = make_delta(new, signatures_of(base, 512), block=512, max_literal=1.0)
    assert ops is not None and apply_delta(base, ops) == new


def test_probes_find_a_shifted_copy_even_when_the_front_changed(old: bytes) -> None:
    # The first 40 % is new and everything after it moved by 7 bytes: the probes over the
    # rest still line up with the target's blocks, so the scan runs and pays.
    cut = 4 * MB
    new = random.Random(10).randbytes(cut + 7) + old[cut:]
    ops = make_delta(new, signatures_of(old))
    assert ops is not None and apply_delta(old, ops) == new
    assert literal(ops) <= cut + 7 + BLOCK


def test_probes_only_ever_give_up_early(old: bytes) -> None:
    unrelated = random.Random(11).randbytes(2 * MB)
    sums = signatures_of(old)
    assert make_delta(unrelated, sums) is None
    assert make_delta(unrelated, sums, probes=0) is None  # the full scan agrees
    ops = make_delta(unrelated, sums, max_literal=1.0)  # any literal is fine: no probing
    assert ops == [unrelated]
