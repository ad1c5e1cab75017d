"""Configuration of personalized preference fine-tuning (``train/train_ppd.py``), as YAML sections.

    model:   which base pipeline, which resolution
    user:    where user embeddings come from (the VLM, or the toy world's true utility weights)
    adapter: shape of the user cross-attention adapter
    data:    preference pairs (see :class:`pixpref.data.pairs.DataConfig`)
    train:   loss, optimisation, checkpointing, logging
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pixpref.data.pairs import DataConfig
from pixpref.errors import PixprefError, unknown_name
from pixpref.personalize.losses import LOSSES

USER_SOURCES = ("vlm", "oracle", "oracle_pairs", "oracle_posterior")
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass
class ModelSection:
    """base: "toy" (shipped), a registered name ("sd15", "sdxl") or a local pipeline folder."""

    base: str = "toy"
    resolution: int | None = None  # None: the UNet's sample_size x the VAE factor


@dataclass
class UserSection:
    """source: "vlm" (PPD: the VLM reads k pairs), or in the toy world only "oracle" (the user's true
    utility weights, the upper bound) or "oracle_pairs" (the pixel oracle's reading of the same k pairs the
    VLM sees: what a perfect perception of the examples could tell) or "oracle_posterior" (the Bayes posterior
    mean of the training users' weights given the pixel oracle's reading of the k pairs: perfect perception plus
    the population prior; a training user's own weights are left out of its prior). cache: where per-chunk
    embeddings are written/read."""

    source: Literal["vlm", "oracle", "oracle_pairs", "oracle_posterior"] = "vlm"
    vlm: str = "toy"
    pooling: Literal[
        "last_token_all_layers", "last_token_last_layer", "mean_last_layer", "image_contrast_all_layers",
        "preference_head",
    ] = "last_token_all_layers"
    head: str = "toy"  # pooling=preference_head: the preference head (shipped name or folder)
    generate_tokens: int = 0
    users_file: str = ""  # toy world users.json (needed for source=oracle and oracle_posterior)
    cache: str = ""  # default: <output_dir>/user_embeddings.safetensors
    encode_batch_size: int = 8

    def __post_init__(self):
        if self.source not in USER_SOURCES:
            raise unknown_name("user source", self.source, USER_SOURCES)


@dataclass
class AdapterSection:
    num_out_tokens: int | None = None
    init: Literal["zero", "copy"] = "zero"
    pos_embed: bool = True


@dataclass
class TrainSection:
    loss: str = "dpo"
    beta: float | None = None  # None: the loss's default
    lr: float = 1e-4
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_steps: int = 20
    max_steps: int = 1000
    batch_size: int = 16  # pairs per process per micro-step
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    lora_rank: int = 0  # >0: also train LoRA on the UNet's attention projections (peft)
    user_dropout: float = 0.1
    inversion_steps: int = 10
    inversion_eta: float = 0.1
    inversion_model: str = "policy"  # InPO's inversion: "policy" (the paper) or "reference" (base model)
    timestep_min: int = 0
    timestep_max: int | None = None
    seed: int = 0
    output_dir: str = "runs/ppd"
    checkpoint_every: int = 200
    checkpoints_total_limit: int = 3
    log_every: int = 10
    validate_every: int = 0  # 0: no validation grids
    validation_users: int = 4
    validation_steps: int = 20  # sampler steps for validation images
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    max_nonfinite_steps: int = 5  # abort after this many non-finite losses in a row

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise unknown_name("preference loss", self.loss, LOSSES)
        if self.mixed_precision not in MIXED_PRECISION:
            raise unknown_name("mixed precision", self.mixed_precision, MIXED_PRECISION)
        if self.report_to not in REPORT_TO:
            raise unknown_name("tracker", self.report_to, REPORT_TO)
        positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every",
                    "log_every", "inversion_steps", "checkpoints_total_limit", "max_nonfinite_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise PixprefError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.beta is not None and not self.beta > 0:
            raise PixprefError(f"train.beta must be > 0, got {self.beta}")
        if not self.lr > 0:
            raise PixprefError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.user_dropout <= 1:
            raise PixprefError(f"train.user_dropout must be in [0, 1], got {self.user_dropout}")
        if self.lora_rank < 0 or self.warmup_steps < 0 or self.validate_every < 0:
            raise PixprefError("train.lora_rank, warmup_steps and validate_every must be >= 0")
        if not self.max_grad_norm > 0:
            raise PixprefError(f"train.max_grad_norm must be > 0, got {self.max_grad_norm}")
        from pixpref.personalize.trainer import INVERSION_MODELS

        if self.inversion_model not in INVERSION_MODELS:
            raise unknown_name("train.inversion_model", self.inversion_model, INVERSION_MODELS)
        if not 0 <= self.inversion_eta <= 1:
            raise PixprefError(f"train.inversion_eta must be in [0, 1], got {self.inversion_eta}")
        if self.timestep_min < 0 or (self.timestep_max is not None and self.timestep_max <= self.timestep_min):
            raise PixprefError(
                f"train.timestep_min ({self.timestep_min}) must be >= 0 and below train.timestep_max "
                f"({self.timestep_max}; null = the scheduler's num_train_timesteps)"
            )
        if self.validate_every and (self.validation_users < 1 or self.validation_steps < 1):
            raise PixprefError("train.validation_users and train.validation_steps must be >= 1")


@dataclass
class PPDConfig:
    model: ModelSection = field(default_factory=ModelSection)
    user: UserSection = field(default_factory=UserSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
