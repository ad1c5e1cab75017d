"""The model side of the personalization demo: no gradio here (the UI is ``pixpref.demo.app``).

    engine = DemoEngine(DemoConfig())                       # nothing loads until first use
    a, b = engine.taste_pair("a red star", round_index=0)   # two base-model images to choose from
    profile = engine.build_profile([Choice("a red star", a, b, "a"), ...])
    result = engine.generate("a blue circle", profile, user_scale=1.0, seed=0)
    result.base, result.personal                             # (N, H, W, 3) uint8, same seeds
    result.scores_base["overall"], result.scores_personal["personal"]

A :class:`Profile` is what a person's clicks become: the decisive pairs, the adapter's user embedding and
the scorer's user embedding (the two may use different poolings of the same VLM). Profiles save to one
safetensors file (images as uint8 tensors, prompts and the model fingerprint as metadata) and are refused
by a demo running another model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixpref.errors import PixprefError, unknown_name

PICKS = ("a", "b", "none")
PROFILE_FORMAT = "pixpref-profile-v1"
DEFAULT_PROMPTS = [
    "a red star", "a blue circle", "a green square", "a yellow triangle", "a purple cross",
    "a photo of an orange circle", "a cyan star on a plain background", "a drawing of a pink square",
]


@dataclasses.dataclass
class DemoConfig:
    """Settings of ``pixpref demo`` (``configs/demo/*.yaml``)."""

    base: str = "toy"  # diffusion model: "toy", "sd15", "sdxl" or a local pipeline folder
    adapter: str = "dpo"  # "dpo" / "inpo" (shipped toy adapters) or an adapter folder
    scorer: str = "toy"  # "toy" or a scorer folder
    scorer_user_encoder: str = "toy"  # VLM whose default pooling made the scorer's 'personal' embeddings
    rounds: int = 4  # pairwise choices asked for
    num_images: int = 4  # personalized (and base) images per generation
    steps: int = 0  # sampling steps; 0 = the model's default
    guidance_scale: float = -1.0  # < 0 = the model's default
    seed: int = 0
    display_size: int = 192  # pixels per side in the page (toy images are 32x32, shown upscaled)
    max_upload_mb: float = 8.0  # larger uploads are refused
    max_upload_pixels: int = 4096 * 4096  # decoded size limit (decompression bombs)
    concurrency_limit: int = 2  # generations running at once; the rest queue
    max_queue: int = 64
    prompts: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_PROMPTS))

    def __post_init__(self):
        checks = {
            "rounds": 1 <= self.rounds <= 8,
            "num_images": 1 <= self.num_images <= 16,
            "steps": self.steps >= 0,
            "display_size": 32 <= self.display_size <= 1024,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_upload_pixels": self.max_upload_pixels > 0,
            "concurrency_limit": self.concurrency_limit >= 1,
            "max_queue": self.max_queue >= 1,
            "prompts": len(self.prompts) > 0 and all(isinstance(p, str) and p.strip() for p in self.prompts),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise PixprefError(f"invalid demo setting(s): {', '.join(bad)} (see configs/demo/toy.yaml)")


@dataclasses.dataclass
class Choice:
    """One round: the person saw images ``a`` and ``b`` for ``prompt`` and picked ``pick`` (a, b or none)."""

    prompt: str
    a: np.ndarray
    b: np.ndarray
    pick: str

    def __post_init__(self):
        if self.pick not in PICKS:
            raise unknown_name("choice", self.pick, PICKS)


@dataclasses.dataclass
class Profile:
    """A person's taste: decisive pairs (prompt, chosen, rejected) and their embeddings."""

    pairs: list[tuple[str, np.ndarray, np.ndarray]]
    user_embedding: Any  # torch (T, D) for the adapter
    scorer_embedding: Any  # torch (T', D') for the scorer's 'personal' dimension
    model: str  # fingerprint of the model it was made for
    name: str = "profile"


@dataclasses.dataclass
class GenerationResult:
    prompt: str
    seed: int
    user_scale: float
    base: np.ndarray  # (N, H, W, 3) uint8
    personal: np.ndarray | None  # (N, H, W, 3) uint8, None without a profile
    scores_base: dict[str, list[float]]
    scores_personal: dict[str, list[float]]


def _as_uint8(image: Any, where: str) -> np.ndarray:
    from pixpref.data.images import array_to_rgb

    return array_to_rgb(np.asarray(image), where=where)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


class DemoEngine:
    """Loads the personalized sampler, the user encoders and the scorer once (lazily, thread-safe)."""

    def __init__(self, config: DemoConfig | None = None):
        self.config = config or DemoConfig()
        self._lock = threading.Lock()
        self._sampler = None
        self._scorer = None
        self._scorer_encoder = None
        self._fingerprint: str | None = None

    # ----- lazy loading -----------------------------------------------------------------------------

    def load(self) -> DemoEngine:
        """Load every model now (the app calls it on the first request)."""
        with self._lock:
            if self._sampler is None:
                from pixpref.personalize.pipeline import PersonalizedSampler

                self._sampler = PersonalizedSampler.from_pretrained(self.config.base, self.config.adapter)
            if self._scorer is None:
                from pixpref.scorer.api import PreferenceScorer

                self._scorer = PreferenceScorer.from_pretrained(self.config.scorer)
        return self

    @property
    def sampler(self):
        return self.load()._sampler

    @property
    def scorer(self):
        return self.load()._scorer

    @property
    def fingerprint(self) -> str:
        """Identifies the base model + adapter + encoders a profile was made with."""
        if self._fingerprint is None:
            from pixpref.personalize.pipeline import adapter_dir

            cfg = self.config
            folder = adapter_dir(cfg.adapter)
            weights = sorted(folder.glob("*.safetensors"))
            digest = ",".join(_file_digest(p) for p in weights) or "none"
            spec = self.sampler.encoder_spec or {}
            self._fingerprint = (f"base={cfg.base};adapter={digest};vlm={spec.get('vlm')}:{spec.get('pooling')}:{spec.get('head', '')};"
                                 f"scorer_vlm={cfg.scorer_user_encoder}")
        return self._fingerprint

    def _scorer_user_encoder(self):
        with self._lock:
            if self._scorer_encoder is None:
                from pixpref.personalize.user_encoder import UserEncoder, config_from_spec

                config = config_from_spec(self.scorer_user_spec())
                self._scorer_encoder = UserEncoder.from_pretrained(config.vlm, config)
        return self._scorer_encoder

    def scorer_user_spec(self) -> dict[str, Any]:
        """How the scorer's 'personal' dimension embeds users: its folder's user_encoder.json, else the
        configured VLM with the default pooling."""
        from pixpref.scorer.api import user_encoder_spec

        return user_encoder_spec(self.config.scorer,
                                 {"vlm": self.config.scorer_user_encoder, "pooling": "last_token_all_layers"})

    def _settings(self) -> dict[str, Any]:
        cfg = self.config
        return {"num_inference_steps": cfg.steps or None,
                "guidance_scale": None if cfg.guidance_scale < 0 else cfg.guidance_scale}

    # ----- the three steps of the demo -------------------------------------------------------------

    @staticmethod
    def check_prompt(prompt: Any) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PixprefError("please type a prompt (it is empty)")
        if len(prompt) > 300:
            raise PixprefError(f"the prompt is {len(prompt)} characters long; the limit is 300")
        return prompt.strip()

    def suggest_prompt(self, round_index: int) -> str:
        return self.config.prompts[round_index % len(self.config.prompts)]

    def taste_pair(self, prompt: str, round_index: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Two base-model images for ``prompt`` (different noise), to choose between."""
        prompt = self.check_prompt(prompt)
        seed = self.config.seed if seed is None else int(seed)
        images = self.sampler(prompt, user=None, num_images=2, seed=seed * 1000 + 7 * round_index + 1,
                              **self._settings())
        pair = _to_uint8(images)
        return pair[0], pair[1]

    def build_profile(self, choices: Sequence[Choice], name: str = "profile") -> Profile:
        """Decisive choices -> a :class:`Profile` (ties, "none", are dropped)."""
        if len(choices) == 0:
            raise PixprefError("no choices yet: pick between at least one pair of images")
        pairs = []
        for i, c in enumerate(choices):
            if c.pick == "none":
                continue
            a, b = _as_uint8(c.a, f"choice {i} image A"), _as_uint8(c.b, f"choice {i} image B")
            pairs.append((self.check_prompt(c.prompt), a, b) if c.pick == "a" else (c.prompt.strip(), b, a))
        if not pairs:
            raise PixprefError(f"all {len(choices)} choices were 'no preference'; prefer one image at least once")
        return self.profile_from_pairs(pairs, name)

    def profile_from_pairs(self, pairs: Sequence[tuple[str, Any, Any]], name: str = "profile") -> Profile:
        """(prompt, chosen, rejected) examples (arrays, PIL images or paths) -> :class:`Profile`."""
        from pixpref.data.images import load_rgb

        if len(pairs) == 0:
            raise PixprefError("a profile needs at least one (prompt, chosen, rejected) example; got zero")
        clean = []
        for i, (prompt, chosen, rejected) in enumerate(pairs):
            prompt = self.check_prompt(prompt)
            kw = {"max_pixels": self.config.max_upload_pixels}
            clean.append((prompt, load_rgb(chosen, where=f"example {i} chosen image", **kw),
                          load_rgb(rejected, where=f"example {i} rejected image", **kw)))
        user = self.sampler.embed_user(clean)
        scorer_user = self._scorer_user_encoder().encode_one(clean)
        return Profile(clean, user, scorer_user, self.fingerprint, name)

    @property
    def default_user_scale(self) -> float:
        """The personalization strength the adapter was tuned at (its saved ``scale``); loads no model."""
        if self._sampler is not None:
            return float(self._sampler.adapter.config.scale)
        from pixpref.personalize.adapter import read_adapter_config
        from pixpref.personalize.pipeline import adapter_dir

        return float(read_adapter_config(adapter_dir(self.config.adapter)).scale)

    def generate(self, prompt: str, profile: Profile | None, user_scale: float | None = None,
                 seed: int | None = None, num_images: int | None = None) -> GenerationResult:
        """Base images, and personalized ones when there is a profile, for the same seeds; scored.

        ``user_scale`` None: :attr:`default_user_scale`."""
        prompt = self.check_prompt(prompt)
        user_scale = self.default_user_scale if user_scale is None else user_scale
        seed = self.config.seed if seed is None else int(seed)
        n = num_images or self.config.num_images
        if not np.isfinite(user_scale) or not -1.0 <= user_scale <= 3.0:
            raise PixprefError(f"personalization strength must be between -1 and 3, got {user_scale}")
        if profile is not None:
            self.check_profile(profile)
        base = _to_uint8(self.sampler(prompt, user=None, num_images=n, seed=seed, **self._settings()))
        personal = None
        if profile is not None:
            personal = _to_uint8(self.sampler(prompt, user=profile.user_embedding, user_scale=user_scale,
                                              num_images=n, seed=seed, **self._settings()))
        user = None if profile is None else profile.scorer_embedding
        scores_base = self.score(base, prompt, user)
        scores_personal = {} if personal is None else self.score(personal, prompt, user)
        return GenerationResult(prompt, seed, float(user_scale), base, personal, scores_base, scores_personal)

    def score(self, images: np.ndarray, prompt: str, user: Any = None) -> dict[str, list[float]]:
        dims = [d for d in self.scorer.dimensions if d != "personal" or user is not None]
        scores = self.scorer.score(images, prompt, dimensions=dims, user=user, progress=False)
        return {d: [round(float(x), 4) for x in v] for d, v in scores.items()}

    # ----- profiles --------------------------------------------------------------------------------

    def check_profile(self, profile: Profile) -> Profile:
        if profile.model != self.fingerprint:
            raise PixprefError("this profile was made with another model; make a new one here "
                               f"(profile: {profile.model}; this demo: {self.fingerprint})")
        return profile

    def interpolate(self, a: Profile, b: Profile, alpha: float) -> Profile:
        """A profile between ``a`` (alpha=0) and ``b`` (alpha=1)."""
        from pixpref.personalize.pipeline import interpolate_users

        self.check_profile(a)
        self.check_profile(b)
        return Profile([], interpolate_users(a.user_embedding, b.user_embedding, alpha),
                       interpolate_users(a.scorer_embedding, b.scorer_embedding, alpha), a.model,
                       f"{a.name} -> {b.name} @ {alpha:.2f}")

    def save_profile(self, profile: Profile, path: str | Path) -> Path:
        """One safetensors file: both embeddings, the pairs' images, prompts and model as metadata."""
        import torch
        from safetensors.torch import save_file

        from pixpref.io_utils import atomic_path

        tensors = {"user_embedding": profile.user_embedding.float().contiguous(),
                   "scorer_embedding": profile.scorer_embedding.float().contiguous()}
        for i, (_, chosen, rejected) in enumerate(profile.pairs):
            tensors[f"pair_{i}_chosen"] = torch.from_numpy(np.array(chosen, dtype=np.uint8))
            tensors[f"pair_{i}_rejected"] = torch.from_numpy(np.array(rejected, dtype=np.uint8))
        meta = {"format": PROFILE_FORMAT, "model": profile.model, "name": profile.name,
                "prompts": json.dumps([p for p, _, _ in profile.pairs])}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    def load_profile(self, path: str | Path) -> Profile:
        """Read a profile file; refuse files that are not profiles or were made with another model."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        from pixpref.personalize.embeddings import check_embedding

        path = Path(path)
        if not path.is_file():
            raise PixprefError(f"profile file not found: {path.name}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != PROFILE_FORMAT:
                    raise PixprefError(f"{path.name} is not a pixpref demo profile (format {meta.get('format')!r})")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise PixprefError(f"{path.name} is not a readable profile file ({e})") from None
        try:
            prompts = json.loads(meta.get("prompts", "[]"))
            pairs = [(p, tensors[f"pair_{i}_chosen"].numpy(), tensors[f"pair_{i}_rejected"].numpy())
                     for i, p in enumerate(prompts)]
            user = check_embedding(tensors["user_embedding"].float(), where=f"{path.name} user_embedding")
            scorer_user = check_embedding(tensors["scorer_embedding"].float(), where=f"{path.name} scorer_embedding")
        except (KeyError, ValueError) as e:
            raise PixprefError(f"{path.name} is an incomplete profile file (missing {e})") from None
        profile = Profile(pairs, user, scorer_user, meta.get("model", ""), meta.get("name", path.stem))
        self.check_profile(profile)
        self.sampler.check_user(user)
        return profile


def _to_uint8(images: Any) -> np.ndarray:
    """Pipeline output (N, H, W, 3) float in [0, 1] -> uint8."""
    arr = np.asarray(images, dtype=np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
