"""The ERFT loop end to end on a tiny random DiT (train/loop.py, train/export.py, train/cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from parity_support import fixtures_dir
from safetensors.torch import load_file
from train_support import read_rows

from svi_core.errors import SVIError
from svi_core.lora import apply_lora_to_diffusers, load_lora
from train.cache import Encoders
from train.config import preset
from train.loop import TrainModels, add_lora, train
from train.tiny import (
    moving_frames,
    tiny_encoders,
    tiny_transformer,
    write_video,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (no spinning on the shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Encoders]:
    root = tmp_path_factory.mktemp("erft")
    for i in range(2):
        write_video(root / "ds" / f"v{i}.mp4", moving_frames(12, 32, 48, seed=i))
        (root / "ds" / f"v{i}.txt").write_text(f"a moving pattern number {i}")
    enc = tiny_encoders()
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
        lora_alpha=8.0,
        bank_warmup_iters=2,
        export_dtype="fp32",
        learning_rate=1e-3,
    )
    base.update(kw)
    return preset("shot", **base)


def _models(enc: Encoders, seed: int = 0) -> TrainModels:
    return TrainModels(transformer=tiny_transformer(seed=seed, num_layers=1), encoders=enc)


def _fixed_inputs(root: Path) -> list[dict[str, torch.Tensor]]:
    """A fixed evaluation set: every cached sample at 4 timesteps with fixed noise."""
    from train.cache import FeatureCache, load_sample
    from train.erft import TrainingSchedule, flow_target, noisy_latent

    cache = FeatureCache(root / "cache")
    sched = TrainingSchedule.build()
    g = torch.Generator().manual_seed(123)
    out = []
    manifest = sorted((root / "cache").glob("manifest-*.json"))[0]
    import json

    for entry in json.loads(manifest.read_text())["samples"]:
        from train.cache import CachedSample

        s = load_sample(cache, CachedSample(**entry))
        for idx in (100, 300, 500, 700):
            d = sched.at(idx)
            n = torch.randn(s.latent.shape, generator=g)
            out.append(
                dict(
                    hidden_states=torch.cat([noisy_latent(s.latent, n, d.s), s.y], 1),
                    timestep=torch.tensor([d.t]),
                    encoder_hidden_states=s.context,
                    encoder_hidden_states_image=s.clip,
                    target=flow_target(s.latent, n),
                )
            )
    return out


@torch.no_grad()
def _eval_mse(model: torch.nn.Module, inputs: list[dict[str, torch.Tensor]]) -> float:
    total = 0.0
    for x in inputs:
        kw = {k: v for k, v in x.items() if k != "target"}
        pred = model(**kw, return_dict=False)[0]
        total += float(torch.nn.functional.mse_loss(pred, x["target"]))
    return total / len(inputs)


def test_erft_lowers_loss_and_export_round_trips(toy):
    root, enc = toy
    cfg = _cfg(root, "erft", max_steps=20, checkpoint_every=20, learning_rate=1e-2)
    path = train(cfg, _models(enc))
    assert path == cfg.export_file and path.is_file()
    rows = read_rows(root / "erft" / "loss.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    assert int(rows[-1]["bank_entries"]) > 0  # errors were recycled
    assert any(r["latent_err"] == "1" for r in rows[5:]) and any(r["clean"] == "1" for r in rows)
    assert (root / "erft" / "loss.png").stat().st_size > 1000

    inputs = _fixed_inputs(root)
    base = tiny_transformer(seed=0, num_layers=1)
    before = _eval_mse(base, inputs)
    lora = load_lora(path)
    assert lora.rank == 4 and len(lora) == 10  # 10 targets x 1 block
    apply_lora_to_diffusers(base, lora)
    after = _eval_mse(base, inputs)
    print(f"fixed-set MSE before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before, (before, after)

    # the exported file is canonical: diffusion_model.<official module>, alpha on every layer
    sd = load_file(str(path))
    assert all(k.startswith("diffusion_model.blocks.0.") for k in sd)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in sd
    assert "diffusion_model.blocks.0.ffn.2.lora_B.weight" in sd
    assert float(sd["diffusion_model.blocks.0.cross_attn.o.alpha"]) == 8.0
    assert len(sd) == 30

    # round trip: the peft model of the last checkpoint == base + svi_core's merged LoRA
    peft_model = add_lora(tiny_transformer(seed=0, num_layers=1), cfg)
    ckpt = load_file(str(root / "erft" / "checkpoints" / "step_0000020" / "lora.safetensors"))
    missing = peft_model.load_state_dict(ckpt, strict=False)
    assert not missing.unexpected_keys
    peft_model.eval()
    for x in inputs[:3]:
        kw = {k: v for k, v in x.items() if k != "target"}
        a = peft_model(**kw, return_dict=False)[0]
        b = base(**kw, return_dict=False)[0]
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_resume_matches_uninterrupted_run(toy):
    root, enc = toy
    full = _cfg(root, "full", max_steps=6, checkpoint_every=3)
    train(full, _models(enc))
    part = _cfg(root, "part", max_steps=3, checkpoint_every=3)
    train(part, _models(enc))
    # resume with a fresh (differently initialised) model object: everything comes from disk
    train(part.replace(max_steps=6, resume="latest"), _models(enc, seed=0))
    a = load_file(str(root / "full" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    b = load_file(str(root / "part" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    assert a.keys() == b.keys()
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)  # it trained
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ba = load_file(str(root / "full" / "checkpoints" / "step_0000006" / "banks.rank0.safetensors"))
    bb = load_file(str(root / "part" / "checkpoints" / "step_0000006" / "banks.rank0.safetensors"))
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)
    rows = read_rows(root / "part" / "loss.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == read_rows(root / "full" / "loss.csv") or [r["loss"] for r in rows] == [
        r["loss"] for r in read_rows(root / "full" / "loss.csv")
    ]

    # resuming under another config is refused, naming the field
    other = part.replace(max_steps=8, resume="latest", learning_rate=3e-4)
    with pytest.raises(SVIError, match="learning_rate"):
        train(other, _models(enc))
    with pytest.raises(SVIError, match="state.json"):
        train(part.replace(resume=str(root)), _models(enc))


def test_plain_lora_has_no_banks(toy):
    root, enc = toy
    # also the bf16 path (frozen base in bf16 except diffusers' fp32 modules, fp32 LoRA, autocast)
    cfg = _cfg(root, "plain", max_steps=3, erft_enabled=False, precision="bf16")
    path = train(cfg, _models(enc))
    assert path.name == "svi-shot-plain.safetensors"
    rows = read_rows(root / "plain" / "loss.csv")
    assert all(r["bank_entries"] == "0" and r["latent_err"] == "0" for r in rows)
    assert not list((root / "plain" / "checkpoints").glob("*/banks.*"))
    assert all(float(r["loss"]) == float(r["loss"]) and float(r["grad_norm"]) > 0 for r in rows)
    lora = load_file(str(root / "plain" / "checkpoints" / "step_0000003" / "lora.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)


def test_bad_input_errors(toy, tmp_path: Path):
    root, enc = toy
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SVIError, match="holds no videos"):
        train(_cfg(root, "bad", dataset=str(empty), max_steps=1), _models(enc))
    from train.cli import main

    toml = tmp_path / "c.toml"
    toml.write_text('preset = "film"\nlearnin_rate = 1.0\n')
    assert main(["--config", str(toml)]) == 2
    assert main(["--preset", "shot", "--dataset", str(empty)]) == 2


@pytest.mark.slow
def test_distributed_two_processes_gloo(toy, tmp_path: Path):
    """DDP and FSDP2 on two CPU processes (gloo), both in ONE torchrun launch.

    Kept in CI on purpose: it is the only test of the distributed paths (gradient sync, the
    all-gather of errors into the banks during warm-up, FSDP2 sharding per block, per-rank
    bank checkpoints), and CPU/gloo is the only way CI can run them. One launch runs both
    strategies (the second reuses the process group and the feature cache), which halves the
    cost: on a loaded 2-core machine ~80 s instead of ~180 s for two launches, most of it
    process start, imports and building the tiny encoders.
    """
    root, _ = toy
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO)!r})
            import torch
            torch.set_num_threads(1)
            from train.cache import Encoders, diffusers_vae_encoder
            from train.config import preset
            from train.loop import TrainModels, train
            from train.tiny import tiny_clip_encoder, tiny_text_encoder, tiny_transformer, tiny_vae

            enc = Encoders(diffusers_vae_encoder(tiny_vae()), tiny_text_encoder(),
                           tiny_clip_encoder(), "tiny-vae", "tiny-text", "tiny-clip")
            for strategy in ("ddp", "fsdp"):
                cfg = preset("shot", dataset={str(root / "ds")!r},
                             output_dir={str(tmp_path)!r} + "/out_" + strategy,
                             cache_dir={str(tmp_path / "cache")!r}, num_frames=5, height=32,
                             width=48, augment_draws=1, precision="fp32", lora_rank=4,
                             lora_alpha=4.0, bank_warmup_iters=2, max_steps=4,
                             checkpoint_every=2, clean_prob=0.0, distributed=strategy)
                train(cfg, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc))
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / f"out_{strategy}"
        assert (out / "svi-shot-erft.safetensors").is_file(), strategy
        ckpt = out / "checkpoints" / "step_0000004"
        assert (ckpt / "banks.rank0.safetensors").is_file() and (
            ckpt / "banks.rank1.safetensors"
        ).is_file()
        # warm-up (2 steps): every rank stores both ranks' errors (4 entries, the same on both
        # ranks); then each rank stores only its own (2 more, different per rank)
        b0 = load_file(str(ckpt / "banks.rank0.safetensors"))
        b1 = load_file(str(ckpt / "banks.rank1.safetensors"))

        def entries(banks):
            return [e for k, v in sorted(banks.items()) if k.startswith("noise.") for e in v]

        e0, e1 = entries(b0), entries(b1)
        assert len(e0) == len(e1) == 6, strategy
        shared = sum(any(torch.equal(a, b) for b in e1) for a in e0)
        assert shared == 4, strategy
        assert len(read_rows(out / "loss.csv")) == 4, strategy


FIXTURES = fixtures_dir()


@pytest.mark.skipif(not (FIXTURES / "wan21_i2v_dit").is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_cli_end_to_end_with_model_files(toy, tmp_path: Path):
    """`python -m train` loads an official-layout DiT and VAE through svi_core's loaders; the
    text / CLIP side comes from a context file."""
    from safetensors.torch import save_file

    from train.cli import main

    root, _ = toy
    cfg = json.loads((FIXTURES / "wan21_i2v_dit" / "config.json").read_text())
    ctx = tmp_path / "ctx.safetensors"
    g = torch.Generator().manual_seed(0)
    context = torch.zeros(512, cfg["text_dim"])
    context[:7] = torch.randn(7, cfg["text_dim"], generator=g)
    clip_fea = torch.randn(257, cfg["clip_dim"], generator=g)
    save_file({"context": context, "clip_fea": clip_fea}, str(ctx))
    toml = tmp_path / "run.toml"
    toml.write_text(
        textwrap.dedent(
            f"""
            [train]
            preset = "film"
            dataset = {str(root / "ds")!r}
            output_dir = {str(tmp_path / "out")!r}
            dit_path = {str(FIXTURES / "wan21_i2v_dit" / "model.safetensors")!r}
            vae_path = {str(FIXTURES / "wan21_vae" / "model.safetensors")!r}
            context_file = {str(ctx)!r}
            num_frames = 9
            height = 32
            width = 48
            augment_draws = 1
            lora_rank = 4
            lora_alpha = 4.0
            """
        )
    )
    assert main(["--config", str(toml), "--max_steps", "3", "--precision", "fp32"]) == 0
    lora = load_lora(tmp_path / "out" / "svi-film-erft.safetensors")
    assert len(lora) == cfg["num_layers"] * 10 and lora.rank == 4
    assert len(read_rows(tmp_path / "out" / "loss.csv")) == 3
    # same settings, more steps: resumes from the checkpoint; other settings: refused
    assert main(["--config", str(toml), "--max_steps", "4", "--resume", "latest"]) == 2  # bf16
    assert main(["--config", str(toml), "--max_steps", "4", "--precision", "fp32",
                 "--resume", "latest"]) == 0  # fmt: skip
    assert [int(r["step"]) for r in read_rows(tmp_path / "out" / "loss.csv")] == [1, 2, 3, 4]
