"""The ERFT training loop, top to bottom: setup, data, model, optimizer, banks, resume, loop,
checkpoints, export. :func:`train` is the Python API (``train(config) -> exported LoRA path``);
``python -m train`` / ``svi-train`` wrap it (``torchrun --nproc_per_node N -m train ...`` for DDP).

One step (official ``train_svi.py``), tensors NORMALISED latents ``[1, 16, T, h, w]``:
draw a timestep (uniform index of the 1000-step shift-5 schedule) and the injections; add
bank errors (noise: ``E_noi`` of the step's cell; latent: ``E_vid`` of the cell; condition: a
3-frame window of any stored ``E_vid`` added to the first 3 latent frames of y); predict
``v_hat`` from ``concat(x_t, y)``; weighted MSE against ``v = n~ - x0``; AdamW step with grad
clip 1.0; then store the step's one-step errors in the banks (all ranks' errors during the
first ``bank_warmup_iters`` steps; clean steps only with probability 0.1).

Randomness comes from the config ``seed`` only: the LoRA init has its own generator state
derived from it, the global Python / numpy / torch RNGs are seeded from (seed, rank) when
training starts, and each step's draws come from generators of (seed, rank, step). So two runs
with the same settings give the same LoRA, and a resumed run repeats an uninterrupted one
exactly (checkpoints also keep the torch RNG state). Checkpoints: :mod:`train.checkpoint`.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .banks import ErrorBanks, gather_errors
from .cache import (
    CachedSample,
    Encoders,
    FeatureCache,
    TrainSample,
    build_cache,
    load_sample,
)
from .checkpoint import find_resume, load_checkpoint, save_checkpoint
from .conditions import StepCondition, condition_rng, family_for
from .config import TrainConfig
from .erft import (
    InjectionDraw,
    InjectionProbs,
    TrainingSchedule,
    add_condition_error,
    bidirectional_errors,
    condition_error_window,
    draw_injections,
    flow_target,
    noisy_latent,
    weighted_mse,
)
from .export import diffusers_lora_targets, lora_state_dict

CSV_COLUMNS = (
    "step",
    "loss",
    "mse",
    "t",
    "weight",
    "noise_err",
    "latent_err",
    "cond_err",
    "clean",
    "bank_entries",
    "grad_norm",
    "seconds",
)


@dataclass
class TrainModels:
    """Models handed to :func:`train` instead of loading them from the config's paths.

    transformer: a diffusers ``WanTransformer3DModel`` (the base DiT, without LoRA); it is
        modified in place (frozen, LoRA layers injected, cast to the training precision).
    encoders: what fills the cache (unused when the cache is complete); None -> load from paths.
    """

    transformer: torch.nn.Module | None = None
    encoders: Encoders | None = None


def train(config: TrainConfig, models: TrainModels | None = None) -> Path:
    """Train a LoRA with ERFT (or plain, ``erft_enabled=False``); returns the exported file.

    Seeds the global Python / numpy / torch RNGs from ``config.seed`` (see the module doc)."""
    models = models or TrainModels()
    family = family_for(config)  # talk / dance: the extra condition (train.conditions)
    family.check(config, models.transformer)
    # ---- 0. processes ---------------------------------------------------------------------
    rank, world, device = _setup_distributed()
    is_main = rank == 0
    seed_everything(config.seed, rank)
    out = config.out
    ckpt_root = out / "checkpoints"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    resume = find_resume(config, ckpt_root, world)  # checked now, before any long work

    # ---- 1. data: list videos, encode what the cache lacks ----------------------------------
    items = family.list_items(config)
    encoders = models.encoders or (lambda: _load_encoders(config, device))
    samples, skipped = build_cache(config, items, encoders, rank, world)
    del encoders  # a loaded VAE / text / CLIP encoder is not needed any more
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cache = FeatureCache(config.cache_path)
    by_video = _group_by_video(samples)
    videos = sorted(by_video)
    steps_per_epoch = math.ceil(len(videos) / (world * config.gradient_accumulation))
    total_steps = config.max_steps or config.max_epochs * steps_per_epoch
    logger.info(
        "training %s LoRA (%s): %d videos (%d unreadable skipped), %d steps, world %d",
        config.mode,
        "ERFT" if config.erft_enabled else "plain",
        len(videos),
        skipped,
        total_steps,
        world,
    )

    # ---- 2. model: base DiT frozen, LoRA (peft) trainable in fp32 ---------------------------
    base = models.transformer if models.transformer is not None else _load_dit(config)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    model = add_lora(base, config)
    family.attach(model, config)  # talk: frozen MultiTalk; dance: trainable pose embedding
    family.init_weights(model, config)  # init_lora
    model = model.to(device)
    _cast_frozen(model, dtype)
    if config.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    model.train()
    first = load_sample(cache, samples[0])
    use_clip = _check_clip(model, first)
    family.check_sample(model, first)
    runner = _wrap_distributed(model, config, device, world)
    trainable = [p for p in model.parameters() if p.requires_grad]  # after FSDP re-registers

    # ---- 3. optimizer -------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )

    # ---- 4. ERFT state ----------------------------------------------------------------------
    schedule = TrainingSchedule.build(config.train_timesteps, config.shift)
    banks = ErrorBanks(config.bank_cells, config.bank_capacity, config.shift, config.bank_dtype)
    probs = InjectionProbs(
        noise=config.noise_prob,
        latent=config.latent_prob,
        condition=config.condition_prob,
        clean=config.clean_prob,
    )

    # ---- 5. resume ----------------------------------------------------------------------------
    start = 0
    if resume is not None:
        start = load_checkpoint(resume, model, optimizer, banks, rank)
        logger.info("resumed from '%s' at step %d", resume.folder, start)
    log = _LossLog(out / "loss.csv", start) if is_main else None

    # ---- 6. the loop --------------------------------------------------------------------------
    progress = _progress(total_steps, start, is_main)
    accum = config.gradient_accumulation
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        gen, rng = step_rngs(config.seed, rank, step)
        entry = _pick(by_video, videos, config.seed, step * world + rank)
        sample = load_sample(cache, entry)
        condition = family.step_condition(
            sample, config, condition_rng(config.seed, rank, step), device
        )
        loss, mse, info = erft_step(
            runner, sample, config, schedule, banks, probs, gen, rng, device, dtype, use_clip,
            condition,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        micro: list[tuple[StepInfo, random.Random]] = []
        loss_sum = mse_sum = 0.0
        for j in range(accum):  # gradient accumulation: `accum` samples per optimizer step
            gen, rng = step_rngs(config.seed, rank, step, j)
            entry = _pick(by_video, videos, config.seed, (step * accum + j) * world + rank)
            sample = load_sample(cache, entry)
            with _no_sync(runner, last=j == accum - 1):
                condition = family.step_condition(
                    sample, config, condition_rng(config.seed, rank, step, j), device
                )
                loss, mse, info = erft_step(
                    runner, sample, config, schedule, banks, probs, gen, rng, device, dtype,
                    use_clip, condition,
                )  # fmt: skip
                (loss / accum).backward()
            loss_sum += float(loss.detach())
            mse_sum += float(mse)
            micro.append((info, rng))
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        if config.erft_enabled:
            for info, rng in micro:
                _update_banks(banks, info, config, rng, step)
        loss, mse, info = loss_sum / accum, mse_sum / accum, micro[0][0]
        seconds = time.perf_counter() - t0
        loss_v = loss
        if log is not None:
            log.add(step + 1, loss_v, float(mse), info, len(banks), float(grad_norm), seconds)
            if (step + 1) % config.log_every == 0:
                logger.info(
                    "step %d/%d loss %.5f (mse %.5f, t %.0f) bank %d",
                    step + 1,
                    total_steps,
                    loss_v,
                    float(mse),
                    info.t,
                    len(banks),
                )
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_v:.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == total_steps:
            save_checkpoint(ckpt_root, step + 1, config, model, optimizer, banks, rank, world)
            if log is not None:
                log.flush()
    if progress is not None:
        progress.close()

    # ---- 7. export --------------------------------------------------------------------------
    path = config.export_file
    state = lora_state_dict(model)  # every rank: gathering FSDP shards is collective
    if is_main:
        path = family.export(state, config, {"svi_train_config": json.dumps(config.to_dict())})
        if log is not None:
            log.flush()
            log.plot(out / "loss.png")
        logger.info("exported LoRA to '%s'", path)
    _barrier(world)
    return path


# ============================================================================================
# one ERFT step
# ============================================================================================


@dataclass(frozen=True)
class StepInfo:
    """What a step drew and computed; errors are detached float32 ``[1, 16, T, h, w]``."""

    t: float
    weight: float
    draw: InjectionDraw
    e_noi: torch.Tensor | None
    e_vid: torch.Tensor | None


def erft_step(
    model: torch.nn.Module,
    sample: TrainSample,
    config: TrainConfig,
    schedule: TrainingSchedule,
    banks: ErrorBanks,
    probs: InjectionProbs,
    gen: torch.Generator,
    rng: random.Random,
    device: torch.device,
    dtype: torch.dtype,
    use_clip: bool = True,
    condition: StepCondition | None = None,
) -> tuple[torch.Tensor, torch.Tensor, StepInfo]:
    """Forward of one (ERFT) step; returns (weighted loss, unweighted MSE, info).

    With ``erft_enabled`` False it is a plain flow-matching LoRA step (no injection).
    ``condition`` (talk, dance; :mod:`train.conditions`): extra forward keyword arguments, and
    ``null_image`` = y and the CLIP feature zeroed with no condition error (official dance).
    """
    condition = condition or StepCondition()
    x0 = sample.latent.to(device, dtype)
    y = sample.y.to(device, dtype)
    clip = sample.clip.to(device, dtype) if use_clip and sample.clip is not None else None
    if condition.null_image:
        y = torch.zeros_like(y)
        clip = None if clip is None else torch.zeros_like(clip)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device, dtype)
    td = schedule.draw(gen)
    no = InjectionDraw(noise=False, latent=False, condition=False, clean=True)
    draw = draw_injections(rng, probs) if config.erft_enabled else no
    scale = config.error_scale
    cell = banks.cell(td.t)
    noise_in, x0_in = noise, x0
    if draw.noise and banks.has(td.t):
        noise_in = noise + scale * banks.noise.sample(cell, rng).to(device, dtype).unsqueeze(0)
    if draw.condition and len(banks) > 0 and not condition.null_image:
        err = banks.video.sample_any(rng).to(device, dtype).unsqueeze(0)
        y = add_condition_error(y, scale * condition_error_window(err, config.y_error_num, rng))
    if draw.latent and banks.has(td.t):
        x0_in = x0 + scale * banks.video.sample(cell, rng).to(device, dtype).unsqueeze(0)
    x_t = noisy_latent(x0_in, noise_in, td.s)
    target = flow_target(x0, noise_in)
    # bf16: autocast like the official Lightning "bf16" precision (fp32 LoRA masters, bf16 math)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        pred = model(
            hidden_states=torch.cat([x_t, y], dim=1),
            timestep=torch.tensor([td.t], dtype=torch.float32, device=device),
            encoder_hidden_states=sample.context.to(device, dtype),
            encoder_hidden_states_image=clip,
            return_dict=False,
            **condition.kwargs,
        )[0]
    loss = weighted_mse(pred, target, td.weight)
    e_noi = e_vid = None
    if config.erft_enabled:
        with torch.no_grad():
            e_noi, e_vid = bidirectional_errors(pred.detach(), target, td.s)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(pred.detach().float(), target.float())
    return loss, mse, StepInfo(td.t, td.weight, draw, e_noi, e_vid)


def _update_banks(
    banks: ErrorBanks, info: StepInfo, config: TrainConfig, rng: random.Random, step: int
) -> None:
    """Store the step's errors (all ranks' during warm-up; a clean step only with p 0.1)."""
    assert info.e_noi is not None and info.e_vid is not None
    if step < config.bank_warmup_iters:
        entries = gather_errors(info.e_noi, info.e_vid, info.t)
    else:
        entries = [(info.e_noi, info.e_vid, info.t)]
    if info.draw.clean and rng.random() >= config.clean_bank_update_prob:
        return
    for e_noi, e_vid, t in entries:
        banks.add(e_noi.cpu(), e_vid.cpu(), t)


def derived_seed(seed: int, purpose: str, rank: int = 0) -> int:
    """A 63-bit seed for one use of the config seed (``purpose``, ``rank``)."""
    digest = hashlib.sha256(f"{purpose}|{seed}|{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python's, numpy's and torch's global RNGs from the config seed (and rank), so that
    anything drawing from them outside the per-step generators repeats from run to run."""
    import numpy as np

    s = derived_seed(seed, "global", rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def step_rngs(
    seed: int, rank: int, step: int, micro: int = 0
) -> tuple[torch.Generator, random.Random]:
    """The torch generator (noise, timestep) and Python RNG (injections, bank draws) of sample
    ``micro`` of a step (gradient accumulation; sample 0 keeps the original derivation)."""
    tail = f"|{micro}" if micro else ""
    digest = hashlib.sha256(f"erft|{seed}|{rank}|{step}{tail}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return gen, random.Random(int.from_bytes(digest[8:16], "little"))


def _no_sync(runner: torch.nn.Module, last: bool):
    """DDP: skip the gradient all-reduce on all but the last accumulated sample."""
    if not last and hasattr(runner, "no_sync"):
        return runner.no_sync()
    return contextlib.nullcontext()


def _group_by_video(samples: list[CachedSample]) -> dict[str, list[CachedSample]]:
    out: dict[str, list[CachedSample]] = {}
    for s in samples:
        out.setdefault(s.video, []).append(s)
    for v in out.values():
        v.sort(key=lambda s: s.draw)
    return out


def _pick(
    by_video: dict[str, list[CachedSample]], videos: list[str], seed: int, index: int
) -> CachedSample:
    """Sample number ``index`` (over all ranks): epoch e = index // N shuffles the N videos
    with a seed of (seed, e) and uses each video's augmentation draw e (mod the draws)."""
    n = len(videos)
    epoch, pos = divmod(index, n)
    order = list(videos)
    random.Random(f"order|{seed}|{epoch}").shuffle(order)
    draws = by_video[order[pos]]
    return draws[epoch % len(draws)]


# ============================================================================================
# model
# ============================================================================================


def add_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """Freeze ``model`` and inject peft LoRA (r, alpha, kaiming A / zero B, fp32 parameters) on
    ``config.lora_targets`` (official names) of every block."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    num_blocks = len(model.blocks)
    targets = diffusers_lora_targets(config.lora_targets, num_blocks)
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        init_lora_weights=True,
        target_modules=targets,
    )
    # The init draws from torch's global RNG: give it its own generator state derived from the
    # seed only (the same on every rank, whatever ran before: loading models, filling a cache).
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(config.seed, "lora-init"))
        model = inject_adapter_in_model(lora_config, model)
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            p.requires_grad_(True)
            p.data = p.data.to(torch.float32)
    return model


def _cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen float32 weights to ``dtype`` except the modules diffusers keeps in fp32
    (time embedder, norms, modulation tables); LoRA parameters stay float32."""
    keep = tuple(getattr(type(model), "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        if p.requires_grad or p.dtype != torch.float32 or dtype == torch.float32:
            continue
        if any(k in name.split(".") for k in keep):
            continue
        p.data = p.data.to(dtype)


def _check_clip(model: torch.nn.Module, sample: TrainSample) -> bool:
    """Whether to feed CLIP features: the DiT has an image embedding (Wan2.1 I2V). Raises
    when it has one but the cache holds no CLIP feature."""
    embedder = getattr(getattr(model, "condition_embedder", None), "image_embedder", None)
    if embedder is None:
        return False
    if sample.clip is None:
        raise SVIError(
            "the DiT takes a CLIP-vision feature (Wan2.1 I2V img_emb) but the cache has none: "
            "set `clip_vision_path` (or `clip_fea` in `context_file`)"
        )
    return True


def _wrap_distributed(
    model: torch.nn.Module, config: TrainConfig, device: torch.device, world: int
) -> torch.nn.Module:
    if world == 1:
        return model
    if config.distributed == "fsdp":
        # FSDP2 per block then the root; tested on CPU/gloo with the tiny model (training,
        # checkpoint, exact resume), not yet on GPUs with a 14B model.
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _load_dit(config: TrainConfig) -> torch.nn.Module:
    if not config.dit_path:
        raise SVIError("no DiT: set `dit_path` to the Wan2.1 I2V DiT (safetensors / folder)")
    from svi_core.standalone import models as standalone

    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    return standalone.load_wan_transformer(config.dit_path, dtype=dtype)


def _load_encoders(config: TrainConfig, device: torch.device) -> Encoders:
    """Load the VAE, the text encoder (UMT5, or a ``text_embeddings`` file) and CLIP vision
    from the config's paths (called only when the cache lacks something)."""
    from svi_core.latents import normalise
    from svi_core.standalone import models as standalone

    from .cache import file_fingerprint

    if not config.vae_path:
        raise SVIError("the training cache needs encoding: set `vae_path` to the Wan2.1 VAE")
    vae = standalone.load_wan_vae(config.vae_path).to(device)

    def enc_video(pixels: torch.Tensor) -> torch.Tensor:
        return normalise(standalone.vae_encode(vae, pixels)).cpu()

    enc_text = enc_clip = None
    text_id = clip_id = ""
    if config.context_file:
        pass
    elif config.text_embeddings:
        from svi_core.standalone.backend import embeddings_text_encoder

        lookup = embeddings_text_encoder(config.text_embeddings)
        text_id = file_fingerprint(config.text_embeddings)

        def enc_text(caption: str) -> torch.Tensor:
            ctx = lookup(caption)
            return (ctx[0] if ctx.ndim == 3 else ctx).float()

    elif config.text_encoder_path:
        tok = config.tokenizer_path or str(
            Path(config.text_encoder_path).parent / "google/umt5-xxl"
        )
        t5, tokenizer = standalone.load_umt5_encoder(config.text_encoder_path, tok)
        t5 = t5.to(device)
        text_id = file_fingerprint(config.text_encoder_path)

        def enc_text(caption: str) -> torch.Tensor:
            return standalone.encode_text(t5, tokenizer, [caption])[0].cpu()

    else:
        raise SVIError(
            "the training cache needs text embeddings: set `text_encoder_path` (UMT5, with "
            "`tokenizer_path`), `text_embeddings` or `context_file`"
        )
    if config.clip_vision_path and not config.context_file:
        clip_model = standalone.load_clip_vision(config.clip_vision_path).to(device)
        clip_id = file_fingerprint(config.clip_vision_path)

        def enc_clip(frame: torch.Tensor) -> torch.Tensor:
            return standalone.clip_vision_features(clip_model, frame)[0].cpu()

    enc_audio, audio_id = None, ""
    if config.mode == "talk" and config.wav2vec_path:
        from .talk import wav2vec2_encoder

        enc_audio, audio_id = wav2vec2_encoder(config.wav2vec_path)
    return Encoders(
        encode_video=enc_video,
        encode_text=enc_text,
        clip_features=enc_clip,
        video_id=file_fingerprint(config.vae_path),
        text_id=text_id,
        clip_id=clip_id,
        audio_features=enc_audio,
        audio_id=audio_id,
    )


# ============================================================================================
# distributed helpers
# ============================================================================================


def _setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises torch.distributed under torchrun (nccl on GPUs,
    gloo on CPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ============================================================================================
# logging
# ============================================================================================


class _LossLog:
    """Rank-0 CSV of per-step values (``loss.csv``), kept across resumes, and its PNG plot."""

    def __init__(self, path: Path, start: int):
        self.path = path
        self.rows: list[list[str]] = []
        if start > 0 and path.is_file():
            with path.open(newline="") as f:
                reader = csv.reader(f)
                next(reader, None)
                self.rows = [r for r in reader if r and int(r[0]) <= start]
        self.flush()

    def add(
        self,
        step: int,
        loss: float,
        mse: float,
        info: StepInfo,
        bank: int,
        grad_norm: float,
        seconds: float,
    ) -> None:
        d = info.draw
        self.rows.append(
            [
                str(step),
                f"{loss:.6g}",
                f"{mse:.6g}",
                f"{info.t:.3f}",
                f"{info.weight:.5f}",
                str(int(d.noise)),
                str(int(d.latent)),
                str(int(d.condition)),
                str(int(d.clean)),
                str(bank),
                f"{grad_norm:.5g}",
                f"{seconds:.4f}",
            ]
        )

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def plot(self, path: Path) -> None:
        if not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [int(r[0]) for r in self.rows]
        mse = [float(r[2]) for r in self.rows]
        k = max(1, len(mse) // 50)
        smooth = [
            sum(mse[max(0, i - k + 1) : i + 1]) / len(mse[max(0, i - k + 1) : i + 1])
            for i in range(len(mse))
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, mse, alpha=0.3, label="MSE per step")
        ax.plot(steps, smooth, label=f"running mean ({k})")
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching MSE")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="ERFT", unit="step", dynamic_ncols=True)
