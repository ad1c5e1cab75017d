"""Personalized preference fine-tuning (PPD stage 2): train the user cross-attention adapter with
Diffusion-DPO, DDIM-InPO or SFT, conditioned on VLM user embeddings.

    # toy world, CPU
    accelerate launch --config_file configs/accelerate/cpu.yaml train/train_ppd.py --config configs/toy/ppd_dpo.yaml
    # SD 1.5 on Pick-a-Pic v2, GPUs
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml train/train_ppd.py --config configs/sd15/ppd_dpo.yaml
    # resume after an interruption
    ... train/train_ppd.py --config ... --resume latest

Order: accelerator + seed -> base model, frozen -> data and few-shot contexts -> user-embedding cache
(the VLM runs once per chunk) -> adapter (+ optional LoRA) -> optimizer -> prepare -> save/load hooks
-> resume -> loop (counting and checkpoints on sync steps) -> final adapter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

# what a run writes into train.output_dir (the user-embedding cache is kept and checked instead)
RUN_OUTPUTS = ("checkpoints", "adapter", "train_log.jsonl", "validation", "logs", "split.json", "config.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (see configs/toy/ppd_dpo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-5 (repeatable)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in train.output_dir (a matching user-embedding "
                        "cache is kept)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    from pixpref.errors import PixprefError

    try:
        return train(args)
    except PixprefError as e:
        print(f"train_ppd: error: {e}", file=sys.stderr)
        return 2


def train(args) -> int:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from pixpref.config import load_config, save_config
    from pixpref.data.fewshot import make_splits
    from pixpref.errors import PixprefError
    from pixpref.models.diffusion import load_pipeline
    from pixpref.personalize.adapter import UserAdapter, UserAdapterConfig
    from pixpref.personalize.conditioning import encode_text, images_to_tensor, to_latents
    from pixpref.personalize.dataset import load_pairs, plan_contexts, sample_batch, step_generator
    from pixpref.personalize.embeddings import UserEmbeddingCache, check_embedding, write_user_encoder_spec
    from pixpref.personalize.losses import get_loss
    from pixpref.personalize.train_config import PPDConfig
    from pixpref.personalize.trainer import PairBatch, PersonalizedUNet, preference_loss
    from pixpref.personalize.user_cache import build_user_cache, check_cache

    cfg = load_config(args.config, PPDConfig, args.overrides)
    tc = cfg.train
    out_dir = Path(tc.output_dir)
    loss_spec = get_loss(tc.loss)
    beta = tc.beta if tc.beta is not None else loss_spec.default_beta

    earlier = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    if earlier and not args.resume and not args.overwrite:
        raise PixprefError(f"{out_dir} holds an earlier run ({', '.join(earlier)}); pass --resume latest to "
                           "continue it, --overwrite to replace it, or choose another train.output_dir")

    # 1. accelerator and seed
    trackers = None if tc.report_to == "none" else tc.report_to
    if trackers is not None:
        import importlib.util

        if importlib.util.find_spec(trackers) is None:
            raise PixprefError(f"train.report_to={trackers} but the {trackers} package is not installed; "
                               f"pip install {trackers}, or set train.report_to to one of: tensorboard, wandb, none")
    accelerator = Accelerator(
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        mixed_precision=tc.mixed_precision,
        log_with=trackers,
        project_config=ProjectConfiguration(
            project_dir=str(out_dir), logging_dir=str(out_dir / "logs"),
            automatic_checkpoint_naming=False,  # checkpoints are named, written and pruned by write_checkpoint
        ),
    )
    set_seed(tc.seed)
    device = accelerator.device
    if accelerator.is_main_process:
        if earlier and not args.resume:
            for name in earlier:
                path = out_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()

    # 2. base model, frozen; the frozen parts are cast to the compute dtype
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    pipe = load_pipeline(cfg.model.base)
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval().to(device)
            if weight_dtype != torch.float32:  # (a float32 .to(dtype=...) only makes diffusers warn)
                module.to(dtype=weight_dtype)
    unet, scheduler = pipe.unet, pipe.scheduler
    timestep_range = (tc.timestep_min, tc.timestep_max or scheduler.config.num_train_timesteps)
    if timestep_range[1] > scheduler.config.num_train_timesteps or timestep_range[0] >= timestep_range[1]:
        raise PixprefError(f"train.timestep_min/max {timestep_range} must lie within the scheduler's "
                           f"{scheduler.config.num_train_timesteps} training timesteps")
    if tc.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers only checkpoints in training mode; no dropout in these UNets is trained

    # 3. data: seen users and kept prompts only (unseen users and held-out prompts are for evaluation);
    #    few-shot contexts from a different chunk of the same user. Images are resized to data.image_size,
    #    else model.resolution, else the pipeline's native size.
    from pixpref.data.pairs import iter_meta

    native = unet.config.sample_size * pipe.vae_scale_factor
    sizes = {k: v for k, v in (("data.image_size", cfg.data.image_size), ("model.resolution", cfg.model.resolution)) if v}
    if len(set(sizes.values())) > 1:
        raise PixprefError(f"data.image_size and model.resolution disagree ({sizes}); set one of them")
    cfg.data.image_size = next(iter(sizes.values()), native)
    metas = list(iter_meta(cfg.data.path, cfg.data.format, cfg.data.tie_policy, cfg.data.batch_rows))
    splits = make_splits(metas, cfg.data.unseen_user_fraction, cfg.data.heldout_prompt_fraction, cfg.data.seed)
    unseen = splits.unseen_user_ids
    seen = sorted({m.user_id for m in metas} - set(unseen))
    arrays, read_stats = load_pairs(cfg.data, users=set(seen), exclude_prompts=splits.heldout_prompt_set)
    plan = plan_contexts(arrays, cfg.data.k, cfg.data.max_chunks_per_user, cfg.data.seed)
    if accelerator.is_main_process:
        write_json(out_dir / "split.json", {"seen_users": seen, "unseen_users": sorted(unseen),
                                            "heldout_prompts": sorted(splits.heldout_prompt_set)})
        accelerator.print(
            f"pairs {len(arrays)} from {len(seen)} seen users ({len(unseen)} unseen users and "
            f"{len(splits.heldout_prompt_set)} prompts held out); "
            f"{len(plan.chunks)} context chunks of k={cfg.data.k}; {plan.rows_without_context} pairs without "
            f"a context chunk; skipped rows: {read_stats.to_dict()['skipped']}"
        )

    # 4. user embeddings, computed once per chunk and cached
    cache_path = Path(cfg.user.cache) if cfg.user.cache else out_dir / "user_embeddings.safetensors"
    accelerator.wait_for_everyone()  # every process looks before any process writes
    if not cache_path.exists():
        build_user_cache(cfg.user, arrays, plan.chunks, cache_path, accelerator=accelerator)
    accelerator.wait_for_everyone()
    cache = check_cache(UserEmbeddingCache.load(cache_path), cfg.user, arrays, plan.chunks, cache_path)
    num_tokens, embed_dim = cache.shape
    chunk_embeddings = torch.stack([cache.get(c.user_id, c.chunk) for c in plan.chunks])  # (n_chunks, T, D)
    check_embedding(chunk_embeddings, where=f"user-embedding cache {cache_path}")

    # 5. adapter (+ optional LoRA on the UNet's attention projections)
    if tc.lora_rank > 0:
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=tc.lora_rank, lora_alpha=tc.lora_rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    adapter = UserAdapter(
        UserAdapterConfig(embed_dim=embed_dim, num_tokens=num_tokens, num_out_tokens=cfg.adapter.num_out_tokens,
                          init=cfg.adapter.init, pos_embed=cfg.adapter.pos_embed),
        unet,
    ).to(device)
    model = PersonalizedUNet(unet, adapter)
    params = [p for p in model.parameters() if p.requires_grad]

    # 6. optimizer; linear warm-up then a constant learning rate, a pure function of the step (resuming
    #    needs no scheduler state; accelerate's wrapped scheduler would also step once per process)
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    def lr_at(step: int) -> float:
        return tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))

    # 7. checkpoints hold only what trains (the adapter, and LoRA weights if any) plus optimizer state
    def save_trainable(inner, directory: Path) -> None:
        inner.adapter.save_pretrained(directory)
        # which user embeddings this adapter reads: samplers rebuild the same encoder from it
        write_user_encoder_spec(directory, cfg.user)
        if tc.lora_rank > 0:
            from peft.utils import get_peft_model_state_dict
            from safetensors.torch import save_file

            from pixpref.io_utils import atomic_path

            with atomic_path(directory / "unet_lora.safetensors") as tmp:
                save_file(get_peft_model_state_dict(inner.unet), str(tmp),
                          metadata={"lora_rank": str(tc.lora_rank), "target_modules": "to_q,to_k,to_v,to_out.0"})

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_trainable(accelerator.unwrap_model(models[0]), Path(output_dir) / "user_adapter")
        weights.clear()

    def load_hook(models, input_dir):
        inner = accelerator.unwrap_model(models.pop())
        loaded = UserAdapter.from_pretrained(Path(input_dir) / "user_adapter", inner.unet)
        inner.adapter.load_state_dict(loaded.state_dict())
        if tc.lora_rank > 0:
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(inner.unet, load_file(str(Path(input_dir) / "user_adapter" / "unet_lora.safetensors")))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    # 8. resume
    global_step = 0
    ckpt_root = out_dir / "checkpoints"
    if args.resume:
        if args.resume == "latest":
            found = [p for p in checkpoint_dirs(ckpt_root) if (p / "step.json").exists()]  # complete ones only
            resume_dir = found[-1] if found else None
        else:
            resume_dir = Path(args.resume)
            if not (resume_dir / "step.json").exists():
                raise PixprefError(f"{resume_dir} is not a complete pixpref checkpoint (no step.json)")
        if resume_dir is not None:
            accelerator.load_state(str(resume_dir))
            global_step = json.loads((resume_dir / "step.json").read_text())["step"]
            if accelerator.is_main_process:
                _truncate_log(out_dir / "train_log.jsonl", global_step)  # drop steps logged after the checkpoint
            accelerator.print(f"resumed from {resume_dir} at step {global_step}")
        else:
            accelerator.print("no checkpoint to resume from; starting at step 0")
    if accelerator.is_main_process:  # a checkpoint being written when the run died is never resumed from
        for stale in ckpt_root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()

    # 9. loop
    if trackers:  # init_trackers/log only act on the main process
        accelerator.init_trackers("pixpref-ppd", config={k: v for k, v in vars(tc).items() if v is not None})
    text_cache: dict[str, tuple[torch.Tensor, dict | None]] = {}

    def text_for(prompts):
        missing = [p for p in dict.fromkeys(prompts) if p not in text_cache]
        if missing:
            emb, added = encode_text(pipe, missing, device)
            for i, p in enumerate(missing):
                text_cache[p] = (emb[i], None if added is None else {k: v[i] for k, v in added.items()})
        emb = torch.stack([text_cache[p][0] for p in prompts])
        added = None if text_cache[prompts[0]][1] is None else {
            k: torch.stack([text_cache[p][1][k] for p in prompts]) for k in text_cache[prompts[0]][1]}
        return emb, added

    log_path = out_dir / "train_log.jsonl"
    nonfinite_in_row, skipped_steps = 0, 0
    t_start = time.time()
    progress = tqdm(total=tc.max_steps, initial=global_step, desc=f"ppd-{tc.loss}", disable=not accelerator.is_local_main_process)
    try:
        while global_step < tc.max_steps:
            lr = lr_at(global_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # one optimizer step = gradient_accumulation_steps micro-batches; the step is skipped (on every
            # process) when any micro-batch's loss or the gradient norm is not finite on any process
            step_finite, loss_sum, grad_norm = True, torch.zeros((), device=device), float("nan")
            for micro in range(tc.gradient_accumulation_steps):
                gen = step_generator(tc.seed, global_step * tc.gradient_accumulation_steps + micro, accelerator.process_index)
                rows, ctx = sample_batch(plan, tc.batch_size, gen)
                with accelerator.accumulate(model):
                    text, added = text_for([arrays.prompts[r] for r in rows])
                    x0_w = to_latents(pipe, images_to_tensor(arrays.chosen[rows]).to(device, weight_dtype))
                    x0_l = to_latents(pipe, images_to_tensor(arrays.rejected[rows]).to(device, weight_dtype))
                    batch = PairBatch(x0_w, x0_l, text, chunk_embeddings[ctx].to(device),
                                      torch.from_numpy(arrays.labels[rows]).to(device), added)
                    with accelerator.autocast():
                        loss, metrics = preference_loss(
                            model, batch, loss_spec, scheduler, gen, beta=beta, user_dropout=tc.user_dropout,
                            inversion_steps=tc.inversion_steps, inversion_eta=tc.inversion_eta,
                            timestep_range=timestep_range, inversion_model=tc.inversion_model,
                        )
                    loss_sum = loss_sum + loss.detach().float()
                    finite = accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min().item() > 0
                    step_finite = step_finite and finite
                    if finite:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if step_finite:
                            # gradients are already reduced, so every process sees the same norm
                            grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
                            step_finite = math.isfinite(grad_norm)
                        if step_finite:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
            global_step += 1
            progress.update(1)
            if step_finite:
                nonfinite_in_row = 0
            else:
                nonfinite_in_row += 1
                skipped_steps += 1
                accelerator.print(f"step {global_step}: non-finite loss or gradient, step skipped "
                                  f"({nonfinite_in_row} in a row, {skipped_steps} in all)")
            mean_loss = float(accelerator.reduce(loss_sum, reduction="mean")) / tc.gradient_accumulation_steps
            if accelerator.is_main_process and (global_step % tc.log_every == 0 or global_step == tc.max_steps
                                                or not step_finite):
                logs = {k: _finite_or_none(float(v)) for k, v in metrics.items()}  # last micro-batch, this process
                logs.update(loss=_finite_or_none(mean_loss), grad_norm=_finite_or_none(grad_norm), lr=lr,
                            step=global_step, wall=time.time() - t_start, skipped=not step_finite,
                            skipped_steps=skipped_steps)
                if logs["loss"] is not None:
                    progress.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs.get('implicit_acc') or float('nan'):.2f}")
                with open(log_path, "a") as f:
                    f.write(json.dumps(logs) + "\n")
                if trackers:
                    accelerator.log({k: v for k, v in logs.items() if isinstance(v, (int, float)) and v is not None},
                                    step=global_step)
            if nonfinite_in_row >= tc.max_nonfinite_steps:
                raise PixprefError(
                    f"aborting at step {global_step}: {nonfinite_in_row} non-finite losses or gradients in a row "
                    f"(train.max_nonfinite_steps={tc.max_nonfinite_steps}); lower train.lr or train.beta, or "
                    "check the data; resume from the last checkpoint with --resume latest"
                )
            if global_step % tc.checkpoint_every == 0 or global_step == tc.max_steps:
                write_checkpoint(accelerator, ckpt_root, global_step, tc.checkpoints_total_limit)
            if tc.validate_every and global_step % tc.validate_every == 0:
                if accelerator.is_main_process:
                    from pixpref.personalize.validation import validation_grid

                    path = validation_grid(accelerator.unwrap_model(model), pipe, arrays, plan, chunk_embeddings,
                                           out_dir / "validation" / f"step_{global_step:06d}.png", tc)
                    accelerator.print(f"step {global_step}: validation grid {path}")
                accelerator.wait_for_everyone()
        progress.close()

        # 10. final adapter
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_trainable(accelerator.unwrap_model(model), out_dir / "adapter")
            accelerator.print(f"saved the adapter to {out_dir / 'adapter'} after {global_step} steps "
                              f"({time.time() - t_start:.0f} s, {skipped_steps} skipped)")
    finally:
        progress.close()
        accelerator.end_training()
    return 0


TMP_PREFIX = ".tmp_"
FAULT_PAUSE_ENV = "PIXPREF_FAULT_CHECKPOINT_PAUSE"  # seconds to hold a half-written checkpoint (tests only)


def write_checkpoint(accelerator, root: Path, step: int, total_limit: int | None) -> Path:
    """Save the training state atomically: into ``root/.tmp_checkpoint_<step>``, then ``step.json`` (the
    completeness marker), then one rename to ``root/checkpoint_<step>``. A kill at any moment leaves either
    the previous checkpoints only or the new one complete. Keeps the newest ``total_limit`` checkpoints."""
    final = root / f"checkpoint_{step}"
    tmp = root / f"{TMP_PREFIX}checkpoint_{step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if os.environ.get(FAULT_PAUSE_ENV):  # fault-injection tests kill the run inside this window
        time.sleep(float(os.environ[FAULT_PAUSE_ENV]))
    if accelerator.is_main_process:
        write_json(tmp / "step.json", {"step": step})
        if final.exists():  # the same step saved before (a resumed run re-reaching it)
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:  # the oldest others go; the one just written always stays
            others = [p for p in checkpoint_dirs(root) if p != final]
            for old in others[: max(0, len(others) + 1 - total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= ``step``."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        from pixpref.io_utils import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in kept))


def checkpoint_dirs(root: Path) -> list[Path]:
    """``checkpoint_<n>`` folders under ``root``, by n (complete or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[-1].isdigit()]
    return sorted(found, key=_ckpt_number)


def _ckpt_number(path: Path) -> int:
    return int(path.name.split("_")[-1])


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: non-finite values are logged as null."""
    return value if math.isfinite(value) else None


def write_json(path: Path, data: dict) -> None:
    from pixpref.io_utils import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data))


if __name__ == "__main__":
    sys.exit(main())
