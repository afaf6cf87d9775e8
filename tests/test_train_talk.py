"""SVI-Talk training on tiny models (train/talk.py, train/conditions.py, the talk preset).

Tiny random DiT (1 block, width 32), tiny MultiTalk modules written under the official key names,
a tiny wav2vec2 folder, and 25 fps videos with a speech-like sound muxed in (or a wav beside).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_support import fixtures_dir
from safetensors import safe_open
from safetensors.torch import load_file
from train_support import cached_entries, cached_samples, read_rows

from svi_core.errors import SVIError
from train.cache import Encoders
from train.conditions import condition_rng
from train.config import TrainConfig, load_config, preset
from train.data import VideoItem
from train.erft import InjectionProbs, TrainingSchedule
from train.loop import TrainModels, add_lora, erft_step, step_rngs, train
from train.talk import TalkFamily, list_talk_videos, wav2vec2_encoder
from train.tiny import (
    moving_frames,
    speech_like,
    tiny_encoders,
    tiny_multitalk,
    tiny_transformer,
    tiny_wav2vec2,
    write_video,
    write_video_with_audio,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Dataset (one mp4 with its own speech, one mp4 + wav beside), wav2vec2, MultiTalk."""
    from svi_core.talk.audio import write_wav

    root = tmp_path_factory.mktemp("talk")
    ds = root / "ds"
    write_video_with_audio(ds / "a.mp4", moving_frames(30, 32, 48, seed=0), speech_like(1.2))
    write_video(ds / "b.mp4", moving_frames(30, 32, 48, seed=1), fps=25)
    write_wav(ds / "b.wav", speech_like(1.2, seed=1), 16000)
    w2v = tiny_wav2vec2(root / "w2v")
    mt = tiny_multitalk(root / "multitalk.safetensors", tiny_transformer(num_layers=1))
    features, audio_id = wav2vec2_encoder(str(w2v))
    enc = dataclasses.replace(tiny_encoders(), audio_features=features, audio_id=audio_id)
    return root, enc, mt


