"""The per-clip schedule: one parser for the text and TOML spellings, its checks, and what it
does to each clip through the loop (seeds, prompts, CFG, LoRA strengths, anchors, keyframes),
resume / extend rules included."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from safetensors.torch import load_file
from test_loop import PROMPTS, H, W, reference, settings

from svi_core.clip_schedule import (
    LoadedLora,
    ScheduleCondition,
    load_schedule_file,
    lora_name,
    parse_schedule,
    schedule_from_mapping,
)
from svi_core.conditioning import frames_to_pixels
from svi_core.errors import Cancelled, RunMismatchError, SVIError
from svi_core.guidance import Guidance
from svi_core.loop import LoopInputs, prepare_run, run_clips
from svi_core.video_io import read_video_frames

TEXT = """
# a story in four lines
clip 1: lora.svi=0                      # no SVI LoRA on the first clip
clips 2-3: prompt="the fox jumps, # not a comment", seed=7, cfg=4
clip 4: keyframe=image 2, keyframe_slot=latent, lora.speed.high=0.5, lora.svi=1
clips 5-: anchor=image 1
"""

LORAS = (
    LoadedLora("svi", "high", 1.0),
    LoadedLora("svi", "low", 1.0),
    LoadedLora("speed", "high", 1.0),
    LoadedLora("speed", "low", 1.0),
)


def img(value, h=H, w=W):
    return torch.full((h, w, 3), value, dtype=torch.uint8)


IMAGES = (img(30), img(220))


def px(u):
    return float(torch.tensor(u, dtype=torch.float32) * (2.0 / 255.0) - 1.0)


# ----- parsing ------------------------------------------------------------------------------


def test_text_lines_parse_to_entries():
    s = parse_schedule(TEXT)
    e1, e2, e4, e5 = s.entries
    assert (e1.first, e1.last, e1.where) == (1, 1, "line 3")
    assert [(x.name, x.strength, x.expert) for x in e1.loras] == [("svi", 0.0, None)]
    assert (e2.first, e2.last, e2.prompt, e2.seed, e2.cfg) == (
        2,
        3,
        "the fox jumps, # not a comment",
        7,
        4.0,
    )
    assert (e4.keyframe.number, e4.keyframe_slot) == (2, "latent")
    assert [(x.name, x.expert) for x in e4.loras] == [("speed", "high"), ("svi", None)]
    assert (e5.first, e5.last, e5.anchor.number) == (5, None, 1)
    assert s.entry_for(2).where == "line 4" and s.entry_for(5) is None or True
    assert s.entry_for(4) is e5 and s.entry_for(40) is e5 and s.entry_for(0) is e1
    assert s.prompts() == ["the fox jumps, # not a comment"]


def test_toml_spelling_gives_the_same_schedule(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    toml = tmp_path / "story.toml"
    toml.write_text(
        """
images = ["a.png", "b.png"]

[clips.1]
lora.svi = 0

[clips.2-3]
prompt = "the fox jumps, # not a comment"
seed = 7
cfg = 4

[clips.4]
keyframe = 2
keyframe_slot = "latent"
lora.speed.high = 0.5
lora.svi = 1

