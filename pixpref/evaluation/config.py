"""What an evaluation report measures: :class:`EvalConfig`, loaded from ``configs/eval/*.yaml``.

    cfg = load_config("configs/eval/toy.yaml", EvalConfig, overrides=["users=10"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pixpref.errors import PixprefError, unknown_name
from pixpref.personalize.names import POOLINGS, USER_GUIDANCE_MODES

# prompts whose colour and shape the oracle can check (prompt adherence)
DEFAULT_PROMPTS = ["a green circle", "an image of a orange square", "a photo of a cyan star", "a magenta triangle",
                   "a picture of one blue cross", "a yellow star"]

INTERPOLATION_PAIRINGS = ("opposed", "index")


@dataclass
class EvalConfig:
    """One evaluation report of personalized adapters on the toy world's unseen users."""

    data: str = ""  # toy data folder from `pixpref toyworld make-pairs` (users.json, unseen-*.parquet)
    base: str = "toy"  # base text-to-image model: name or folder
    # adapter name -> "dpo"/"inpo" (shipped) or a folder with adapter_config.json
    adapters: dict[str, str] = field(default_factory=lambda: {"dpo": "dpo", "inpo": "inpo"})
    primary: str = ""  # adapter for the few-shot and interpolation curves (default: the first)
    scorer: str = "toy"  # preference scorer: "toy" or a folder; "" skips the scorer judge
    scorer_vlm: str = "toy"  # VLM whose embeddings the scorer's personal dimension reads
    scorer_pooling: str = "last_token_all_layers"  # ... and their pooling; a scorer folder with user_encoder.json overrides both
    users: int = 20  # unseen users evaluated (the first ones in users.json, after user_offset)
    user_offset: int = 0  # skip this many unseen users: tune a setting on users 20-39, report users 0-19
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    images_per_prompt: int = 4  # initial noises per prompt, shared by base and personalized images
    steps: int = 20  # sampler steps
    guidance: float = 2.0  # classifier-free guidance scale
    user_scale: float | None = None  # personalization strength of the user branch; None: each adapter's saved scale
    user_guidance: str = "text"  # "joint": guidance amplifies text and user; "text" (default): text only
    user_start: float | None = None  # the user branch runs from this fraction of the denoising steps ...
    user_end: float | None = None  # ... up to this one (UserAdapter.step_window); None: each adapter's own
    noise_seed: int = 1234  # seed of the initial noises (prompt i uses noise_seed + i)
    k: int = 4  # examples per user for the headline win rates
    few_shot_k: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # the few-shot curve's k values
    example_seed: int = 0  # which of a user's pairs are the k examples
    # VLM users: read the k examples in prompts of this many pairs and average the chunks' embeddings
    # (0: all k in one prompt; 4 keeps k = 8 inside the 4-pair prompts the adapters were trained on)
    user_chunk_pairs: int = 0
    # control for the primary adapter: each user's images made from another user's embedding (user i gets
    # user (i + U // 2) mod U's), judged by the true user: what personalization adds over a population shift
    mismatched_control: bool = True
    interpolation_pairs: int = 2  # user pairs with an interpolation curve
    # which users are paired: "opposed" (default) greedily pairs the users whose utilities of the base model's
    # images are most negatively correlated (personalize.evaluate.opposed_pairs); "index" pairs users 0-1, 2-3, ...
    interpolation_pairing: str = "opposed"
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    grid_users: int = 4  # users with a base-vs-personalized image grid
    train_logs: dict[str, str] = field(default_factory=dict)  # name -> train_log.jsonl of train/train_ppd.py
    # win rate vs step: name -> a train/train_ppd.py output_dir whose checkpoints/ are each judged (oracle)
    checkpoint_runs: dict[str, str] = field(default_factory=dict)
    checkpoint_steps: list[int] = field(default_factory=list)  # judge only these steps (empty: every kept one)
    checkpoint_users: int = 10  # unseen users judging each checkpoint (the first ones)
    checkpoint_images_per_prompt: int = 2  # noises per prompt for each checkpoint
    win_rate_target: float = 0.6  # steps (and wall-clock) each checkpoint run needs to reach this win rate
    device: str = "cpu"
    out: str = ""  # output folder (the CLI's --out wins)

    def __post_init__(self) -> None:
        positive = {"users": self.users, "images_per_prompt": self.images_per_prompt, "steps": self.steps,
                    "k": self.k, "checkpoint_users": self.checkpoint_users,
                    "checkpoint_images_per_prompt": self.checkpoint_images_per_prompt}
        for name, value in positive.items():
            if value < 1:
                raise PixprefError(f"{name} must be >= 1, got {value}")
        for name, value in {"interpolation_pairs": self.interpolation_pairs, "grid_users": self.grid_users}.items():
            if value < 0:
                raise PixprefError(f"{name} must be >= 0, got {value}")
        if self.guidance < 0:
            raise PixprefError(f"guidance must be >= 0, got {self.guidance}")
        if self.user_chunk_pairs < 0:
            raise PixprefError(f"user_chunk_pairs must be >= 0 (0: one prompt per user), got {self.user_chunk_pairs}")
        if any(k < 1 for k in self.few_shot_k) or len(set(self.few_shot_k)) != len(self.few_shot_k):
            raise PixprefError(f"few_shot_k must hold distinct values >= 1, got {self.few_shot_k}")
        if 2 * self.interpolation_pairs > self.users:
            raise PixprefError(f"interpolation_pairs={self.interpolation_pairs} needs {2 * self.interpolation_pairs} "
                               f"users, but users={self.users}")
        if self.interpolation_pairing not in INTERPOLATION_PAIRINGS:
            raise unknown_name("interpolation_pairing", self.interpolation_pairing, INTERPOLATION_PAIRINGS)
        if any(not 0.0 <= a <= 1.0 for a in self.alphas) or (self.interpolation_pairs and not self.alphas):
            raise PixprefError(f"alphas must be weights in [0, 1], got {self.alphas}")
        if not self.prompts:
            raise PixprefError("prompts is empty; give at least one toy-world prompt such as 'a red circle'")
        from pixpref.toyworld.oracle import parse_prompt

        for prompt in self.prompts:
            try:
                parse_prompt(prompt)  # the oracle must be able to check the prompt's colour and shape
            except PixprefError as e:
                raise PixprefError(f"prompts: {prompt!r}: {e}") from None
        if not self.adapters:
            raise PixprefError("adapters is empty; name at least one, e.g. {dpo: dpo}")
        if not 0.0 < self.win_rate_target < 1.0:
            raise PixprefError(f"win_rate_target must be in (0, 1), got {self.win_rate_target}")
        for section, mapping in (("adapters", self.adapters), ("train_logs", self.train_logs),
                                 ("checkpoint_runs", self.checkpoint_runs)):
            for name, value in mapping.items():
                if not isinstance(value, str) or not value:
                    raise PixprefError(f"{section}.{name}: expected a name or path, got {value!r}")
        if self.primary and self.primary not in self.adapters:
            raise unknown_name("primary adapter", self.primary, self.adapters)
        if self.scorer_pooling not in POOLINGS:
            raise unknown_name("scorer_pooling", self.scorer_pooling, POOLINGS)
        if self.user_guidance not in USER_GUIDANCE_MODES:
            raise unknown_name("user_guidance", self.user_guidance, USER_GUIDANCE_MODES)
        if self.user_offset < 0:
            raise PixprefError(f"user_offset must be >= 0, got {self.user_offset}")
        if self.user_scale is not None and not math.isfinite(self.user_scale):
            raise PixprefError(f"user_scale must be finite, got {self.user_scale}")
        start = 0.0 if self.user_start is None else self.user_start
        end = 1.0 if self.user_end is None else self.user_end
        if not 0.0 <= start < end <= 1.0:
            raise PixprefError(f"need 0 <= user_start < user_end <= 1, got {self.user_start} and {self.user_end}")

    @property
    def primary_adapter(self) -> str:
        return self.primary or next(iter(self.adapters))

    def check_data(self) -> Path:
        """The data folder, after checking it holds users.json and unseen-*.parquet."""
        if not self.data:
            raise PixprefError("data is not set; pass --set data=DIR (a folder from `pixpref toyworld make-pairs`)")
        folder = Path(self.data)
        if not (folder / "users.json").is_file():
            raise PixprefError(f"data folder {folder} has no users.json; make one with `pixpref toyworld make-pairs`")
        if not sorted(folder.glob("unseen-*.parquet")):
            raise PixprefError(f"data folder {folder} has no unseen-*.parquet (no unseen users' pairs)")
        return folder


def resolve_adapter(value: str) -> Path:
    """A shipped adapter name ("dpo", "inpo") or an adapter folder -> the folder."""
    from pixpref.personalize.pipeline import SHIPPED_ADAPTERS, shipped_adapter_dir

    if value in SHIPPED_ADAPTERS:
        return shipped_adapter_dir(value)
    folder = Path(value)
    if not (folder / "adapter_config.json").is_file():
        raise unknown_name("adapter", value, [*SHIPPED_ADAPTERS, "<folder with adapter_config.json>"])
    return folder
