"""Training data and cache (train/data.py, train/cache.py, train/config.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from svi_core.errors import SVIError
from train.cache import Encoders, FeatureCache, build_cache, diffusers_vae_encoder, load_sample
from train.config import load_config, preset
from train.data import (
    conditioning_pixels,
    crop_box,
    draw_sample,
    list_videos,
    read_clip,
)
from train.tiny import moving_frames, tiny_clip_encoder, tiny_text_encoder, write_video


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (no spinning on the shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _frames_with_index(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame i is flat grey level 10 * i (survives the codec well)."""
    return np.stack([np.full((h, w, 3), 10 * i, dtype=np.uint8) for i in range(n)])


def test_list_videos_official_csv_and_plain(tmp_path: Path):
    cat = tmp_path / "cats"
    write_video(cat / "a.mp4", moving_frames(6, 32, 48))
    write_video(cat / "b.mp4", moving_frames(6, 32, 48, seed=1))
    (cat / "cats.csv").write_text('Filename,Video Description\na.mp4,"a cat, sleeping"\n')
    plain = tmp_path / "plain"
    write_video(plain / "c.mp4", moving_frames(6, 32, 48))
    (plain / "c.txt").write_text("a dog\n")
    write_video(plain / "d.mp4", moving_frames(6, 32, 48))
    items = {p.path.name: p.caption for p in list_videos(tmp_path, default_caption="x")}
    assert items == {
        "a.mp4": "a cat, sleeping",
        "b.mp4": "A video from cats category",  # official fallback in a CSV folder
        "c.mp4": "a dog",
        "d.mp4": "x",
    }


def test_dataset_errors(tmp_path: Path):
    with pytest.raises(SVIError, match="does not exist"):
        list_videos(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SVIError, match="holds no videos"):
        list_videos(tmp_path)
    sub = tmp_path / "set"
    write_video(sub / "a.mp4", moving_frames(6, 32, 48))
    (sub / "set.csv").write_text("Filename,Video Description\na.mp4,ok\nmissing.mp4,gone\n")
    with pytest.raises(SVIError, match=r"missing\.mp4"):
        list_videos(tmp_path)
    (sub / "set.csv").write_text("name,caption\na.mp4,ok\n")
    with pytest.raises(SVIError, match="Video Description"):
        list_videos(tmp_path)


def test_read_clip_consecutive_frames(tmp_path: Path):
    path = write_video(tmp_path / "v.mp4", _frames_with_index(20))
    rng = random.Random(0)
    starts = set()
    for _ in range(6):
        clip = read_clip(path, 9, rng)
        assert clip.shape == (9, 32, 48, 3) and clip.dtype == np.uint8
        levels = clip.reshape(9, -1).mean(1) / 10
        first = int(round(levels[0]))
        assert np.allclose(levels, np.arange(first, first + 9), atol=0.5)
        assert 0 <= first <= 20 - 9 - 5
        starts.add(first)
    assert len(starts) > 1
    short = read_clip(write_video(tmp_path / "s.mp4", _frames_with_index(4)), 9, rng)
    assert short.shape[0] == 9
    assert np.array_equal(short[3], short[8])  # last frame repeated


def test_crop_box_aspect_and_range():
    rng = random.Random(1)
    for _ in range(200):
        # landscape wider than 832:480 -> the height is drawn, width follows
        x, y, cw, ch = crop_box(1920, 1080, 480, 832, 14, rng)
        assert 1080 - 1080 // 14 <= ch <= 1080 and cw == int(ch / (480 / 832))
        assert 0 <= x <= 1920 - cw and y + ch <= 1080
        # portrait -> the width is drawn in [w - w // 14, w]
        x, y, cw, ch = crop_box(480, 640, 480, 832, 14, rng)
        assert 480 - 480 // 14 <= cw <= 480 and ch == int(cw * 480 / 832)


def test_draw_sample_motion_and_padding(tmp_path: Path):
    path = write_video(tmp_path / "v.mp4", _frames_with_index(24, 48, 64))
    from train.data import VideoItem

    item = VideoItem(path=path, caption="c")
    film = preset("film", num_frames=9, height=32, width=48)
    rng = random.Random(0)
    ks = [draw_sample(item, film, 0, rng).motion.shape[0] for _ in range(20)]
    assert set(ks) == {1, 5} and ks.count(5) > ks.count(1)
    s = draw_sample(item, film, 0, random.Random(3))
    assert s.frames.shape == (9, 32, 48, 3) and s.padding_frame is None
    v = conditioning_pixels(s, film)
    k = s.motion.shape[0]
    assert v.shape == (1, 3, 9, 32, 48)
    assert torch.all(v[:, :, k:] == 0)  # film pads with zeros (mid-grey)
    assert torch.allclose(v[0, :, 0], s.frames[0].permute(2, 0, 1).float() * 2 / 255 - 1)
    shot = preset("shot", num_frames=9, height=32, width=48)
    s = draw_sample(item, shot, 0, random.Random(4))
    assert s.motion.shape[0] == 1 and s.padding_frame is not None
    assert any(torch.equal(s.padding_frame, f) for f in s.frames)
    v = conditioning_pixels(s, shot)
    pad = s.padding_frame.permute(2, 0, 1).float() * 2 / 255 - 1
    assert all(torch.allclose(v[0, :, i], pad) for i in range(1, 9))


def _encoders(calls: list[str]) -> Encoders:
    from train.tiny import tiny_vae

    vae_encode = diffusers_vae_encoder(tiny_vae())
    text, clip = tiny_text_encoder(), tiny_clip_encoder()

    def video(px):
        calls.append("video")
        return vae_encode(px)

    return Encoders(video, text, clip, video_id="vae", text_id="t5", clip_id="clip")


