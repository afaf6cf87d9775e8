"""Repeatable training runs and damaged checkpoints (train/loop.py seeding, train/checkpoint.py).

* two fresh ``python -m train ... --seed 0`` runs (CLI entry point, model FILES loaded from
  disk, the global RNG left in different states before each) give bit-identical LoRAs;
* a truncated file in the newest checkpoint (lora, optimizer, banks, rng, state.json) makes
  ``resume=latest`` fall back to the previous complete checkpoint with a warning, and the run
  then ends exactly where an uninterrupted run ends;
* an optimizer file holding a pickle is refused with a message naming it, and never executed.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svi_core.errors import SVIError
from train.cache import Encoders
from train.config import preset
from train.loop import TrainModels, train
from train.tiny import (
    moving_frames,
    tiny_encoders,
    tiny_transformer,
    write_video,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------- C: repeatable CLI


def test_two_fresh_cli_runs_give_the_same_lora(tmp_path: Path):
    """`python -m train` twice with the same seed: equal LoRAs, although the global torch RNG
    differs before each run and only the first run has to fill the cache (loads the VAE)."""
    from svi_core.toy.models import TOY_DIT, TOY_VAE
    from train.cli import main

    for i in range(2):
        write_video(tmp_path / "ds" / f"v{i}.mp4", moving_frames(9, 32, 48, seed=i))
    dit = tmp_path / "dit" / "model.safetensors"  # the toy DiT, with its config beside it
    dit.parent.mkdir()
    shutil.copy(TOY_DIT, dit)
    shutil.copy(TOY_DIT.with_suffix(".json"), dit.parent / "config.json")
    ctx = tmp_path / "ctx.safetensors"
    save_file({"context": torch.zeros(512, 4096), "clip_fea": torch.zeros(257, 1280)}, str(ctx))
    common = ["--preset", "film", "--dataset", str(tmp_path / "ds"), "--dit_path", str(dit),
              "--vae_path", str(TOY_VAE), "--context_file", str(ctx), "--cache_dir",
              str(tmp_path / "cache"), "--num_frames", "9", "--height", "32", "--width", "48",
              "--augment_draws", "1", "--lora_rank", "4", "--lora_alpha", "4", "--max_steps",
              "2", "--precision", "fp32", "--gradient_checkpointing", "false", "--seed", "0",
              "--export_dtype", "fp32", "--bank_capacity", "4"]  # fmt: skip
    loras = []
    for run, other_state in (("a", 1), ("b", 2)):
        torch.manual_seed(other_state)  # whatever the caller did before must not matter
        assert main([*common, "--output_dir", str(tmp_path / run)]) == 0
        loras.append(load_file(str(tmp_path / run / "svi-film-erft.safetensors")))
    a, b = loras
    assert a.keys() == b.keys() and len(a) > 0
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_A" in k)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # another seed gives another LoRA (the test can tell them apart)
    assert main([*common, "--seed", "1", "--output_dir", str(tmp_path / "c")]) == 0
    c = load_file(str(tmp_path / "c" / "svi-film-erft.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------------- D: damaged checkpoints


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Encoders]:
    """A dataset, tiny encoders, and a finished 4-step run with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("ckpt")
    for i in range(2):
        write_video(root / "ds" / f"v{i}.mp4", moving_frames(12, 32, 48, seed=i))
    enc = tiny_encoders()
    train(_cfg(root, "four", max_steps=4), _models(enc))
    train(_cfg(root, "six", max_steps=6), _models(enc))  # uninterrupted reference
    return root, enc


def _cfg(root: Path, name: str, **kw):
    base = dict(
        dataset=str(root / "ds"),
        output_dir=str(root / name),
        cache_dir=str(root / "cache"),
        num_frames=5,
        height=32,
        width=48,
        augment_draws=1,
        precision="fp32",
        lora_rank=4,
        lora_alpha=4.0,
        bank_warmup_iters=2,
        export_dtype="fp32",
        learning_rate=1e-3,
        checkpoint_every=2,
        clean_prob=0.0,
    )
    base.update(kw)
    return preset("shot", **base)


def _models(enc: Encoders) -> TrainModels:
    return TrainModels(transformer=tiny_transformer(seed=0, num_layers=1), encoders=enc)


