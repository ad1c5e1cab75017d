"""Preference head: a user's few choices, read pair by pair by the VLM, become a posterior over learned
taste prototypes (a latent-class Bradley-Terry model) whose mean is the user token.

The mean contrast of k pairs (``pooling="image_contrast_all_layers"``) throws away which pair said what,
and a linear read-out of it cannot use the population prior. The head keeps each pair's evidence:

    e_i   = g(reading(chosen_i, rejected_i)) - g(reading(rejected_i, chosen_i))      # (E,), antisymmetric
    log p(m | pairs) = sum_i log sigmoid(p_m . e_i) + const                          # M prototypes p_m
    user  = sum_m p(m | pairs) p_m                                                   # (1, E) user token

``reading`` is the VLM's per-layer image contrast of a one-pair prompt (the user encoder's prompt with one
example); swapping the two images and subtracting makes the evidence flip sign exactly with the choice.
Trained on many users' pairs by predicting each user's held-out choices, ``P(a > b) = sigmoid(user . e(a, b))``
(no labels beyond the choices, so it trains on Pick-a-Pic as on the toy world): with a uniform prior over M
prototypes this is the posterior predictive of a mixture of Bradley-Terry users, which the toy world's
Bayes posterior (``user.source: oracle_posterior``) is the ceiling of.

    head = PreferenceHead.from_pretrained("toy")
    user = head(head.evidence(fwd, swapped), mask)       # (B, 1, E)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from pixpref.errors import PixprefError, unknown_name

CONFIG_NAME = "preference_head.json"
WEIGHTS_NAME = "preference_head.safetensors"
SHIPPED_HEADS = {"toy": Path(__file__).resolve().parents[1] / "pretrained" / "toy" / "preference_head"}


@dataclass
class PreferenceHeadConfig:
    reading_dim: int  # flattened per-pair reading: (VLM layers + 1) * hidden size
    evidence_dim: int = 32  # E: width of the evidence and of the user token
    num_prototypes: int = 32  # M
    hidden_dim: int = 0  # 0: g is linear; > 0: one hidden GELU layer
    input_dropout: float = 0.0
    vlm: str = "toy"  # the VLM whose readings it was trained on (informational)

    def __post_init__(self):
        for name in ("reading_dim", "evidence_dim", "num_prototypes"):
            if int(getattr(self, name)) < 1:
                raise PixprefError(f"preference head {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim < 0 or not 0.0 <= self.input_dropout < 1.0:
            raise PixprefError(f"preference head: hidden_dim must be >= 0 and input_dropout in [0, 1), got "
                               f"{self.hidden_dim} and {self.input_dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> PreferenceHeadConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise PixprefError(f"unknown preference head config keys {unknown}; valid: {sorted(valid)}")
        return cls(**d)


class PreferenceHead(nn.Module):
    """Per-pair evidence -> posterior over taste prototypes -> one user token."""

    def __init__(self, config: PreferenceHeadConfig):
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("reading_mean", torch.zeros(c.reading_dim))
        self.register_buffer("reading_std", torch.ones(c.reading_dim))
        layers: list[nn.Module] = [nn.Dropout(c.input_dropout)]
        if c.hidden_dim:
            layers += [nn.Linear(c.reading_dim, c.hidden_dim), nn.GELU(), nn.Linear(c.hidden_dim, c.evidence_dim)]
        else:
            layers += [nn.Linear(c.reading_dim, c.evidence_dim)]
        self.evidence_net = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.randn(c.num_prototypes, c.evidence_dim) * 0.3)

    def set_normalization(self, readings: torch.Tensor) -> None:
        """Standardize readings with the mean / std of ``readings`` (N, reading_dim) (training pairs)."""
        flat = readings.reshape(-1, self.config.reading_dim).float()
        self.reading_mean.copy_(flat.mean(0))
        self.reading_std.copy_(flat.std(0).clamp_min(1e-4))

    def _g(self, readings: torch.Tensor) -> torch.Tensor:
        flat = readings.reshape(*readings.shape[:-2], -1) if readings.shape[-1] != self.config.reading_dim else readings
        if flat.shape[-1] != self.config.reading_dim:
            raise PixprefError(f"preference head expects readings of width {self.config.reading_dim} "
                               f"(VLM layers + 1 times hidden size), got {tuple(readings.shape)}")
        return self.evidence_net((flat.float() - self.reading_mean) / self.reading_std)

    def evidence(self, forward: torch.Tensor, swapped: torch.Tensor) -> torch.Tensor:
        """Readings of each pair as shown (chosen first) and swapped, (..., L+1, D) or (..., reading_dim)
        -> (..., E); exactly antisymmetric in the swap."""
        return self._g(forward) - self._g(swapped)

    def posterior(self, evidence: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, E) evidence, (B, K) mask of real pairs -> (B, M) posterior over prototypes."""
        loglik = nn.functional.logsigmoid(evidence @ self.prototypes.T)  # (B, K, M)
        if mask is not None:
            loglik = loglik * mask[..., None].to(loglik.dtype)
        return torch.softmax(loglik.sum(1), dim=-1)

    def forward(self, evidence: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, E) evidence -> (B, 1, E) user tokens (the posterior-mean prototype)."""
        if evidence.ndim != 3 or evidence.shape[-1] != self.config.evidence_dim:
            raise PixprefError(f"preference head expects (B, K, {self.config.evidence_dim}) evidence, "
                               f"got {tuple(evidence.shape)}")
        return (self.posterior(evidence, mask) @ self.prototypes)[:, None]

    @staticmethod
    def choice_logits(user: torch.Tensor, query_evidence: torch.Tensor) -> torch.Tensor:
        """(B, 1, E) users, (B, Q, E) evidence of their held-out pairs -> (B, Q) logits of "chosen wins"."""
        return (query_evidence * user).sum(-1)

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        from pixpref.io_utils import atomic_path

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        with atomic_path(out / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(asdict(self.config), indent=1) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "toy") -> PreferenceHead:
        from safetensors.torch import load_file

        folder = resolve_head_path(name_or_path)
        try:
            config = PreferenceHeadConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        except json.JSONDecodeError as e:
            raise PixprefError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from None
        head = cls(config)
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
        missing, unexpected = head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PixprefError(f"{folder / WEIGHTS_NAME} does not match its config: missing {missing}, "
                               f"unexpected {unexpected}")
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise PixprefError(f"{folder / WEIGHTS_NAME} holds NaN/inf weights")
        return head.eval()


def resolve_head_path(name_or_path: str | Path) -> Path:
    """'toy' (shipped) or a folder written by :meth:`PreferenceHead.save_pretrained`."""
    key = str(name_or_path)
    folder = SHIPPED_HEADS.get(key, Path(key).expanduser())
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        if key in SHIPPED_HEADS:
            raise PixprefError(f"the shipped {key!r} preference head is missing at {folder}; retrain it with "
                               "`python train/train_preference_head.py --config configs/toy/preference_head.yaml`")
        raise unknown_name(f"preference head (a shipped name or a folder with {CONFIG_NAME} and {WEIGHTS_NAME})",
                           key, SHIPPED_HEADS)
    return folder


def head_fingerprint(name_or_path: str | Path) -> str:
    """sha256 (16 hex digits) of a head's weights: a cache made by another head under the same name is stale."""
    import hashlib

    return hashlib.sha256((resolve_head_path(name_or_path) / WEIGHTS_NAME).read_bytes()).hexdigest()[:16]


