"""Synthetic users: utilities from pixels, Bradley-Terry choices, populations, files, pairs data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pixpref.data.pickapic import PICKAPIC_COLUMNS
from pixpref.errors import PixprefError
from pixpref.toyworld.oracle import measure, parse_prompt, prompt_adherence
from pixpref.toyworld.pairs import iter_user_rows, write_pairs
from pixpref.toyworld.render import render
from pixpref.toyworld.scene import Scene
from pixpref.toyworld.users import (
    ARCHETYPES,
    USER_FEATURES,
    Term,
    User,
    basis,
    basis_names,
    load_users,
    sample_population,
    save_users,
    split_users,
)


def _images(rng, n=40):
    from pixpref.toyworld.scene import sample_scene

    return np.stack([render(sample_scene(rng)) for _ in range(n)])


def test_population_is_reproducible_sparse_and_split():
    a, b = sample_population(60, seed=3, population="mixed"), sample_population(60, seed=3, population="mixed")
    assert [u.to_dict() for u in a] == [u.to_dict() for u in b]
    assert [u.to_dict() for u in a] != [u.to_dict() for u in sample_population(60, seed=4, population="mixed")]
    assert [u.id for u in a] == list(range(60))
    assert all(1 <= len(u.terms) <= 3 for u in a if u.archetype is None)
    kinds = {t.kind for u in a for t in u.terms}
    assert kinds == {"linear", "ideal"}
    assert {u.archetype for u in a if u.archetype} <= set(ARCHETYPES)
    assert sum(u.archetype is not None for u in a) == 15
    train, unseen = split_users(a)
    assert len(unseen) == 12 and len(train) == 48
    assert not {u.id for u in train} & {u.id for u in unseen}
    assert all(0.15 <= u.temperature <= 0.5 for u in a)


def test_clusters_population_is_all_archetypes_with_sharper_choices():
    users = sample_population(70, seed=3)  # the default population
    assert all(u.archetype in ARCHETYPES for u in users)
    assert {u.archetype for u in users} == set(ARCHETYPES)  # every cluster present
    assert all(0.05 <= u.temperature <= 0.2 for u in users)
    # jittered: members of one cluster share features but not exact weights
    bold = [u for u in users if u.archetype == "bold"]
    assert len({tuple(t.feature for t in u.terms) for u in bold}) == 1
    assert len({u.terms[0].weight for u in bold}) == len(bold)


def test_population_names_and_ranges_are_checked():
    with pytest.raises(PixprefError, match="unknown population 'blobs'.*clusters.*mixed"):
        sample_population(10, population="blobs")
    with pytest.raises(PixprefError, match="temperature_range"):
        sample_population(10, temperature_range=(0.0, 0.1))


def test_utility_from_images_equals_basis_times_weights():
    rng = np.random.default_rng(0)
    images = _images(rng)
    feats = measure(images)
    phi = basis(feats)
    assert phi.shape == (40, len(basis_names()))
    for user in sample_population(25, seed=1):
        u = user.utility(images)
        np.testing.assert_allclose(u, user.utility(feats))
        lin = phi @ user.weights_vector()
        # equal up to a per-user constant
        np.testing.assert_allclose(u - u.mean(), lin - lin.mean(), atol=1e-9)
        assert user.weights_vector().shape == (len(basis_names()),)


def test_archetypes_prefer_what_they_say():
    plain_small_light = render(Scene("circle", "red", size=0.13, bg_lightness=0.95, shade="pastel"))
    big_vivid_dark = render(Scene("circle", "red", size=0.29, bg_lightness=0.05, shade="vivid",
                                  texture="stripes"))
    mini = User(0, ARCHETYPES["minimalist"], temperature=0.05)
    bold = User(1, ARCHETYPES["bold"], temperature=0.05)
    rng = np.random.default_rng(0)
    assert mini.prefers(plain_small_light, big_vivid_dark, rng) == 1.0
    assert bold.prefers(plain_small_light, big_vivid_dark, rng) == 0.0


def test_bradley_terry_rates_and_ties():
    user = User(0, (Term("size", "linear", 2.0),), temperature=0.5)
    rng = np.random.default_rng(0)
    n = 20000
    u_a, u_b = np.full(n, 1.0), np.zeros(n)
    labels = user.choose(u_a, u_b, rng)
    expected = 1 / (1 + np.exp(-1.0 / 0.5))
    assert abs(labels.mean() - expected) < 0.015
    assert set(np.unique(user.choose(u_a, u_a + 0.01, rng, tie_margin=0.05))) == {0.5}
    colder = User(0, user.terms, temperature=0.05).choose(u_a, u_b, rng)
    assert colder.mean() > 0.999


def test_users_file_round_trip_and_errors(tmp_path):
    users = sample_population(7, seed=2)
    path = save_users(users, tmp_path / "users.json", meta={"seed": 2})
    loaded = load_users(path)
    assert [u.to_dict() for u in loaded.users] == [u.to_dict() for u in users]
    assert loaded.meta == {"seed": 2}
    with pytest.raises(PixprefError, match="already exists"):
        save_users(users, path)
    doc = json.loads(path.read_text())
    doc["users"][0]["terms"][0]["feature"] = "sparkle"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(PixprefError, match="valid options: .*bg_lightness"):
        load_users(tmp_path / "bad.json")
    with pytest.raises(PixprefError, match="circular"):
        Term("bg_hue", "linear", 1.0)
    with pytest.raises(PixprefError, match="valid options"):
        Term("size", "quadratic", 1.0)
    assert set(USER_FEATURES) <= set(measure(render(Scene("star", "red"))))


def test_pairs_rows_share_content_and_follow_the_user():
    user = User(5, (Term("size", "linear", 4.0),), temperature=0.05)
    rows = list(iter_user_rows(user, 30, seed=0, tie_margin=0.0))
    assert len(rows) == 30
    agree = 0
    images = np.stack([im for row in rows for im in (row["jpg_0"], row["jpg_1"])])
    prompts = [row["caption"] for row in rows for _ in range(2)]
    assert prompt_adherence(images, prompts).mean() >= 0.95  # both images show the prompt's content
    for row in rows:
        s0, s1 = measure(np.stack([row["jpg_0"], row["jpg_1"]]))["size"]
        agree += (row["label_0"] == 1.0) == (s0 > s1)
        assert row["user_id"] == 5 and row["label_0"] + row["label_1"] == 1.0
    assert agree >= 27
    again = list(iter_user_rows(user, 30, seed=0, tie_margin=0.0))
    assert all((a["jpg_0"] == b["jpg_0"]).all() and a["label_0"] == b["label_0"] for a, b in zip(rows, again, strict=True))


def test_write_pairs_schema_shards_and_image_source(tmp_path):
    users = sample_population(4, seed=0, unseen_fraction=0.25)
    calls = []

    def source(prompt, n, rng):
        calls.append(prompt)
        colour, shape = parse_prompt(prompt)
        return np.stack([render(Scene(shape, colour, size=float(rng.uniform(0.12, 0.3)))) for _ in range(n)])

    out = tmp_path / "pairs"
    manifest = write_pairs(out, users, 5, seed=1, shard_rows=4, image_source=source, model_name="toy-model",
                           tie_margin=0.0)
    assert len(calls) == 20
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert files == ["train-00000-of-00004.parquet", "train-00001-of-00004.parquet",
                     "train-00002-of-00004.parquet", "train-00003-of-00004.parquet",
                     "unseen-00000-of-00002.parquet", "unseen-00001-of-00002.parquet"]
    table = pq.read_table(sorted(out.glob("train-*.parquet"))[0])
    assert tuple(table.column_names) == PICKAPIC_COLUMNS
    row = table.slice(0, 1).to_pylist()[0]
    assert row["model_0"] == "toy-model" and row["jpg_0"][:8] == b"\x89PNG\r\n\x1a\n"
    assert row["best_image_uid"] in (row["image_0_uid"], row["image_1_uid"])
    assert sum(manifest["files"].values()) == 20
    assert [u.to_dict() for u in load_users(out / "users.json").users] == [u.to_dict() for u in users]
    with pytest.raises(PixprefError, match="already exists"):
        write_pairs(out, users, 5, seed=1)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PixprefError, match="refusing to replace"):
        write_pairs(out, users, 5, seed=1, overwrite=True)


def test_bad_image_source_leaves_nothing_behind(tmp_path):
    users = sample_population(2, seed=0)

    def bad(prompt, n, rng):
        return np.zeros((n, 32, 32, 3), dtype=np.float32)

    with pytest.raises(PixprefError, match="expected uint8"):
        write_pairs(tmp_path / "p", users, 2, seed=0, image_source=bad)
    assert list(tmp_path.iterdir()) == []


def test_pair_contrast_points_at_what_the_choices_share():
    from pixpref.toyworld.scene import Scene
    from pixpref.toyworld.users import Term, User, basis_names, pair_contrast

    names = basis_names()
    # every chosen image is a larger object than its rejected twin; nothing else differs
    chosen = np.stack([render(Scene("circle", c, size=0.35), 32) for c in ("red", "blue", "green")])
    rejected = np.stack([render(Scene("circle", c, size=0.12), 32) for c in ("red", "blue", "green")])
    d = pair_contrast(chosen, rejected)
    assert d.shape == (len(names),)
    assert d[names.index("size")] > 0.1
    others = [v for n, v in zip(names, d) if not n.startswith("size")]
    assert np.abs(others).max() < 0.05
    # a user who likes large objects agrees with this contrast, one who likes small ones does not
    big, small = User(0, (Term("size", "linear", 2.0),)), User(1, (Term("size", "linear", -2.0),))
    assert d @ big.weights_vector() > 0 > d @ small.weights_vector()
    with pytest.raises(PixprefError, match="pair_contrast"):
        pair_contrast(chosen, rejected[:2])


def test_candidate_pairs_differ_more_in_style_than_random_pairs():
    from pixpref.toyworld.users import Term, User, basis

    user = User(0, (Term("size", "linear", 2.0),))

    def gap(candidates):
        rows = list(iter_user_rows(user, 30, seed=3, candidates=candidates))
        a = basis(measure(np.stack([r["jpg_0"] for r in rows])))
        b = basis(measure(np.stack([r["jpg_1"] for r in rows])))
        sd = np.concatenate([a, b]).std(0) + 1e-6
        return float(np.linalg.norm((a - b) / sd, axis=1).mean())

    assert gap(4) > 1.08 * gap(1)  # measured 6.77 vs 5.97 (seeded); equal if candidates were ignored
    with pytest.raises(PixprefError, match="candidates must be >= 1"):
        next(iter_user_rows(user, 2, seed=0, candidates=0))


def _identifiability_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "user_identifiability.py"
    spec = importlib.util.spec_from_file_location("user_identifiability", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("population", ["clusters", "mixed"])
def test_few_pairs_identify_a_clustered_user_better(tmp_path, population, capsys):
    """The design claim behind the default population: 4 pairs of a 'clusters' user, read through the
    training population, predict their other choices far better than 4 pairs of a 'mixed' user."""
    users = sample_population(100, seed=0, population=population)
    write_pairs(tmp_path / "d", users, pairs_per_user=24, seed=0)
    script = _identifiability_script()
    assert script.main(["--data", str(tmp_path / "d"), "--k", "4", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["by_k"]["4"]
    assert r["users"] == 20
    assert r["true_weights"] >= r["posterior"] - 0.02  # nothing beats knowing the weights
    if population == "clusters":
        assert r["posterior"] >= 0.75 and r["true_weights"] >= 0.85
    else:
        assert r["posterior"] <= 0.72


def test_posterior_weights_by_hand_and_errors():
    from pixpref.toyworld.users import posterior_weights

    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    t = np.array([1.0, 1.0])
    # one pair with difference (1, 0): likelihoods sigmoid(1) = 0.7311 and sigmoid(0) = 0.5
    post = posterior_weights(np.array([[1.0, 0.0]]), w, t)
    s1 = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(post, [s1 / (s1 + 0.5), 0.5 / (s1 + 0.5)], rtol=1e-12)
    np.testing.assert_allclose(posterior_weights(np.zeros((0, 2)), w, t), [0.5, 0.5])  # no pairs: the prior mean
    # 8 consistent pairs at a low temperature pick the matching user: likelihoods 0.5^8 and sigmoid(20)^8
    lik = np.array([0.5**8, (1 / (1 + np.exp(-20.0))) ** 8])
    np.testing.assert_allclose(posterior_weights(np.tile([[0.0, 1.0]], (8, 1)), w, t * 0.05), lik / lik.sum(),
                               rtol=1e-9)
    with pytest.raises(PixprefError, match="posterior_weights needs"):
        posterior_weights(np.zeros((2, 3)), w, t)
    with pytest.raises(PixprefError, match="temperatures must be > 0"):
        posterior_weights(np.zeros((1, 2)), w, np.array([1.0, 0.0]))


def test_oracle_posterior_cache_leaves_the_user_out_of_its_own_prior(tmp_path):
    """Two identical-taste training users A and B and an opposite one C: A's chunk is read through B and C only."""
    from types import SimpleNamespace

    from pixpref.personalize.user_cache import oracle_posterior_embeddings
    from pixpref.toyworld.users import pair_differences, posterior_weights

    big = (Term("size", "linear", 2.0),)
    users = [User(0, big, temperature=0.1, split="train"), User(1, big, temperature=0.1, split="train"),
             User(2, (Term("size", "linear", -2.0),), temperature=0.1, split="train")]
    path = save_users(users, tmp_path / "users.json")
    large = render(Scene("circle", "red", size=0.28))
    small = render(Scene("circle", "red", size=0.13))
    arrays = SimpleNamespace(pairs=lambda idx: [("a red circle", large, small) for _ in idx])
    chunks = [SimpleNamespace(user_id="0", chunk=0, indices=[0, 1])]
    (emb,) = oracle_posterior_embeddings(chunks, arrays, path).values()
    d = pair_differences(np.stack([large, large]), np.stack([small, small]))
    rest = np.stack([users[1].weights_vector(), users[2].weights_vector()])
    np.testing.assert_allclose(emb[0].numpy(), posterior_weights(d, rest, np.array([0.1, 0.1])), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb[0].numpy(), users[1].weights_vector(), atol=1e-3)  # the choices match B's taste
