"""SVI-Dance training on tiny models (train/dance.py, train/conditions.py, the dance preset).

Tiny random DiT (1 block, width 32), a tiny pose embedding (4 hidden channels), per-video folders
with ``video.mp4`` + ``dwpose.mp4`` (moving coloured lines on black as skeletons).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from train_support import cached_samples, read_rows

from svi_core.errors import SVIError
from train.banks import ErrorBanks
from train.cache import Encoders
from train.conditions import StepCondition, condition_rng
from train.config import TrainConfig, preset
from train.dance import DanceFamily, list_dance_videos, pack_pose_frames, unpack_pose_frames
from train.data import VideoItem, draw_sample
from train.erft import InjectionProbs, TrainingSchedule
from train.loop import TrainModels, add_lora, erft_step, step_rngs, train
from train.tiny import (
    moving_frames,
    skeleton_frames,
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


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("dance")
    for i in range(2):
        folder = root / "ds" / f"{i:05d}"
        write_video(folder / "video.mp4", moving_frames(12, 56, 40, seed=i))
        write_video(folder / "dwpose.mp4", skeleton_frames(12, 56, 40, seed=i))
    enc = tiny_encoders()
    return root, enc


def _cfg(root: Path, name: str, **kw) -> TrainConfig:
    base = dict(
        dataset=str(root / "ds"),
        output_dir=str(root / name),
        cache_dir=str(root / "cache"),
        num_frames=5,
        height=48,
        width=32,
        augment_draws=1,
        precision="fp32",
        lora_rank=4,
        lora_alpha=8.0,
        pose_hidden=4,
        bank_warmup_iters=2,
        export_dtype="fp32",
        learning_rate=1e-3,
    )
    base.update(kw)
    return preset("dance", **base)


def _kw(s, seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.cat([torch.randn(s.latent.shape, generator=g), s.y.float()], 1),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=s.context.float(),
        encoder_hidden_states_image=s.clip.float(),
        return_dict=False,
    )


def test_dance_preset_is_the_official_recipe():
    c = preset("dance")
    assert (c.height, c.width, c.resize) == (832, 480, "stretch")  # portrait, no crop
    assert (c.num_motion_frames, c.padding, c.y_error_num, c.clean_prob) == (
        1,
        "random_frame",
        1,
        0.2,
    )
    assert (c.lora_rank, c.lora_alpha, c.learning_rate, c.max_epochs) == (128, 128.0, 1e-4, 20)
    assert c.fixed_caption == "the person is dancing"
    assert abs(c.pose_dropout - (1 - 0.95 * 0.9)) < 1e-12 and c.image_dropout == 0.1
    assert c.pose_hidden == 16 and not c.center_square
    assert c.export_file.name == "svi-dance-erft.safetensors"


def test_listing(tmp_path: Path):
    ds = tmp_path / "ds"
    write_video(ds / "a" / "video.mp4", moving_frames(6, 32, 32))
    write_video(ds / "a" / "dwpose.mp4", skeleton_frames(6, 32, 32))
    (ds / "a" / "frame_data.pkl").write_bytes(b"\x80")  # ignored: the mp4 wins (official)
    items = list_dance_videos(preset("dance", dataset=str(ds)))
    assert [(it.path.parent.name, it.pose.name) for it in items] == [("a", "dwpose.mp4")]
    write_video(ds / "b" / "video.mp4", moving_frames(6, 32, 32))
    with pytest.raises(SVIError, match="no dwpose.mp4"):
        list_dance_videos(preset("dance", dataset=str(ds)))
    (ds / "b" / "video.mp4").unlink()
    (ds / "b" / "dw_pose_with_foot_wo_face.pkl").write_bytes(b"\x80")
    with pytest.raises(SVIError, match="never loaded"):
        list_dance_videos(preset("dance", dataset=str(ds)))


def test_pose_cache_packing_is_lossless():
    sparse = torch.from_numpy(skeleton_frames(9, 48, 32, seed=3))
    packed = pack_pose_frames(sparse)
    assert "index" in packed and torch.equal(unpack_pose_frames(packed), sparse)
    dense_bytes = sparse.numel()
    sparse_bytes = sum(t.numel() * t.element_size() for t in packed.values())
    assert sparse_bytes < dense_bytes / 4, (sparse_bytes, dense_bytes)
    busy = torch.randint(1, 255, (3, 16, 16, 3), dtype=torch.uint8)
    packed = pack_pose_frames(busy)
    assert "frames" in packed and torch.equal(unpack_pose_frames(packed), busy)


def test_pose_frames_follow_the_video_frames(tmp_path: Path):
    """Pose frame i is read for video frame i and stretched bilinearly like it (also a pose video
    of another size), past its end black (official dummy pose)."""
    levels = [np.full((64, 48, 3), 10 * i, np.uint8) for i in range(20)]
    write_video(tmp_path / "video.mp4", np.stack(levels))
    write_video(tmp_path / "pose.mp4", np.stack([f[::2, ::2] for f in levels]))  # half size
    write_video(tmp_path / "short.mp4", np.stack(levels[:8]))
    cfg = preset("dance", num_frames=9, height=32, width=16)
    import random

    for k in range(4):
        item = VideoItem(tmp_path / "video.mp4", "", pose=tmp_path / "pose.mp4")
        s = draw_sample(item, cfg, 0, random.Random(k))
        assert s.pose.shape == s.frames.shape == (9, 32, 16, 3)
        got = s.pose.float().mean(dim=(1, 2, 3))
        want = s.frames.float().mean(dim=(1, 2, 3))
        assert (got - want).abs().max() < 3, (got, want)
        assert abs(float(want[0]) - 10 * s.start) < 3
    item = VideoItem(tmp_path / "video.mp4", "", pose=tmp_path / "short.mp4")
    s = draw_sample(item, cfg, 0, random.Random(1))
    for j in range(9):
        if s.start + j >= 8:
            assert int(s.pose[j].max()) == 0  # the pose video ended: black
        else:
            assert abs(float(s.pose[j].float().mean()) - 10 * (s.start + j)) < 3


def test_dance_trains_lora_and_pose_embedding_exports_and_resumes(kit):
    root, enc = kit
    dit = tiny_transformer(num_layers=1)
    cfg = _cfg(root, "run", max_steps=6, checkpoint_every=3)
    path = train(cfg, TrainModels(transformer=dit, encoders=enc))
    rows = read_rows(root / "run" / "loss.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(r["loss"])) for r in rows)

    # both the LoRA and the pose embedding trained (checkpoint vs the seeded fresh init)
    ckpt = load_file(str(root / "run" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    pose_keys = sorted(k for k in ckpt if k.startswith("svi_pose_embedding."))
    assert len(pose_keys) == 14  # 7 convs x (weight, bias)
    fresh = add_lora(tiny_transformer(num_layers=1), cfg)
    DanceFamily().attach(fresh, cfg)
    init = dict(fresh.named_parameters())
    assert all(not torch.equal(ckpt[k], init[k]) for k in pose_keys)
    assert any(float(v.abs().sum()) > 0 for k, v in ckpt.items() if "lora_B" in k)

    # the exported file: canonical LoRA + official dwpose_embedding keys, read by svi_core
    from svi_core.lora import apply_lora_to_diffusers, normalise_lora_keys
    from svi_core.pose import load_dance_file, pose_embedding_input, pose_tokens
    from svi_core.standalone.pose import pose_tokens_added

    sd = load_file(str(path))
    assert sorted(k for k in sd if k.startswith("dwpose_embedding.")) == sorted(
        "dwpose_embedding." + k[len("svi_pose_embedding.") :] for k in pose_keys
    )
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in sd
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["svi_mode"] == "dance"
    dance = load_dance_file(path, expected_dim=32)
    assert dance.pose.hidden == 4 and dance.pose.dim == 32
    s = cached_samples(root)[0]
    kw = _kw(s)
    dit.train(False)
    with torch.no_grad():
        x = pose_embedding_input(s.pose)
        trained = dit(**kw, svi_pose=(x, 1.0))[0]
        base = tiny_transformer(num_layers=1)
        apply_lora_to_diffusers(base, normalise_lora_keys(dance.lora, str(path)))
        tokens = pose_tokens(dance.pose, s.pose, round_bf16=False)
        with pose_tokens_added(base, tokens):
            loaded = base(**kw)[0]
        no_pose = base(**kw)[0]
    assert torch.allclose(trained, loaded, atol=1e-5), float((trained - loaded).abs().max())
    assert not torch.allclose(trained, no_pose, atol=1e-3)

    # resume: 3 + 3 steps == 6 steps, LoRA, pose embedding and banks bit for bit
    part = _cfg(root, "part", max_steps=3, checkpoint_every=3)
    train(part, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc))
    train(
        part.replace(max_steps=6, resume="latest"),
        TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc),
    )
    a = ckpt
    b = load_file(str(root / "part" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ba = load_file(str(root / "run" / "checkpoints" / "step_0000006" / "banks.rank0.safetensors"))
    bb = load_file(str(root / "part" / "checkpoints" / "step_0000006" / "banks.rank0.safetensors"))
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)
    assert [r["loss"] for r in read_rows(root / "part" / "loss.csv")] == [r["loss"] for r in rows]


def _setup(root: Path, enc: Encoders, **kw):
    cfg = _cfg(root, "probe", **kw)
    if not list((root / "cache").glob("manifest-*.json")):
        from train.cache import build_cache

        build_cache(cfg, list_dance_videos(cfg), enc)
    model = add_lora(tiny_transformer(num_layers=1), cfg)
    fam = DanceFamily()
    fam.attach(model, cfg)
    return cfg, fam, model, cached_samples(root)


def _loss(model, sample, cfg, condition: StepCondition, banks=None) -> float:
    gen, rng = step_rngs(0, 0, 7)
    banks = banks or ErrorBanks(cfg.bank_cells, cfg.bank_capacity, cfg.shift, cfg.bank_dtype)
    probs = InjectionProbs(cfg.noise_prob, cfg.latent_prob, cfg.condition_prob, cfg.clean_prob)
    loss, _mse, _ = erft_step(
        model,
        sample,
        cfg,
        TrainingSchedule.build(),
        banks,
        probs,
        gen,
        rng,
        torch.device("cpu"),
        torch.float32,
        True,
        condition,
    )
    return float(loss.detach())


def test_the_pose_reaches_the_model_and_its_dropout(kit):
    from svi_core.pose import pose_embedding_input

    root, enc = kit
    cfg, fam, model, samples = _setup(root, enc)
    s = samples[0]
    x = pose_embedding_input(s.pose)
    other = pose_embedding_input(samples[1].pose)
    with_pose = _loss(model, s, cfg, StepCondition(kwargs={"svi_pose": (x, 1.0)}))
    assert with_pose != _loss(model, s, cfg, StepCondition(kwargs={"svi_pose": (other, 1.0)}))
    dropped = _loss(model, s, cfg, StepCondition(kwargs={"svi_pose": (x, 0.0)}))
    assert dropped == _loss(model, s, cfg, StepCondition()) != with_pose  # zero output = no pose
    # a dropped pose still gives the embedding (zero) gradients, so DDP sees every parameter
    model.zero_grad(set_to_none=True)
    gen, rng = step_rngs(0, 0, 7)
    banks = ErrorBanks(cfg.bank_cells, cfg.bank_capacity, cfg.shift, cfg.bank_dtype)
    loss, _, _ = erft_step(
        model, s, cfg, TrainingSchedule.build(), banks, InjectionProbs(), gen, rng,
        torch.device("cpu"), torch.float32, True, StepCondition(kwargs={"svi_pose": (x, 0.0)}),
    )  # fmt: skip
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("svi_pose_embedding.")]
    assert len(grads) == 14 and all(g is not None and not g.any() for g in grads)

    # dropout rates: pose 1 - 0.95 x 0.9 = 14.5 %, y + CLIP 10 %, independent
    n, pose_off, image_off, both = 4000, 0, 0, 0
    for step in range(n):
        c = fam.step_condition(s, cfg, condition_rng(0, 0, step), torch.device("cpu"))
        assert c.kwargs["svi_pose"][1] == (0.0 if c.dropped else 1.0)
        pose_off += c.dropped
        image_off += c.null_image
        both += c.dropped and c.null_image
    assert 0.13 < pose_off / n < 0.16 and 0.085 < image_off / n < 0.115
    assert 0.008 < both / n < 0.022  # about 0.145 x 0.1


def test_null_image_zeroes_y_and_clip_and_skips_the_condition_error(kit):
    import dataclasses

    root, enc = kit
    cfg, _fam, model, samples = _setup(
        root, enc, noise_prob=0.0, latent_prob=0.0, condition_prob=1.0, clean_prob=0.0
    )
    s = samples[0]
    banks = ErrorBanks(cfg.bank_cells, cfg.bank_capacity, cfg.shift, cfg.bank_dtype)
    err = torch.randn_like(s.latent.float())
    banks.add(err, err, 500.0)
    nulled = _loss(model, s, cfg, StepCondition(null_image=True), banks)
    zero = dataclasses.replace(s, y=torch.zeros_like(s.y), clip=torch.zeros_like(s.clip))
    no_error = cfg.replace(condition_prob=0.0)
    assert nulled == _loss(model, zero, no_error, StepCondition(), banks)
    assert nulled != _loss(model, zero, cfg, StepCondition(), banks)  # the error would change it


def test_init_lora_from_a_unianimate_style_checkpoint(kit, tmp_path: Path):
    from svi_core.pose import PoseEmbedding

    root, enc = kit
    cfg = _cfg(root, "init")
    model = add_lora(tiny_transformer(num_layers=1), cfg)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for name, p in model.named_parameters():
        if ".lora_" in name:
            official = (
                name.replace("attn1.to_q", "self_attn.q")
                .replace("attn2.to_k", "cross_attn.k")
                .replace("ffn.net.0.proj", "ffn.0")
            )
            if official != name:  # three of the ten layers, as official names with .default
                sd["pipe.dit." + official] = torch.randn(p.shape, generator=g)
    pose = PoseEmbedding(32, 4)
    for k, v in pose.state_dict().items():
        sd["dwpose_embedding." + k] = torch.randn(v.shape, generator=g)
    sd["randomref_embedding_pose.0.weight"] = torch.zeros(1)  # UniAnimate extra, ignored
    ckpt = tmp_path / "UniAnimate-Lora.ckpt"
    torch.save(sd, ckpt)
    fam = DanceFamily()
    c = cfg.replace(init_lora=str(ckpt))
    fam.check(c)
    fam.attach(model, c)
    fam.init_weights(model, c)
    params = dict(model.named_parameters())
    scale = 1.0 / (c.lora_alpha / c.lora_rank)  # file: no alpha (scale 1); ours alpha / rank 2
    for key, v in sd.items():
        if key.startswith("pipe.dit."):
            name = (
                key[len("pipe.dit.") :]
                .replace("self_attn.q", "attn1.to_q")
                .replace("cross_attn.k", "attn2.to_k")
                .replace("ffn.0", "ffn.net.0.proj")
            )
            want = v * scale if ".lora_B." in key else v
            assert torch.allclose(params[name], want), key
        elif key.startswith("dwpose_embedding."):
            assert torch.equal(params["svi_pose_embedding." + key[17:]], v), key
    # refusals: another rank, another pose width, Python objects in the file
    with pytest.raises(SVIError, match="lora_rank"):  # at the start, before any work
        fam.check(c.replace(lora_rank=8))
    with pytest.raises(SVIError, match="lora_rank"):  # and at init
        m2 = add_lora(tiny_transformer(num_layers=1), c.replace(lora_rank=8))
        fam.attach(m2, c.replace(lora_rank=8))
        fam.init_weights(m2, c.replace(lora_rank=8))
    bad = tmp_path / "bad.ckpt"
    torch.save({"dwpose_embedding.0.weight": torch.zeros(1), "note": object()}, bad)
    with pytest.raises(SVIError, match="Python objects"):
        fam.check(c.replace(init_lora=str(bad)))
    wide = dict(sd)
    wide["dwpose_embedding.12.weight"] = torch.zeros(64, 4, 1, 2, 2)
    wide["dwpose_embedding.12.bias"] = torch.zeros(64)
    save_file({k: v.contiguous() for k, v in wide.items()}, str(tmp_path / "wide.safetensors"))
    c_wide = c.replace(init_lora=str(tmp_path / "wide.safetensors"))
    with pytest.raises(SVIError, match="64 wide"):  # at the start, with the DiT handed in
        fam.check(c_wide, tiny_transformer(num_layers=1))
    m3 = add_lora(tiny_transformer(num_layers=1), c)
    fam.attach(m3, c)
    with pytest.raises(SVIError, match="64 wide"):
        fam.init_weights(m3, c_wide)


@pytest.mark.slow
def test_two_processes_fsdp_train_the_pose_embedding(kit, tmp_path: Path):
    """torchrun, 2 CPU processes (gloo), FSDP2: the pose embedding runs inside the DiT's forward
    (a pre-hook), is sharded with the root and gathered for the export. (DDP and FSDP gave
    bit-identical exports when run by hand; one strategy here keeps the test shorter.)"""
    import os
    import subprocess
    import sys
    import textwrap

    root, _ = kit
    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(repo)!r})
            import torch
            torch.set_num_threads(1)
            from train.cache import Encoders, diffusers_vae_encoder
            from train.config import preset
            from train.loop import TrainModels, train
            from train.tiny import tiny_clip_encoder, tiny_text_encoder, tiny_transformer, tiny_vae

            enc = Encoders(diffusers_vae_encoder(tiny_vae()), tiny_text_encoder(),
                           tiny_clip_encoder(), "tiny-vae", "tiny-text", "tiny-clip")
            cfg = preset("dance", dataset={str(root / "ds")!r}, output_dir=sys.argv[2],
                         cache_dir=sys.argv[2] + "-cache", num_frames=5, height=48, width=32,
                         augment_draws=1, precision="fp32", lora_rank=4, lora_alpha=4.0,
                         pose_hidden=4, bank_warmup_iters=2, max_steps=3, checkpoint_every=3,
                         export_dtype="fp32", distributed=sys.argv[1])
            train(cfg, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc))
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "fsdp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
         "fsdp", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from svi_core.pose import load_dance_file

    dance = load_dance_file(out / "svi-dance-erft.safetensors", expected_dim=32)
    fresh = add_lora(tiny_transformer(num_layers=1), _cfg(root, "x", pose_hidden=4))
    DanceFamily().attach(fresh, _cfg(root, "x", pose_hidden=4))
    init = fresh.svi_pose_embedding.state_dict()
    assert all(not torch.equal(v, init[k]) for k, v in dance.pose.state_dict().items())