def group_rows(users: list[str]) -> dict[str, torch.Tensor]:
    """user id -> the rows of that user's pairs, in order."""
    by: dict[str, list[int]] = {}
    for i, u in enumerate(users):
        by.setdefault(str(u), []).append(i)
    return {u: torch.tensor(rows) for u, rows in by.items()}


def sample_episodes(by_user: dict[str, torch.Tensor], batch: int, max_context: int, queries: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` episodes: a random user, k ~ U{1..max_context} context pairs and ``queries`` other pairs of
    the same user (the context never holds a query). -> context rows (B, max_context), context mask (B,
    max_context), query rows (B, queries). Users with fewer than max_context + queries pairs are skipped."""
    users = [u for u, rows in by_user.items() if len(rows) >= max_context + queries]
    if not users:
        raise PixprefError(f"no user has {max_context + queries} pairs (max_context + queries); lower them")
    ctx = torch.zeros(batch, max_context, dtype=torch.long)
    mask = torch.zeros(batch, max_context)
    qry = torch.zeros(batch, queries, dtype=torch.long)
    for b in range(batch):
        rows = by_user[users[int(torch.randint(len(users), (1,), generator=generator))]]
        rows = rows[torch.randperm(len(rows), generator=generator)]
        k = int(torch.randint(1, max_context + 1, (1,), generator=generator))
        ctx[b, :k], mask[b, :k], qry[b] = rows[:k], 1.0, rows[k:k + queries]
    return ctx, mask, qry


@torch.no_grad()
def heldout_choice_accuracy(head: PreferenceHead, readings: torch.Tensor, by_user: dict[str, torch.Tensor],
                            k: int) -> float:
    """Each user's first k pairs are the context; the mean over users of the fraction of their other pairs
    whose choice the head predicts (readings: (N, 2, ...) as shown / swapped)."""
    was = head.training
    head.eval()
    evidence = head.evidence(readings[:, 0], readings[:, 1])
    acc = [float((head.choice_logits(head(evidence[rows[:k]][None]), evidence[rows[k:]][None]) > 0).float().mean())
           for rows in by_user.values() if len(rows) > k]
    head.train(was)
    if not acc:
        raise PixprefError(f"no user has more than k={k} pairs")
    return sum(acc) / len(acc)
