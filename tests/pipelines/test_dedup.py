"""Near-duplicate search by band index: the same answers as comparing every pair, found faster."""

from __future__ import annotations

import random

import pytest

from pipelines.clip import is_near_duplicate
from pipelines.finalize import NearIndex, _dedup


def _flip(sig: int, nbits: int, k: int, rng: random.Random) -> int:
    for b in rng.sample(range(nbits), k):
        sig ^= 1 << b
    return sig


def _hex(v: int, nbits: int) -> str:
    return f"{v:0{nbits // 4}x}"


@pytest.mark.parametrize("max_bits", [0, 3, 12])
def test_band_index_finds_exactly_what_all_pairs_find(max_bits: int) -> None:
    rng = random.Random(max_bits)
    nbits = 256
    base = [rng.getrandbits(nbits) for _ in range(150)]
    sigs = []
    for v in base:
        sigs.append(_hex(v, nbits))
        # copies just inside and just outside the limit, and far ones
        for k in (max_bits, max_bits + 1, rng.randint(0, 2 * max_bits + 2)):
            sigs.append(_hex(_flip(v, nbits, k, rng), nbits))
    rng.shuffle(sigs)
    index = NearIndex(max_bits)
    kept: list[tuple[str, str]] = []
    n_hits = 0
    for i, sig in enumerate(sigs):
        brute = next((cid for cid, s in kept if is_near_duplicate(s, sig, max_bits)), None)
        assert index.first_near(sig) == brute
        if brute is None:
            index.add(str(i), sig)
            kept.append((str(i), sig))
        else:
            n_hits += 1
    assert n_hits > 100  # the planted copies were found


def test_dedup_keeps_the_first_and_names_it() -> None:
    a = "f" * 64
    near_a = "e" + "f" * 63  # one bit off
    far = "0" * 64
    clips = [
        {"clip_id": "a", "sha256": "1", "signature": a},
        {"clip_id": "b", "sha256": "2", "signature": far},
        {"clip_id": "c", "sha256": "3", "signature": near_a},
        {"clip_id": "d", "sha256": "2", "signature": a},  # byte copy of b
    ]
    assert _dedup(clips, max_bits=2) == {"c": "a", "d": "b"}


def test_signatures_of_different_lengths_are_refused() -> None:
    index = NearIndex(4)
    index.add("a", "f" * 64)
    with pytest.raises(ValueError, match="lengths differ"):
        index.first_near("f" * 32)