def _cfg(root: Path, mt: Path, name: str, **kw) -> TrainConfig:
    base = dict(
        dataset=str(root / "ds"),
        output_dir=str(root / name),
        cache_dir=str(root / "cache"),
        multitalk_path=str(mt),
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
    return preset("talk", **base)


def test_talk_preset_is_the_official_recipe():
    c = preset("talk")
    # scripts/train/svi_talk.sh + train_svi_talk.py argparse defaults it keeps
    assert (c.height, c.width) == (480, 640)
    assert (c.num_motion_frames, c.padding, c.y_error_num, c.clean_prob) == (
        1,
        "random_frame",
        3,
        0.2,
    )
    assert (c.lora_rank, c.lora_alpha, c.learning_rate, c.max_epochs) == (128, 128.0, 1e-4, 10)
    assert (c.noise_prob, c.latent_prob, c.condition_prob, c.clean_bank_update_prob) == (
        0.01,
        0.9,
        0.9,
        0.1,
    )
    assert (c.bank_cells, c.bank_capacity, c.bank_warmup_iters) == (50, 500, 50)
    assert c.fixed_caption == "the person is speaking" and c.audio_dropout == 0.1
    assert c.center_square and c.resize == "crop"
    assert c.export_file.name == "svi-talk-erft.safetensors"
    # the fields the talk preset added leave the shot fingerprint as it was computed before
    from svi_core.run_store import sha256_json
    from train.config import ADDED_FIELDS, RUN_ONLY_FIELDS

    shot = preset("shot")
    old = {
        k: v
        for k, v in shot.to_dict().items()
        if k not in RUN_ONLY_FIELDS and k not in ADDED_FIELDS
    }
    assert shot.fingerprint() == sha256_json(old)[:16]
    assert preset("talk").fingerprint() != preset("talk", audio_dropout=0.2).fingerprint()
    with pytest.raises(SVIError, match="audio_dropout"):
        preset("shot", audio_dropout=0.1)


def test_listing_finds_the_speech_and_refuses_pickles(tmp_path: Path):
    ds = tmp_path / "ds"
    write_video(ds / "videos" / "x.mp4", moving_frames(6, 32, 48), fps=25)
    (ds / "audios").mkdir()
    (ds / "audios" / "x.wav").write_bytes(b"RIFF")
    write_video(ds / "own.mp4", moving_frames(6, 32, 48), fps=25)
    write_video(ds / "feat.mp4", moving_frames(6, 32, 48), fps=25)
    (ds / "feat.audio.safetensors").write_bytes(b"x")
    items = {it.path.name: it for it in list_talk_videos(preset("talk", dataset=str(ds)))}
    assert items["x.mp4"].audio == ds / "audios" / "x.wav"  # official raw layout
    assert items["own.mp4"].audio == ds / "own.mp4"  # the video's own audio stream
    assert items["feat.mp4"].audio_features == ds / "feat.audio.safetensors"
    assert items["feat.mp4"].audio is None
    pre = ds / "preprocessed" / "0a2b"
    pre.mkdir(parents=True)
    (pre / "frame_data.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(SVIError, match="never loaded"):
        list_talk_videos(preset("talk", dataset=str(ds)))


def test_talk_trains_exports_and_resumes_bit_exactly(kit):
    root, enc, mt = kit
    dit = tiny_transformer(num_layers=1)
    frozen = {k: v.clone() for k, v in load_file(str(mt)).items()}
    cfg = _cfg(root, mt, "run", max_steps=6, checkpoint_every=3)
    path = train(cfg, TrainModels(transformer=dit, encoders=enc))
    rows = read_rows(root / "run" / "loss.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(r["loss"])) and float(r["grad_norm"]) > 0 for r in rows)
    assert int(rows[-1]["bank_entries"]) > 0

    # only the LoRA trained: the MultiTalk modules on the DiT still hold the file's weights
    for k, v in dit.svi_multitalk.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    ckpt = load_file(str(root / "run" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    assert ckpt and all(".lora_A." in k or ".lora_B." in k for k in ckpt)

    # the exported file: canonical LoRA keys + alpha, marked as a talk LoRA
    sd = load_file(str(path))
    assert path.name == "svi-talk-erft.safetensors"
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in sd
    assert "diffusion_model.blocks.0.ffn.2.lora_B.weight" in sd
    assert not any("audio" in k or "norm_x" in k for k in sd)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["svi_mode"] == "talk"

    # it loads back through svi_core: base DiT + merged LoRA + MultiTalk from its file, audio
    # through svi_core's hook == the trained peft model with the audio keyword
    from svi_core.lora import apply_lora_to_diffusers, load_lora
    from svi_core.standalone.multitalk import attach_multitalk, load_multitalk

    samples = cached_samples(root)
    s = samples[0]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(s.latent.shape, generator=g)
    kw = dict(
        hidden_states=torch.cat([x, s.y.float()], 1),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=s.context.float(),
        encoder_hidden_states_image=s.clip.float(),
        return_dict=False,
    )
    dit.train(False)
    with torch.no_grad():
        trained = dit(**kw, svi_audio=s.audio)[0]
        base = tiny_transformer(num_layers=1)
        apply_lora_to_diffusers(base, load_lora(path))
        modules = load_multitalk(mt, num_heads=2)
        handle = attach_multitalk(base, modules)
        with handle.audio(modules.project(*s.audio)):
            loaded = base(**kw)[0]
        silent = base(**kw)[0]
    assert torch.allclose(trained, loaded, atol=1e-5), float((trained - loaded).abs().max())
    assert not torch.allclose(trained, silent, atol=1e-3)  # the audio changes the output

    # resume: 3 steps, then 3 more from the checkpoint == the 6-step run, bit for bit
    part = _cfg(root, mt, "part", max_steps=3, checkpoint_every=3)
    train(part, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc))
    train(
        part.replace(max_steps=6, resume="latest"),
        TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc),
    )
    a = load_file(str(root / "run" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    b = load_file(str(root / "part" / "checkpoints" / "step_0000006" / "lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ba = load_file(str(root / "run" / "checkpoints" / "step_0000006" / "banks.rank0.safetensors"))
    bb = load_file(str(root / "part" / "checkpoints" / "step_0000006" / "banks.rank0.safetensors"))
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)
    assert [r["loss"] for r in read_rows(root / "part" / "loss.csv")] == [r["loss"] for r in rows]


def _model_and_sample(root: Path, mt: Path, enc: Encoders, **kw):
    cfg = _cfg(root, mt, "probe", **kw)
    if not list((root / "cache").glob("manifest-*.json")):
        from train.cache import build_cache

        build_cache(cfg, list_talk_videos(cfg), enc)
    model = add_lora(tiny_transformer(num_layers=1), cfg)
    fam = TalkFamily()
    fam.attach(model, cfg)
    samples = cached_samples(root)
    fam.check_sample(model, samples[0])
    return cfg, fam, model, samples


def _loss(model, sample, cfg, audio, step: int = 7) -> torch.Tensor:
    from train.banks import ErrorBanks
    from train.conditions import StepCondition

    gen, rng = step_rngs(0, 0, step)
    banks = ErrorBanks(cfg.bank_cells, cfg.bank_capacity, cfg.shift, cfg.bank_dtype)
    loss, _mse, _ = erft_step(
        model,
        sample,
        cfg,
        TrainingSchedule.build(),
        banks,
        InjectionProbs(),
        gen,
        rng,
        torch.device("cpu"),
        torch.float32,
        True,
        StepCondition(kwargs={"svi_audio": audio}),
    )
    return loss


def test_the_audio_reaches_the_model_and_checkpointing_recomputes_it(kit):
    root, enc, mt = kit
    cfg, fam, model, samples = _model_and_sample(root, mt, enc)
    s = samples[0]
    model.train()
    zeros = tuple(torch.zeros_like(t) for t in s.audio)
    a = float(_loss(model, s, cfg, s.audio).detach())
    b = float(_loss(model, s, cfg, zeros).detach())
    c = float(_loss(model, s, cfg, tuple(t * 2 for t in s.audio)).detach())
    assert a != b and a != c
    assert a == float(_loss(model, s, cfg, s.audio).detach())  # same inputs, same loss

    # gradients with gradient checkpointing (blocks recomputed during backward, the audio
    # tokens must still be set) == without
    grads = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        if checkpointing:
            model.enable_gradient_checkpointing()
        _loss(model, s, cfg, s.audio).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 20  # 10 layers x A, B
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n
    assert not any("svi_multitalk" in n for n in grads[0])  # frozen


def test_audio_dropout_rate_and_zero_windows(kit):
    root, enc, mt = kit
    cfg, fam, _model, samples = _model_and_sample(root, mt, enc)
    s = samples[0]
    n, dropped = 4000, 0
    for step in range(n):
        cond = fam.step_condition(s, cfg, condition_rng(0, 0, step), torch.device("cpu"))
        first, latter = cond.kwargs["svi_audio"]
        if cond.dropped:
            dropped += 1
            assert not first.any() and not latter.any()
        else:
            assert torch.equal(first, s.audio[0]) and torch.equal(latter, s.audio[1])
        assert not cond.null_image  # talk has no y / CLIP dropout
    assert 0.085 < dropped / n < 0.115, dropped / n  # official p 0.1


def test_windows_start_at_the_clip(kit):
    """The cached sample's audio windows are the recording's features cut at the clip start."""
    from svi_core.talk import clip_audio_windows, load_audio

    root, enc, mt = kit
    _cfg_, _fam, _m, samples = _model_and_sample(root, mt, enc)
    entries = cached_entries(root)
    for s, e in zip(samples, entries, strict=True):
        item = VideoItem(Path(e.video), "", audio=Path(e.video))
        src = (
            item.path.with_suffix(".wav") if item.path.with_suffix(".wav").is_file() else item.path
        )
        feats = enc.audio_features(load_audio(src).samples)
        first, latter = clip_audio_windows(feats, e.audio_start, 5)
        assert torch.equal(first, s.audio[0]) and torch.equal(latter, s.audio[1])
        assert feats.shape[0] == 30  # 1.2 s at 25 fps


def test_bad_talk_input(kit, tmp_path: Path, caplog):
    root, enc, mt = kit
    with pytest.raises(SVIError, match="multitalk_path"):
        train(_cfg(root, mt, "x", multitalk_path=""), TrainModels(encoders=enc))
    not_mt = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file

    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 2)}, str(not_mt))
    with pytest.raises(SVIError, match="not a MultiTalk file"):
        train(_cfg(root, mt, "x", multitalk_path=str(not_mt)), TrainModels(encoders=enc))
    from train.tiny import tiny_multitalk_file

    wide = tiny_multitalk_file(tmp_path / "wide.safetensors", dim=64, num_layers=1, num_heads=4)
    cfg = _cfg(root, mt, "wide", multitalk_path=str(wide), cache_dir=str(tmp_path / "cw"))
    with pytest.raises(SVIError, match="width 64"):
        train(cfg, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc))
    assert not (tmp_path / "cw").exists()  # refused before any encoding
    # a 30 fps video and a silent one are skipped with the reason; nothing readable: refused
    bad = tmp_path / "bad"
    write_video_with_audio(bad / "fast.mp4", moving_frames(36, 32, 48), speech_like(1.2), fps=30)
    write_video_with_audio(bad / "mute.mp4", moving_frames(30, 32, 48), np.zeros(19200, np.float32))
    cfg = _cfg(root, mt, "bad", dataset=str(bad), cache_dir=str(tmp_path / "c"), max_steps=1)
    with pytest.raises(SVIError, match="none of the 2 videos"):
        train(cfg, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=enc))
    text = caplog.text
    assert "30 fps" in text and "-r 25" in text and "silent" in text
    # the audio cache needs a wav2vec2 when it is empty
    nokey = Encoders(enc.encode_video, enc.encode_text, enc.clip_features, "v", "t", "c")
    shutil.rmtree(tmp_path / "c", ignore_errors=True)
    cfg = _cfg(root, mt, "nokey", cache_dir=str(tmp_path / "c2"), max_steps=1)
    with pytest.raises(SVIError, match="wav2vec_path"):
        train(cfg, TrainModels(transformer=tiny_transformer(num_layers=1), encoders=nokey))


def test_cli_and_toml_know_the_talk_preset(tmp_path: Path, capsys):
    from train.cli import main

    assert main(["--preset", "talk", "--print-config"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "talk" and (out["height"], out["width"]) == (480, 640)
    toml = tmp_path / "t.toml"
    toml.write_text(
        '[train]\npreset = "talk"\nmultitalk_path = "m.safetensors"\naudio_dropout = 0.2\n'
    )
    c = load_config(toml)
    assert c.mode == "talk" and c.audio_dropout == 0.2 and c.y_error_num == 3
    toml.write_text('preset = "talk"\naudio_drop = 0.2\n')
    with pytest.raises(SVIError, match="audio_dropout"):
        load_config(toml)


def test_feature_files_official_layout(kit, tmp_path: Path):
    """``name.audio.safetensors`` in the official [12, T_a, 768]-style layout is transposed."""
    from safetensors.torch import save_file

    from train.talk import read_feature_file

    f = tmp_path / "v.audio.safetensors"
    feats = torch.randn(12, 40, 8)
    save_file({"features": feats}, str(f))
    assert torch.equal(read_feature_file(f), feats.transpose(0, 1))
    save_file({"features": feats.transpose(0, 1).contiguous()}, str(f))
    assert torch.equal(read_feature_file(f), feats.transpose(0, 1))
    random.seed(0)


FIXTURES = fixtures_dir()


@pytest.mark.skipif(not (FIXTURES / "wan21_i2v_dit").is_dir(), reason=f"no fixtures at {FIXTURES}")
def test_cli_talk_with_model_files(kit, tmp_path: Path):
    """`python -m train --preset talk` loads an official-layout DiT, VAE, MultiTalk file and a
    local wav2vec2 folder through svi_core's loaders (text / CLIP from a context file)."""
    from safetensors.torch import save_file

    from svi_core.lora import load_lora
    from train.cli import main
    from train.tiny import tiny_multitalk_file

    root, _enc, _mt = kit
    dit = json.loads((FIXTURES / "wan21_i2v_dit" / "config.json").read_text())
    dim, layers, heads = dit["dim"], dit["num_layers"], dit["num_heads"]
    mt = tiny_multitalk_file(tmp_path / "multitalk.safetensors", dim, layers, heads)
    ctx = tmp_path / "ctx.safetensors"
    g = torch.Generator().manual_seed(0)
    context = torch.zeros(512, dit["text_dim"])
    context[:5] = torch.randn(5, dit["text_dim"], generator=g)
    clip = torch.randn(257, dit["clip_dim"], generator=g)
    save_file({"context": context, "clip_fea": clip}, str(ctx))
    args = [
        "--preset", "talk", "--dataset", str(root / "ds"), "--output_dir", str(tmp_path / "out"),
        "--dit_path", str(FIXTURES / "wan21_i2v_dit" / "model.safetensors"),
        "--vae_path", str(FIXTURES / "wan21_vae" / "model.safetensors"),
        "--context_file", str(ctx), "--multitalk_path", str(mt),
        "--wav2vec_path", str(root / "w2v"), "--num_frames", "5", "--height", "32",
        "--width", "48", "--augment_draws", "1", "--lora_rank", "4", "--lora_alpha", "4",
        "--precision", "fp32", "--max_steps", "2",
    ]  # fmt: skip
    assert main(args) == 0
    lora = load_lora(tmp_path / "out" / "svi-talk-erft.safetensors")
    assert len(lora) == layers * 10 and lora.rank == 4
    assert len(list((tmp_path / "out" / "cache" / "audio").glob("*.safetensors"))) == 2
    # a MultiTalk file for another width is refused before training
    wrong = tiny_multitalk_file(tmp_path / "wrong.safetensors", 2 * dim, layers, heads)
    args[args.index(str(mt))] = str(wrong)
    assert main(args + ["--output_dir", str(tmp_path / "out2")]) == 2
    assert not (tmp_path / "out2" / "cache").exists()  # refused before any encoding
