"""Synthetic users: sparse utility functions over the oracle's style measurements.

Every user shares the content (the prompt's shape and colour) and differs only on style. A user's
utility is a sum of a few *terms*, each over one oracle feature of :data:`USER_FEATURES`:

    linear   weight * f                              (weight signed: "likes large objects")
    ideal    -weight * (f - target)^2                ("prefers size near 0.3"); weight > 0
    ideal    weight * cos(2 pi (hue - target))       for the circular feature ``bg_hue``

Because terms only read :func:`pixpref.toyworld.oracle.measure`, a utility applies to any image,
rendered or generated. Choices follow Bradley-Terry: P(a over b) = sigmoid((u_a - u_b) / temperature),
with a tie (0.5 / 0.5) when the utilities are within ``tie_margin``.

The utility is linear in a fixed basis (:func:`basis`: f and f^2 per feature, cos and sin of the hue),
so :meth:`User.weights_vector` gives each user's true preference as a fixed-length vector, an "oracle
embedding" upper bound for learned user embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixpref.errors import PixprefError, unknown_name
from pixpref.io_utils import read_json

USER_FEATURES = (
    "size", "cx", "cy", "bg_lightness", "bg_hue", "obj_lightness", "obj_saturation", "texture", "outline",
)
CIRCULAR = frozenset({"bg_hue"})
TERM_KINDS = ("linear", "ideal")
SPLITS = ("train", "unseen")
USERS_FORMAT = "pixpref-toyworld-users"
USERS_VERSION = 1


@dataclass(frozen=True)
class Term:
    """One part of a utility: ``kind`` over ``feature`` (see the module docstring)."""

    feature: str
    kind: str
    weight: float
    target: float = 0.0

    def __post_init__(self) -> None:
        if self.feature not in USER_FEATURES:
            raise unknown_name("user feature", self.feature, USER_FEATURES)
        if self.kind not in TERM_KINDS:
            raise unknown_name("term kind", self.kind, TERM_KINDS)
        if self.feature in CIRCULAR and self.kind != "ideal":
            raise PixprefError(f"feature {self.feature!r} is circular; valid kinds for it: ideal")
        if self.kind == "ideal" and self.weight <= 0:
            raise PixprefError(f"an ideal-point term needs weight > 0, got {self.weight}")

    def value(self, f: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return self.weight * f
        if self.feature in CIRCULAR:
            return self.weight * np.cos(2 * np.pi * (f - self.target))
        return -self.weight * (f - self.target) ** 2


def basis_names() -> list[str]:
    """Names of the entries of :func:`basis` and :meth:`User.weights_vector`."""
    names = []
    for f in USER_FEATURES:
        names += [f"cos({f})", f"sin({f})"] if f in CIRCULAR else [f, f"{f}^2"]
    return names


def basis(features: Mapping[str, np.ndarray]) -> np.ndarray:
    """The fixed basis every utility is linear in: ``(N, len(basis_names()))``."""
    cols = []
    for f in USER_FEATURES:
        v = np.asarray(features[f], dtype=np.float64)
        if f in CIRCULAR:
            cols += [np.cos(2 * np.pi * v), np.sin(2 * np.pi * v)]
        else:
            cols += [v, v**2]
    return np.stack(cols, axis=-1)


def pair_differences(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """basis(chosen) - basis(rejected) per pair, ``(k, W)``; ``chosen`` / ``rejected``: ``(k, H, W, 3)`` uint8."""
    from pixpref.toyworld.oracle import measure

    c, r = np.asarray(chosen), np.asarray(rejected)
    if c.shape != r.shape or c.ndim != 4 or c.shape[0] == 0:
        raise PixprefError(f"pair_differences / pair_contrast need two (k>=1, H, W, 3) image stacks of one shape, got "
                           f"{c.shape} and {r.shape}")
    return basis(measure(c)) - basis(measure(r))


def pair_contrast(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """What k pairwise choices say in the utility basis: the mean of :func:`pair_differences`, ``(W,)``.

    ``chosen`` / ``rejected``: ``(k, H, W, 3)`` uint8 images. For a linear-in-basis utility ``w``, the
    expected contrast points at ``w`` (scaled by how much the pairs vary), so this is the pixel oracle's
    perfect reading of a user's few examples: an upper bound for encoders that only see the examples.
    """
    return pair_differences(chosen, rejected).mean(0)


def examples_differences(examples: Sequence) -> np.ndarray:
    """:func:`pair_differences` of (prompt, chosen, rejected) examples, ``(k, W)``; images as anything
    ``load_rgb`` reads."""
    from pixpref.data.images import load_rgb

    chosen = np.stack([load_rgb(c, where="chosen example") for _, c, _ in examples])
    rejected = np.stack([load_rgb(r, where="rejected example") for _, _, r in examples])
    return pair_differences(chosen, rejected)


def examples_contrast(examples: Sequence) -> np.ndarray:
    """:func:`pair_contrast` of (prompt, chosen, rejected) examples; images as anything ``load_rgb`` reads."""
    return examples_differences(examples).mean(0)


def posterior_weights(differences: np.ndarray, weights: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Bayes posterior mean of a population's weight vectors given k pairwise choices, ``(W,)``.

    ``differences``: ``(k, W)`` basis(chosen) - basis(rejected) (:func:`pair_differences`); ``weights``:
    ``(N, W)`` the population's weights (a uniform prior over its N users); ``temperatures``: ``(N,)`` their
    Bradley-Terry temperatures. Likelihood of user n: prod_k sigmoid(d_k . w_n / t_n). What an encoder
    trained on the population can infer about a new user from k pairs (the population prior included).
    """
    d, w = np.asarray(differences, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    t = np.asarray(temperatures, dtype=np.float64)
    if d.ndim != 2 or w.ndim != 2 or d.shape[1] != w.shape[1] or t.shape != (w.shape[0],) or not len(w):
        raise PixprefError(f"posterior_weights needs (k, W) differences, (N>=1, W) weights and (N,) temperatures, got "
                           f"{d.shape}, {w.shape} and {t.shape}")
    if not (t > 0).all():
        raise PixprefError("posterior_weights: temperatures must be > 0")
    margin = d @ w.T / t  # (k, N)
    loglik = -np.logaddexp(0.0, -np.clip(margin, -60, 60)).sum(0)  # (N,) log prod sigmoid
    post = np.exp(loglik - loglik.max())
    return post @ w / post.sum()


def training_prior(users: Sequence[User]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The prior of :func:`posterior_weights`: ids ``(N,)``, weights ``(N, W)`` and temperatures ``(N,)`` of the
    users whose split is "train"."""
    train = [u for u in users if u.split == "train"]
    if not train:
        raise PixprefError("no users with split 'train': the posterior needs a training population")
    return (np.array([str(u.id) for u in train]), np.stack([u.weights_vector() for u in train]),
            np.array([u.temperature for u in train]))


def examples_posterior(examples: Sequence, weights: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """:func:`posterior_weights` of (prompt, chosen, rejected) examples read by the pixel oracle."""
    return posterior_weights(examples_differences(examples), weights, temperatures)


def _features(x: Mapping[str, np.ndarray] | np.ndarray) -> Mapping[str, np.ndarray]:
    if isinstance(x, Mapping):
        missing = [f for f in USER_FEATURES if f not in x]
        if missing:
            raise PixprefError(f"feature dict lacks {', '.join(missing)}; needs: {', '.join(USER_FEATURES)}")
        return x
    from pixpref.toyworld.oracle import measure

    return measure(x)


@dataclass(frozen=True)
class User:
    """A synthetic user: an id, utility terms, a Bradley-Terry temperature and a data split."""

    id: int
    terms: tuple[Term, ...]
    temperature: float = 0.3
    archetype: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if not self.terms:
            raise PixprefError(f"user {self.id} has no utility terms")
        if self.temperature <= 0:
            raise PixprefError(f"user {self.id}: temperature must be > 0, got {self.temperature}")
        if self.split not in SPLITS:
            raise unknown_name("user split", self.split, SPLITS)

    def utility(self, x: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Utility ``(N,)`` of oracle features (dict of ``(N,)`` arrays) or of uint8 images."""
        feats = _features(x)
        return sum(t.value(np.asarray(feats[t.feature], dtype=np.float64)) for t in self.terms)

    def weights_vector(self) -> np.ndarray:
        """Coefficients ``w`` with ``utility = basis(features) @ w + constant`` (length of basis_names())."""
        names = basis_names()
        w = np.zeros(len(names))
        for t in self.terms:
            if t.feature in CIRCULAR:
                ang = 2 * np.pi * t.target
                w[names.index(f"cos({t.feature})")] += t.weight * np.cos(ang)
                w[names.index(f"sin({t.feature})")] += t.weight * np.sin(ang)
            elif t.kind == "linear":
                w[names.index(t.feature)] += t.weight
            else:  # -a (f - c)^2 = -a f^2 + 2 a c f - a c^2
                w[names.index(t.feature)] += 2 * t.weight * t.target
                w[names.index(f"{t.feature}^2")] -= t.weight
        return w

    def choose(self, u_a: np.ndarray, u_b: np.ndarray, rng: np.random.Generator,
               tie_margin: float = 0.0) -> np.ndarray:
        """Bradley-Terry labels for image a: 1.0 (a preferred), 0.0 (b preferred) or 0.5 (tie)."""
        diff = np.asarray(u_a, dtype=np.float64) - np.asarray(u_b, dtype=np.float64)
        p_a = 1.0 / (1.0 + np.exp(-np.clip(diff / self.temperature, -60, 60)))
        label = (rng.random(diff.shape) < p_a).astype(np.float64)
        label[np.abs(diff) < tie_margin] = 0.5
        return label

    def prefers(self, img_a: np.ndarray, img_b: np.ndarray, rng: np.random.Generator,
                tie_margin: float = 0.0) -> float | np.ndarray:
        """Label for ``img_a`` against ``img_b`` (single images or batches): 1.0, 0.0 or 0.5."""
        a, b = np.asarray(img_a), np.asarray(img_b)
        labels = self.choose(self.utility(a), self.utility(b), rng, tie_margin)
        return float(labels[0]) if a.ndim == 3 else labels

    def describe(self) -> str:
        """A short readable summary, e.g. 'user 3 (minimalist): size~0.15 x6.0, texture x-2.0'."""
        parts = [f"{t.feature}~{t.target:.2f} x{t.weight:.1f}" if t.kind == "ideal" else
                 f"{t.feature} x{t.weight:+.1f}" for t in self.terms]
        name = f" ({self.archetype})" if self.archetype else ""
        return f"user {self.id}{name}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"id": self.id, "archetype": self.archetype, "split": self.split,
                "temperature": self.temperature,
                "terms": [{"feature": t.feature, "kind": t.kind, "weight": t.weight, "target": t.target}
                          for t in self.terms]}

    @classmethod
    def from_dict(cls, d: Mapping) -> User:
        valid = {"id", "archetype", "split", "temperature", "terms"}
        unknown = set(d) - valid
        if unknown:
            raise PixprefError(f"unknown user key(s) {', '.join(sorted(unknown))}; valid keys: "
                               f"{', '.join(sorted(valid))}")
        try:
            terms = tuple(Term(**t) for t in d["terms"])
        except TypeError as e:
            raise PixprefError(f"bad term in user {d.get('id')}: {e}; term keys: feature, kind, weight, "
                               "target") from None
        return cls(id=int(d["id"]), terms=terms, temperature=float(d.get("temperature", 0.3)),
                   archetype=d.get("archetype"), split=d.get("split", "train"))


# ------------------------------------------------------------------------------------------ population

# named archetypes: recognisable tastes, each a few terms
ARCHETYPES: dict[str, tuple[Term, ...]] = {
    "minimalist": (Term("size", "ideal", 6.0, 0.15), Term("texture", "linear", -2.0),
                   Term("bg_lightness", "linear", 2.5)),
    "bold": (Term("size", "linear", 3.0), Term("obj_saturation", "linear", 2.5),
             Term("bg_lightness", "linear", -2.5)),
    "pastel": (Term("obj_lightness", "ideal", 8.0, 0.8), Term("bg_lightness", "ideal", 4.0, 0.75)),
    "centred": (Term("cx", "ideal", 8.0, 0.5), Term("cy", "ideal", 8.0, 0.5)),
    "ornate": (Term("texture", "linear", 2.5), Term("outline", "linear", 2.5)),
    "warm": (Term("bg_hue", "ideal", 2.5, 0.05), Term("bg_lightness", "ideal", 4.0, 0.55)),
    "thirds": (Term("cx", "ideal", 8.0, 0.15), Term("cy", "ideal", 8.0, 0.15)),
}


def _random_terms(rng: np.random.Generator) -> tuple[Term, ...]:
    k = int(rng.integers(1, 4))
    feats = rng.choice(len(USER_FEATURES), size=k, replace=False)
    terms = []
    for j in feats:
        f = USER_FEATURES[int(j)]
        if f in CIRCULAR:
            terms.append(Term(f, "ideal", float(rng.uniform(1.5, 3.0)), float(rng.uniform(0, 1))))
        elif rng.random() < 0.5:
            terms.append(Term(f, "linear", float(rng.choice([-1, 1]) * rng.uniform(1.5, 4.0))))
        else:
            terms.append(Term(f, "ideal", float(rng.uniform(4.0, 10.0)), float(rng.uniform(0.15, 0.85))))
    return tuple(terms)


def _jitter(terms: Sequence[Term], rng: np.random.Generator) -> tuple[Term, ...]:
    out = []
    for t in terms:
        target = t.target if t.kind == "linear" else float(
            (t.target + rng.normal(0, 0.03)) % 1.0 if t.feature in CIRCULAR else np.clip(t.target + rng.normal(0, 0.03), 0, 1))
        out.append(Term(t.feature, t.kind, float(t.weight * rng.uniform(0.8, 1.2)), target))
    return tuple(out)


# named populations (``sample_population(population=...)``, ``make-pairs --population``):
#   clusters  every user a jittered copy of one of ARCHETYPES, Bradley-Terry temperature 0.05-0.2: tastes
#             come in recognisable clusters, as real users' do, so a few choices can identify a user. On 4000
#             pairs of the toy model's samples, inferring a new user from 4 pairs (Bayes posterior over the
#             training users) predicts their held-out choices at 0.85 (k = 1 / 2 / 8: 0.68 / 0.74 / 0.91).
#   mixed     a quarter archetypes, the rest 1-3 random terms, temperature 0.15-0.5: a continuum of tastes
#             that 4 noisy pairs cannot pin down (the same inference reaches 0.64; the true weights 0.83).
POPULATIONS: dict[str, dict] = {
    "clusters": {"archetype_share": 1.0, "temperature_range": (0.05, 0.2)},
    "mixed": {"archetype_share": 0.25, "temperature_range": (0.15, 0.5)},
}
DEFAULT_POPULATION = "clusters"


def sample_population(n: int, seed: int = 0, population: str = DEFAULT_POPULATION,
                      archetype_share: float | None = None, unseen_fraction: float = 0.2,
                      temperature_range: tuple[float, float] | None = None) -> list[User]:
    """``n`` users with ids 0..n-1, reproducible from ``seed`` and the named ``population``.

    A share ``archetype_share`` (default: the population's) are jittered copies of :data:`ARCHETYPES`
    (cycled, so small populations get several); the rest have 1-3 random linear or ideal-point terms.
    Temperatures are uniform in ``temperature_range`` (default: the population's). A deterministic
    ``unseen_fraction`` (at least one user when n >= 2) is marked ``split="unseen"``: held out from training.
    """
    if population not in POPULATIONS:
        raise unknown_name("population", population, POPULATIONS)
    spec = POPULATIONS[population]
    archetype_share = spec["archetype_share"] if archetype_share is None else archetype_share
    temperature_range = spec["temperature_range"] if temperature_range is None else temperature_range
    if n < 1:
        raise PixprefError(f"need at least one user, got {n}")
    if not 0.0 <= archetype_share <= 1.0 or not 0.0 <= unseen_fraction < 1.0:
        raise PixprefError("archetype_share must be in [0, 1] and unseen_fraction in [0, 1)")
    lo, hi = temperature_range
    if not 0.0 < lo <= hi:
        raise PixprefError(f"temperature_range must satisfy 0 < low <= high, got {temperature_range}")
    rng = np.random.default_rng(seed)
    names = list(ARCHETYPES)
    n_arch = round(n * archetype_share)
    arch_ids = set(rng.permutation(n)[:n_arch].tolist())
    n_unseen = max(1, round(n * unseen_fraction)) if n >= 2 and unseen_fraction > 0 else 0
    unseen_ids = set(rng.permutation(n)[:n_unseen].tolist())
    users, k = [], 0
    for i in range(n):
        temp = float(rng.uniform(lo, hi))
        if i in arch_ids:
            name = names[k % len(names)]
            k += 1
            terms, archetype = _jitter(ARCHETYPES[name], rng), name
        else:
            terms, archetype = _random_terms(rng), None
        users.append(User(i, terms, temp, archetype, "unseen" if i in unseen_ids else "train"))
    return users


def split_users(users: Sequence[User]) -> tuple[list[User], list[User]]:
    """(training users, unseen users) by each user's ``split``."""
    return [u for u in users if u.split == "train"], [u for u in users if u.split == "unseen"]


# ---------------------------------------------------------------------------------------------- files


@dataclass
class UsersFile:
    """What a users file holds: the users and how they were made."""

    users: list[User]
    meta: dict = field(default_factory=dict)


def save_users(users: Sequence[User], path: str | Path, meta: Mapping | None = None,
               overwrite: bool = False) -> Path:
    """Write users to a JSON file (atomic; refuses to replace unless ``overwrite``)."""
    from pixpref.io_utils import atomic_path, check_output_path

    path = check_output_path(path, overwrite)
    doc = {"format": USERS_FORMAT, "version": USERS_VERSION, "features": list(USER_FEATURES),
           "basis": basis_names(), "meta": dict(meta or {}), "users": [u.to_dict() for u in users]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return path


def load_users(path: str | Path) -> UsersFile:
    """Read a users file written by :func:`save_users`."""
    path = Path(path)
    if not path.is_file():
        raise PixprefError(f"users file not found: {path}")
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != USERS_FORMAT:
        raise PixprefError(f"{path} is not a pixpref toy-world users file (format {USERS_FORMAT!r})")
    if doc.get("version") != USERS_VERSION:
        raise PixprefError(f"{path}: users file version {doc.get('version')} unsupported; valid: {USERS_VERSION}")
    if list(doc.get("features", [])) != list(USER_FEATURES):
        raise PixprefError(f"{path} was written for features {doc.get('features')}; this version uses "
                           f"{list(USER_FEATURES)}")
    return UsersFile([User.from_dict(d) for d in doc["users"]], dict(doc.get("meta", {})))