def test_cache_build_hit_and_unreadable(tmp_path: Path):
    ds = tmp_path / "ds"
    write_video(ds / "a.mp4", moving_frames(12, 32, 48))
    (ds / "a.txt").write_text("a red ball")
    (ds / "broken.mp4").write_bytes(b"\x00not a video")
    cfg = preset(
        "shot", dataset=str(ds), output_dir=str(tmp_path / "run"), num_frames=5, height=32,
        width=48, augment_draws=1, precision="fp32",
    )  # fmt: skip
    calls: list[str] = []
    items = list_videos(ds)
    samples, skipped = build_cache(cfg, items, _encoders(calls))
    assert skipped == 1 and len(samples) == 1 and calls.count("video") == 2
    s = load_sample(FeatureCache(cfg.cache_path), samples[0])
    assert s.latent.shape == (1, 16, 2, 4, 6) and s.y.shape == (1, 20, 2, 4, 6)
    assert torch.all(s.y[:, :4, 0] == 1) and torch.all(s.y[:, :4, 1:] == 0)
    assert s.context.shape == (1, 512, 32) and s.clip.shape == (1, 257, 32)

    # second build: read from the manifest, no encoder is called
    def boom(*_):
        raise AssertionError("encoder called although the cache is complete")

    again, skipped2 = build_cache(cfg, items, Encoders(boom, boom, boom, "vae", "t5", "clip"))
    assert again == samples and skipped2 == 1
    # content-keyed: two draws per video re-encode only the new draw
    calls.clear()
    more = build_cache(cfg.replace(augment_draws=2), items, _encoders(calls))[0]
    assert len(more) == 2 and more[0] == samples[0] and calls.count("video") == 2


def test_context_file_replaces_text_and_clip(tmp_path: Path):
    from safetensors.torch import save_file

    ds = tmp_path / "ds"
    write_video(ds / "a.mp4", moving_frames(8, 32, 48))
    ctx = tmp_path / "ctx.safetensors"
    save_file({"context": torch.ones(512, 32), "clip_fea": torch.zeros(257, 32)}, str(ctx))
    cfg = preset(
        "shot", dataset=str(ds), output_dir=str(tmp_path / "run"), num_frames=5, height=32,
        width=48, augment_draws=1, context_file=str(ctx), precision="fp32",
    )  # fmt: skip
    calls: list[str] = []
    enc = _encoders(calls)
    enc = Encoders(enc.encode_video, None, None, "vae")
    samples, _ = build_cache(cfg, list_videos(ds), enc)
    s = load_sample(FeatureCache(cfg.cache_path), samples[0])
    assert torch.all(s.context == 1) and torch.all(s.clip == 0)


def test_config_presets_and_errors(tmp_path: Path):
    shot, film = preset("shot"), preset("film")
    assert (shot.num_motion_frames, shot.padding, shot.clean_prob) == (1, "random_frame", 0.2)
    assert (film.num_motion_frames, film.padding, film.clean_prob) == (5, "zeros", 0.5)
    for c in (shot, film):
        assert (c.lora_rank, c.lora_alpha, c.learning_rate, c.grad_clip) == (128, 128.0, 1e-4, 1.0)
        assert (c.noise_prob, c.latent_prob, c.condition_prob) == (0.01, 0.9, 0.9)
        assert (c.bank_cells, c.bank_capacity, c.y_error_num, c.bank_warmup_iters) == (
            50,
            500,
            3,
            50,
        )
        assert (c.num_frames, c.height, c.width, c.checkpoint_every) == (81, 480, 832, 100)
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "film"\n[x]\n')
    with pytest.raises(SVIError, match="outside|unknown config key"):
        load_config(toml)
    toml.write_text('[train]\npreset = "film"\nlearning_rat = 1e-3\n')
    with pytest.raises(SVIError, match="unknown config key 'learning_rat'.*'learning_rate'"):
        load_config(toml)
    toml.write_text('[train]\npreset = "film"\nlearning_rate = 2e-4\nmax_steps = 7\n')
    c = load_config(toml, max_steps="9")
    assert (c.mode, c.learning_rate, c.max_steps) == ("film", 2e-4, 9)
    with pytest.raises(SVIError, match="num_frames=80"):
        preset("shot", num_frames=80)
    with pytest.raises(SVIError, match="'attn.q' is not a Wan block module"):
        load_config(None, lora_targets="self_attn.q,attn.q")
    with pytest.raises(SVIError, match="plain file name"):
        preset("shot", export_name="../elsewhere.safetensors")
    with pytest.raises(SVIError, match="expects"):
        load_config(None, lora_rank="many")
    # non-finite and absurd numbers, and a file name too long to write, are refused up front
    # (flags arrive as strings: "nan" parses as a float)
    with pytest.raises(SVIError, match="learning_rate=nan must be a finite number in"):
        load_config(None, learning_rate="nan")
    with pytest.raises(SVIError, match="shift=inf must be a finite number in \\[0.1, 100\\]"):
        load_config(None, shift="inf")
    with pytest.raises(SVIError, match="width=160000 \\(largest valid: 4096\\)"):
        load_config(None, width="160000", height="160000")
    with pytest.raises(SVIError, match="export_name is 300 characters.*at most 200 bytes"):
        preset("shot", export_name="x" * 300)
    with pytest.raises(SVIError, match="lora_rank=100000 must be an integer in \\[1, 4096\\]"):
        preset("shot", lora_rank=100000)
    # the fingerprint ignores run-only fields, not training fields
    assert shot.fingerprint() == shot.replace(max_steps=5, output_dir="x").fingerprint()
    assert shot.fingerprint() != shot.replace(learning_rate=2e-4).fingerprint()