def _copy_run(root: Path, name: str) -> Path:
    dst = root / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(root / "four", dst)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _same_lora(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize(
    "damaged",
    ["lora.safetensors", "optimizer.rank0.pt", "banks.rank0.safetensors",
     "rng.rank0.safetensors", "state.json"],
)  # fmt: skip
def test_truncated_last_checkpoint_falls_back_to_the_previous_one(runs, damaged, caplog):
    root, enc = runs
    name = "cut_" + damaged.split(".")[0]
    out = _copy_run(root, name)
    _truncate(out / "checkpoints" / "step_0000004" / damaged)
    with caplog.at_level(logging.WARNING, logger="svi"):
        train(_cfg(root, name, max_steps=6, resume="latest"), _models(enc))
    text = caplog.text
    assert "step_0000004" in text and damaged in text and "damaged" in text
    assert "previous complete checkpoint" in text and "step_0000002" in text
    # resumed from step 2 and retrained 3..6: the same LoRA as the uninterrupted 6-step run
    assert _same_lora(
        out / "checkpoints" / "step_0000006" / "lora.safetensors",
        root / "six" / "checkpoints" / "step_0000006" / "lora.safetensors",
    )


def test_missing_file_and_bad_latest_pointer_fall_back(runs, caplog):
    root, enc = runs
    out = _copy_run(root, "missing")
    (out / "checkpoints" / "step_0000004" / "rng.rank0.safetensors").unlink()
    (out / "checkpoints" / "latest").write_text("step_00")  # a cut pointer
    with caplog.at_level(logging.WARNING, logger="svi"):
        train(_cfg(root, "missing", max_steps=6, resume="latest"), _models(enc))
    assert "rng.rank0.safetensors is missing" in caplog.text
    assert _same_lora(
        out / "checkpoints" / "step_0000006" / "lora.safetensors",
        root / "six" / "checkpoints" / "step_0000006" / "lora.safetensors",
    )


def test_every_checkpoint_damaged_is_refused_before_work(runs):
    root, enc = runs
    out = _copy_run(root, "all_bad")
    for step in ("step_0000002", "step_0000004"):
        _truncate(out / "checkpoints" / step / "lora.safetensors")
    with pytest.raises(SVIError, match=r"every checkpoint .* is damaged.*lora\.safetensors"):
        train(_cfg(root, "all_bad", max_steps=6, resume="latest"), _models(enc))


def test_named_damaged_checkpoint_is_refused(runs):
    root, enc = runs
    out = _copy_run(root, "named")
    folder = out / "checkpoints" / "step_0000004"
    _truncate(folder / "optimizer.rank0.pt")
    with pytest.raises(SVIError, match=r"step_0000004.*optimizer\.rank0\.pt is truncated"):
        train(_cfg(root, "named", max_steps=6, resume=str(folder)), _models(enc))


class _Payload:
    """Unpickling this would create a folder (proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_in_optimizer_file_is_refused(runs, tmp_path: Path, how: str):
    root, enc = runs
    name = "pickle_" + how.split(".")[0]
    out = _copy_run(root, name)
    target = out / "checkpoints" / "step_0000004" / "optimizer.rank0.pt"
    marker = tmp_path / "code_ran"
    obj = {"state": {}, "param_groups": [], "x": _Payload(marker)}
    if how == "torch.save":
        torch.save(obj, target)
    else:
        with target.open("wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(SVIError, match=r"optimizer\.rank0\.pt.*Python objects.*never loads"):
        train(_cfg(root, name, max_steps=6, resume="latest"), _models(enc))
    assert not marker.exists()
    assert not (out / "checkpoints" / "step_0000006").exists()  # refused before any step


# ------------------------------------------------------------------ gradient accumulation


def test_gradient_accumulation_is_the_mean_gradient_of_its_samples(runs):
    """One step with gradient_accumulation=2 == an AdamW step on the mean of the two samples'
    gradients (samples, noise and timesteps picked as documented), done here by hand."""
    from train.cache import FeatureCache, build_cache, load_sample
    from train.data import list_videos
    from train.erft import InjectionProbs, TrainingSchedule
    from train.loop import _group_by_video, _pick, add_lora, erft_step, step_rngs

    root, enc = runs
    cfg = _cfg(root, "accum", max_steps=1, gradient_accumulation=2, erft_enabled=False,
               grad_clip=1e6, checkpoint_every=1)  # fmt: skip
    train(cfg, _models(enc))
    got = load_file(str(root / "accum" / "checkpoints" / "step_0000001" / "lora.safetensors"))

    samples, _ = build_cache(cfg, list_videos(cfg.dataset), enc)
    by_video = _group_by_video(samples)
    videos = sorted(by_video)
    cache = FeatureCache(cfg.cache_path)

    def by_hand(micro: list[int]) -> dict[str, torch.Tensor]:
        from train.banks import ErrorBanks

        model = add_lora(tiny_transformer(seed=0, num_layers=1), cfg).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        banks = ErrorBanks(cfg.bank_cells, cfg.bank_capacity)
        for j in micro:
            gen, rng = step_rngs(cfg.seed, 0, 0, j)
            sample = load_sample(cache, _pick(by_video, videos, cfg.seed, j))
            loss, _, _ = erft_step(model, sample, cfg, TrainingSchedule.build(), banks,
                                   InjectionProbs(), gen, rng, torch.device("cpu"),
                                   torch.float32)  # fmt: skip
            (loss / len(micro)).backward()
        opt.step()
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    assert _pick(by_video, videos, cfg.seed, 0).video != _pick(by_video, videos, cfg.seed, 1).video
    want = by_hand([0, 1])
    assert want.keys() == got.keys()
    assert any(float(v.abs().sum()) > 0 for k, v in got.items() if "lora_B" in k)
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-7, rtol=0), k
    first_only = by_hand([0])  # the second sample counted: one sample alone gives another step
    assert any(not torch.allclose(first_only[k], got[k], atol=1e-6, rtol=0) for k in got)


def test_fingerprint_of_older_configs_is_unchanged():
    """Adding `gradient_accumulation` (default 1) keeps earlier checkpoints resumable: the
    fingerprint at the default equals the one computed without the field."""
    from svi_core.run_store import sha256_json
    from train.config import ADDED_FIELDS, RUN_ONLY_FIELDS

    cfg = preset("film", dataset="d")
    # the config of the version before these fields: none of them (the talk / dance fields
    # were added at the same time and stay at their "as before" value in a film config)
    old = {
        k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_FIELDS and k not in ADDED_FIELDS
    }
    assert cfg.fingerprint() == sha256_json(old)[:16]
    assert cfg.replace(gradient_accumulation=4).fingerprint() != cfg.fingerprint()
