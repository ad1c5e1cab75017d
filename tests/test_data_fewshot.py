"""Few-shot chunks per user and user/prompt splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixpref.data.fewshot import make_chunks, make_splits, split_users, user_chunks
from pixpref.data.pairs import PairMeta
from pixpref.data.pickapic import iter_pickapic_meta
from pixpref.errors import PixprefError


def _metas(counts: dict[str, int], prompts: int = 30) -> list[PairMeta]:
    out, idx = [], 0
    for user, n in counts.items():
        for _ in range(n):
            out.append(PairMeta(index=idx, user_id=user, prompt=f"prompt {idx % prompts}"))
            idx += 1
    return out


def test_chunks_are_disjoint_sized_and_capped():
    metas = _metas({"a": 10, "b": 4, "c": 3, "d": 100})
    res = make_chunks(metas, k=4, max_chunks_per_user=20, seed=0)
    assert res.skipped_users == {"c": 3}
    per_user = {u: [c for c in res.chunks if c.user_id == u] for u in res.users}
    assert {u: len(c) for u, c in per_user.items()} == {"a": 2, "b": 1, "d": 20}
    owner = {m.index: m.user_id for m in metas}
    seen: set[int] = set()
    for c in res.chunks:
        assert len(c.indices) == 4 and all(owner[i] == c.user_id for i in c.indices)
        assert not seen & set(c.indices)
        seen |= set(c.indices)
    assert [c.chunk for c in per_user["d"]] == list(range(20))


def test_chunks_reproducible_and_seed_dependent():
    metas = _metas({"a": 40, "b": 40})
    one = make_chunks(metas, seed=3).chunks
    assert one == make_chunks(list(reversed(metas)), seed=3).chunks  # input order does not matter
    assert one != make_chunks(metas, seed=4).chunks
    # a user's chunks do not depend on which other users are present
    only_a = make_chunks([m for m in metas if m.user_id == "a"], seed=3).chunks
    assert only_a == [c for c in one if c.user_id == "a"]
    # shuffled, not just consecutive indices
    assert any(c.indices != tuple(sorted(c.indices)) for c in one)


def test_requested_user_with_too_few_pairs_is_an_error():
    metas = _metas({"alice": 3, "bob": 8})
    with pytest.raises(PixprefError, match=r"user 'alice' has 3 valid pair\(s\), fewer than k=4"):
        make_chunks(metas, k=4, users=["alice"])
    with pytest.raises(PixprefError, match="unknown user.*'carol'.*alice, bob"):
        make_chunks(metas, users=["carol"])
    assert len(make_chunks(metas, k=4, users=["bob"]).chunks) == 2
    with pytest.raises(PixprefError, match="k must be >= 1"):
        user_chunks("bob", [1, 2], k=0)


def test_splits_partition_and_reproduce():
    metas = _metas({f"u{i}": 12 for i in range(20)}, prompts=40)
    s = make_splits(metas, unseen_user_fraction=0.2, heldout_prompt_fraction=0.1, seed=7)
    assert len(s.unseen_user_ids) == 4 and len(s.heldout_prompt_set) == 4
    all_idx = [m.index for m in s.train + s.heldout_prompts + s.unseen_users]
    assert sorted(all_idx) == [m.index for m in metas]  # every pair in exactly one split
    assert {m.user_id for m in s.unseen_users} == set(s.unseen_user_ids)
    assert not {m.user_id for m in s.train} & set(s.unseen_user_ids)
    assert not {m.prompt for m in s.train} & s.heldout_prompt_set
    assert all(m.prompt in s.heldout_prompt_set for m in s.heldout_prompts)
    again = make_splits(metas, 0.2, 0.1, seed=7)
    assert again.unseen_user_ids == s.unseen_user_ids and again.heldout_prompt_set == s.heldout_prompt_set
    assert make_splits(metas, 0.2, 0.1, seed=8).unseen_user_ids != s.unseen_user_ids
    seen, unseen = split_users(["x", "y"], 0.0)
    assert (seen, unseen) == (["x", "y"], [])
    with pytest.raises(PixprefError, match=r"fraction must be in \[0, 1\)"):
        split_users(["x"], 1.0)


def test_chunks_from_parquet_metadata(pickapic_file: Path):
    metas = list(iter_pickapic_meta(pickapic_file, batch_rows=4))
    res = make_chunks(metas, k=4, seed=0)
    # users 1, 2, 3 have 5 valid pairs each by metadata (row 3's corrupt image is not seen without decoding)
    assert sorted(res.users) == ["1", "2", "3"] and res.skipped_users == {}
    res5 = make_chunks(metas, k=6)
    assert res5.chunks == [] and res5.skipped_users == {"1": 5, "2": 5, "3": 5}