[clips.5-]
anchor = "a.png"
""",
        encoding="utf-8",
    )
    s, images = load_schedule_file(toml)
    t = parse_schedule(TEXT)
    assert images == (tmp_path / "a.png", tmp_path / "b.png")

    def strip(e):
        return (e.first, e.last, e.prompt, e.seed, e.cfg, e.loras, e.keyframe_slot)

    assert [strip(e) for e in s.entries] == [strip(e) for e in t.entries]
    assert [
        (e.anchor and e.anchor.number, e.keyframe and e.keyframe.number) for e in s.entries
    ] == [
        (None, None),
        (None, None),
        (None, 2),
        (1, None),  # a path already in `images` keeps its number
    ]
    assert s.entries[1].where == "[clips.2-3]"


def test_toml_paths_used_directly_become_numbered_images(tmp_path):
    s, images = schedule_from_mapping(
        {"images": ["x.png"], "clips": {"2": {"keyframe": "k.png"}}}, "s.toml", base=tmp_path
    )
    assert images == (tmp_path / "x.png", tmp_path / "k.png")
    assert s.entries[0].keyframe.number == 2


@pytest.mark.parametrize(
    "text,match",
    [
        ("clip 2: promt=hello", r"line 1: unknown key 'promt'; did you mean 'prompt'\?"),
        ("clip 2: keyfram=image 1", r"did you mean 'keyframe'\?"),
        ("clip 2: lora.svi.mid=1", r"expert must be 'high' or 'low'"),
        ("clip 2: lora=1", "not a LoRA key"),
        ("clip 2-1: seed=1", "ends before it starts"),
        ("clip 0: seed=1", "numbered from 1"),
        ("scene 2: seed=1", "not a clip range"),
        ("clip 2 seed=1", "has no ':'"),
        ("clip 2: seed=1.5", "whole number"),
        ("clip 2: seed=-3", "must be >= 0"),
        ("clip 2: cfg=0", r"cfg=0.0 must be in \(0"),
        ("clip 2: cfg=high", "must be a number"),
        ("clip 2: seed=1, seed=2", "seed is set twice"),
        ("clip 2: keyframe_slot=latent", "needs a keyframe"),
        ("clip 2: keyframe=image 1, keyframe_slot=late", "did you mean 'latent'"),
        ("clip 2: keyframe=picture", "must be 'image N'"),
        ("clip 2: keyframe=image 0", "numbered from 1"),
        ('clip 2: prompt="open', "not closed"),
        ("clip 2:", "sets nothing"),
        (
            "\n\nclip 2: seed=1\nclips 1-3: cfg=2",
            r"line 3 \(clip 2\) and line 4 \(clips 1-3\) overlap",
        ),
        ("clips 4-: seed=1\nclip 9: cfg=2", r"line 1 \(clips 4-\) and line 2 \(clip 9\) overlap"),
    ],
)
def test_bad_lines_are_refused_naming_the_line(text, match):
    with pytest.raises(SVIError, match=match):
        parse_schedule(text)


def test_bad_toml_is_refused_naming_the_file_and_table(tmp_path):
    with pytest.raises(SVIError, match="does not exist"):
        load_schedule_file(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[clips.2\nseed = 1", encoding="utf-8")
    with pytest.raises(SVIError, match="bad.toml is not valid TOML"):
        load_schedule_file(bad)
    with pytest.raises(SVIError, match=r"unknown top-level key 'imgaes'; did you mean 'images'"):
        schedule_from_mapping({"imgaes": []}, "s.toml")
    with pytest.raises(SVIError, match=r"s.toml, \[clips.3\]: unknown key 'sed'"):
        schedule_from_mapping({"clips": {"3": {"sed": 1}}}, "s.toml")
    with pytest.raises(SVIError, match=r"\[clips.2-4\] \(clips 2-4\) and \[clips.3\]"):
        schedule_from_mapping({"clips": {"3": {"seed": 1}, "2-4": {"cfg": 2}}}, "s.toml")


def test_lora_names_from_files():
    assert lora_name("loras/SVI-Shot.safetensors") == "svi-shot"
    assert lora_name("wan2.2_i2v_lightx2v_4steps.safetensors") == "wan2_2_i2v_lightx2v_4steps"
    assert LoadedLora("svi", "low", 1.0).key == "svi@low"
    assert LoadedLora("svi", "high", 1.0).key == "svi"


# ----- the condition in the loop ------------------------------------------------------------


def cond(text=TEXT, images=IMAGES, loras=LORAS):
    return ScheduleCondition(parse_schedule(text), images=images, loras=loras)


def go(tmp, s, condition, backend=None, **kw):
    be = backend or FakeBackend(clip_vision=s.mode.clip_vision)
    conditions = (condition,) if condition is not None else ()
    inputs = LoopInputs(reference(), PROMPTS, conditions=conditions)
    res = run_clips(be, s, inputs, tmp / "run", output=tmp / "out.mp4", **kw)
    return be, res


def test_schedule_sets_seed_prompt_cfg_and_lora_strengths_per_clip(tmp_path):
    s = settings("shot", clips=6)
    be, res = go(tmp_path, s, cond())
    r = be.requests
    # seeds: the range's first clip gets 7, the next 7 + stride; others keep base + k * stride
    assert [x.seed for x in r] == [0, 7, 7 + 42, 126, 168, 210]
    assert [x.positive for x in r] == [PROMPTS[0]] + ["the fox jumps, # not a comment"] * 2 + [
        PROMPTS[0]
    ] * 3
    assert [x.guidance for x in r] == [Guidance(scale=5.0)] + [Guidance(scale=4.0)] * 2 + [
        Guidance(scale=5.0)
    ] * 3
    assert [dict(x.lora_strengths) for x in r] == [
        {"svi": 0.0, "svi@low": 0.0},
        {},
        {},
        {"speed": 0.5},  # lora.svi=1 is the loaded strength: nothing recorded
        {},
        {},
    ]
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert "clip_conditions" not in manifest["settings"]  # nothing run-level
    plans = [c["plan"] for c in manifest["clips"]]
    assert plans[0]["lora_strengths"] == {"svi": 0.0, "svi@low": 0.0}
    assert [c["prompt_index"] for c in manifest["clips"]][:3] == [0, -1, -1]


def test_keyframe_and_sticky_anchor_reach_the_conditioning(tmp_path):
    s = settings("shot", clips=6)  # shot pads with the reference: the anchor is visible
    be, _ = go(tmp_path, s, cond())
    videos = be.encoded  # one encode per clip
    assert len(videos) == 6
    # clip 4 (index 3): keyframe image 2 in the last latent frame (slot latent: 4 frames)
    assert torch.all(videos[3][:, :, -4:] == px(220))
    assert torch.all(be.requests[3].mask[:, :, -1] == 1)
    assert torch.all(be.requests[2].mask[:, :, -1] == 0)
    # clips 5 and 6: padding = anchor image 1 (scene change); clips 2-4: the reference
    ref_pad = frames_to_pixels(reference()[None])[:, :, 0]
    assert torch.equal(videos[1][:, :, -1], ref_pad)
    for k in (4, 5):
        assert torch.all(videos[k][:, :, 1:] == px(30))


def test_pro_anchor_latent_follows_the_scene_change(tmp_path):
    s = settings("v2_pro", clips=3)
    text = "clip 2: keyframe=image 2\nclip 3: anchor=image 1"
    be, _ = go(tmp_path, s, cond(text, loras=()))
    a0 = be.requests[0].cond_latent[:, :, :1]
    a2 = be.requests[2].cond_latent[:, :, :1]
    assert not torch.equal(a0, a2)
    assert float(a2.mean()) == pytest.approx(px(30), abs=1e-6)
    # clip 2's last latent slot holds the keyframe encoded at the end of a clip (default slot
    # latent: a still group of 4 frames, all 4 mask channels)
    assert float(be.requests[1].cond_latent[:, :, -1].mean()) == pytest.approx(px(220))
    assert [float(be.requests[1].mask[0, c, -1].mean()) for c in range(4)] == [1, 1, 1, 1]
    assert float(be.requests[0].mask[:, :, -1].sum()) == 0


def test_images_of_another_size_are_stretched_and_said(tmp_path, caplog):
    s = settings("shot", clips=2)
    big = img(220, 2 * H, 3 * W)
    with caplog.at_level(logging.INFO, logger="svi"):
        be, _ = go(tmp_path, s, cond("clip 2: keyframe=image 1", images=(big,), loras=()))
    assert any(
        "schedule image 1 is 144x64; stretched to the video size 48x32" in m
        for m in caplog.messages
    )
    assert torch.all(be.encoded[1][:, :, -1] == px(220))


@pytest.mark.parametrize(
    "text,mode,images,match",
    [
        ("clip 7: seed=1", "shot", IMAGES, r"line 1: clip 7 is beyond the run \(6 clips\)"),
        ("clips 5-9: seed=1", "shot", IMAGES, "beyond the run"),
        ("clip 2: keyframe=image 3", "shot", IMAGES, r"image 3 does not exist: 2 image\(s\)"),
        ("clip 2: anchor=image 1", "shot", (), "no image is connected"),
        (
            "clip 2: lora.svl=0",
            "shot",
            IMAGES,
            r"no LoRA named 'svl' is loaded; did you mean 'svi'",
        ),
        ("clip 2: lora.svi.low=0", "shot", IMAGES, "not loaded on the low-noise model"),
        ("clip 3: anchor=image 1", "film", IMAGES, "anchor has no effect after clip 1"),
        ("clip 2: keyframe=image 1", "film5", IMAGES, "at least 9 frames"),
    ],
)
def test_schedule_is_checked_against_the_run_before_any_work(text, mode, images, match):
    over = {"frames": 5, "motion_frames": 2} if mode == "film5" else {}
    s = settings("film" if mode == "film5" else mode, clips=6, **over)
    loras = (LoadedLora("svi", "high", 1.0),)
    c = ScheduleCondition(parse_schedule(text), images=images, loras=loras)
    be = FakeBackend()
    with pytest.raises(SVIError, match=match):
        prepare_run(s, LoopInputs(reference(), PROMPTS, conditions=(c,)))
    assert be.denoise_calls == 0


def test_a_batch_is_not_an_image():
    s = settings("shot", clips=2)
    c = ScheduleCondition(
        parse_schedule("clip 2: keyframe=image 1"), images=(torch.zeros(2, H, W, 3),), loras=()
    )
    with pytest.raises(SVIError, match="image 1 must be one RGB image"):
        prepare_run(s, LoopInputs(reference(), PROMPTS, conditions=(c,)))


def latents(run_dir):
    m = json.loads((Path(run_dir) / "manifest.json").read_text())
    return [load_file(str(Path(run_dir) / c["state"]))["latent"] for c in m["clips"]]


def test_finished_clips_refuse_edits_later_clips_accept_them(tmp_path):
    go(tmp_path, settings("shot", clips=2), cond("clip 1: seed=5"))
    s4 = settings("shot", clips=4)
    # clip 1 (index 0) is made: changing its line is refused, naming the clip and the field
    with pytest.raises(
        RunMismatchError, match=r"clip 1 \(index 0\) is already made with seed=5.*seed=6"
    ):
        go(tmp_path, s4, cond("clip 1: seed=6\nclip 3: cfg=3"))
    with pytest.raises(
        RunMismatchError, match=r"clip 2 \(index 1\) is already made with keyframe=null"
    ):
        go(tmp_path, s4, cond("clip 1: seed=5\nclip 2: keyframe=image 1"))
    # clips 3 and 4 are not made: adding lines for them is fine when extending
    be, _ = go(tmp_path, s4, cond("clip 1: seed=5\nclip 3: cfg=2\nclip 4: keyframe=image 2"))
    assert [r.index for r in be.requests] == [2, 3]
    assert be.requests[0].guidance.scale == 2.0
    assert torch.all(be.encoded[1][:, :, -1] == px(220))


def test_a_schedule_can_be_added_to_a_run_for_its_later_clips(tmp_path):
    go(tmp_path, settings("shot", clips=2), None)
    be, _ = go(tmp_path, settings("shot", clips=3), cond("clip 3: prompt=a new scene, seed=9"))
    assert [(r.index, r.seed, r.positive) for r in be.requests] == [(2, 9, "a new scene")]
    with pytest.raises(RunMismatchError, match=r"clip 2 \(index 1\) is already made with seed=42"):
        go(tmp_path, settings("shot", clips=4), cond("clips 2-: seed=9"))


def test_resume_with_a_schedule_is_bit_exact(tmp_path):
    s = settings("v2_pro", clips=4)
    text = "clip 2: keyframe=image 2, cfg=3\nclip 3: anchor=image 1, seed=11"

    def mk():
        return cond(text, loras=())

    _, full = go(tmp_path / "a", s, mk())

    def cancel(clip, done, total):
        if clip == 2 and done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        go(tmp_path / "b", s, mk(), on_step=cancel)
    _, resumed = go(tmp_path / "b", s, mk())
    for a, b in zip(latents(full.run_dir), latents(resumed.run_dir), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(
        np.stack(list(read_video_frames(full.video))),
        np.stack(list(read_video_frames(resumed.video))),
    )
