"""SVI-Dance inference: the mode, the pose condition through the loop, the diffusers hook, resume.

Official values are read from vita-epfl/Stable-Video-Infinity (``test_svi_dance.py``,
``scripts/test/svi_dance.sh``, ``diffsynth/pipelines/svi_video_dance.py``; DANCE_RULES).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from safetensors.torch import load_file
from test_pose import official_windows

from svi_core.errors import Cancelled, RunMismatchError, SVIError
from svi_core.loop import LoopInputs, RunSettings, prepare_run, run_clips
from svi_core.modes import NEGATIVE_PROMPT_EN, get_mode
from svi_core.pose import PoseEmbedding, PoseSequence
from svi_core.pose_condition import PoseCondition, PoseWindow, rows_with_pose

H, W = 32, 48
FIX = Path(__file__).resolve().parent / "fixtures" / "dance"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def numbered_poses(n: int, h: int = H, w: int = W, offset: int = 0) -> PoseSequence:
    """Pose frame i is a flat image of value (i + offset) % 256 in R and i // 256 in G, so a
    window's indices can be read back from its pixels."""
    frames = torch.zeros(n, h, w, 3, dtype=torch.uint8)
    for i in range(n):
        frames[i, ..., 0] = (i + offset) % 256
        frames[i, ..., 1] = i // 256
        frames[i, ..., 2] = 7
    return PoseSequence(frames=frames, source=f"{n} numbered poses")


def indices_of(window: torch.Tensor, offset: int = 0) -> list[int]:
    return [int(f[0, 0, 1]) * 256 + (int(f[0, 0, 0]) - offset) % 256 for f in window]


def reference(h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)


def dance(clips: int, **over) -> RunSettings:
    over.setdefault("frames", 9)
    over.setdefault("steps", 2)
    return RunSettings(mode=get_mode("dance", **over), width=W, height=H, num_clips=clips)


def go(tmp: Path, s: RunSettings, cond, backend=None, **kw):
    be = backend or FakeBackend()
    inputs = LoopInputs(reference(), [s.mode.default_prompt], conditions=(cond,) if cond else ())
    return be, run_clips(be, s, inputs, tmp / "run", output=tmp / "out.mp4", **kw)


def latents(run_dir: Path) -> list[torch.Tensor]:
    m = json.loads((run_dir / "manifest.json").read_text())
    return [load_file(str(run_dir / c["state"]))["latent"] for c in m["clips"]]


# ----- the mode ------------------------------------------------------------------------------


def test_dance_mode_has_the_official_values() -> None:
    m = get_mode("dance")
    # m = 1 (svi_dance.sh:10), reference padding (--ref_pad_num -1, sh:7), 81 frames (test:28)
    assert (m.carry, m.motion_frames, m.padding, m.frames) == ("pixel", 1, "reference", 81)
    # non-final clips drop their last frame (test:264-267); mask latent 0 only (test:66-71)
    assert (m.stitch, m.overlap_frames, m.mask_frames) == ("drop_tail", 1, 1)
    # text CFG 2.0 (sh:6), 50 steps (sh:9), shift 5 (test:90-95), 25 fps (test:279)
    assert (m.cfg, m.steps, m.shift, m.fps) == (2.0, 50, 5.0, 25.0)
    # reference sized like test:192-203: keep up to width 640, multiples of 16, stretched
    assert (m.resize, m.max_width, m.clip_vision, m.model) == ("fit_width", 640, True, "wan2.1")
    # fixed prompt (test:244), the English negative (test:137), one prompt for every clip
    assert m.default_prompt == "the person is dancing" and m.prompt_policy == "first"
    assert m.negative_prompt == NEGATIVE_PROMPT_EN
    # official clips 10 (sh:8); the pose is required
    assert m.default_clips == 10 and m.conditions == ("pose",)
    # seeds: the official draws fresh noise (seed None, test:27); we use base + k * stride
    assert [m.seed_for(k) for k in range(3)] == [0, 42, 84]


def test_dance_guidance_keeps_the_pose_in_both_passes() -> None:
    g = get_mode("dance").guidance_for()
    # cond_wo_pose=True (test:259): cond and uncond both carry the pose; CFG on text only
    assert g.kind == "cfg" and g.scale == 2.0 and g.uncond_null == frozenset()
    assert [(p.negative_text, p.null) for p in g.passes] == [
        (False, frozenset()),
        (True, frozenset()),
    ]
    a, b = torch.tensor([3.0]), torch.tensor([1.0])
    assert float(g.combine([a, b])) == 1.0 + 2.0 * (3.0 - 1.0)  # svi_video_dance.py:433


def test_dance_clip_count_plays_the_pose_video_once() -> None:
    m = get_mode("dance")
    # the official toy pose.mp4 has 223 frames: clip 0 = 0..80, 1 = [80, 80..159],
    # 2 = [159, 160..239]: three clips reach pose 222
    assert m.clip_count(1, pose_frames=223) == 3
    assert m.clip_count(1, pose_frames=81) == 1
    assert m.clip_count(1, pose_frames=82) == 2
    assert m.clip_count(1, pose_frames=30) == 1  # a short dance loops within one clip
    assert m.clip_count(1) == 10  # without a pose video: the official 10


def test_dance_video_length() -> None:
    assert get_mode("dance").video_length(10) == 10 * 81 - 9


# ----- the pose condition through the loop ---------------------------------------------------


@pytest.mark.parametrize("n", [5, 13, 40])
def test_pose_windows_through_the_loop_are_the_official_ones(tmp_path, n) -> None:
    clips = 4
    be, res = go(tmp_path, dance(clips), PoseCondition(numbered_poses(n)))
    got = [indices_of(r.extras["pose"].frames) for r in be.requests]
    assert got == official_windows(n, clips, frames=9, m=1)
    for prev, cur in zip(got, got[1:], strict=False):  # the carried frame's pose comes first
        assert cur[0] == prev[-1]
    # every clip: CFG 2 with the pose in both passes, the fixed prompt
    for r in be.requests:
        assert r.guidance.scale == 2.0 and all(not p.null for p in r.guidance.passes)
        assert r.positive == "the person is dancing"
    assert res.frames == 4 * 9 - 3


def test_pose_changes_the_clips_and_is_recorded(tmp_path) -> None:
    cond = PoseCondition(numbered_poses(13), palette="rgb")
    _, a = go(tmp_path / "a", dance(2), cond)
    _, b = go(tmp_path / "b", dance(2), PoseCondition(numbered_poses(13, offset=50), "rgb"))
    assert not torch.equal(latents(a.run_dir)[0], latents(b.run_dir)[0])
    manifest = json.loads((a.run_dir / "manifest.json").read_text())
    assert manifest["settings"]["clip_conditions"] == {
        "pose": {"palette": "rgb", "loop": "loop", "fit": "letterbox-nearest-black"}
    }
    plans = [c["plan"] for c in manifest["clips"]]
    want = [cond.window(k, 9, 1).fingerprint() for k in range(2)]
    assert len(set(want)) == 2
    from svi_core.run_store import fingerprint

    assert [p["extra.pose"] for p in plans] == [
        fingerprint(w) for w in [cond.window(0, 9, 1), cond.window(1, 9, 1)]
    ]


def test_window_fingerprint_is_the_content() -> None:
    seq = numbered_poses(12)
    a = PoseCondition(seq).window(1, 9, 1)
    plain = PoseWindow(sequence=seq, indices=a.indices)  # no shared digests: hashes itself
    assert a.fingerprint() == plain.fingerprint()
    copy = PoseSequence(frames=seq.frames.clone())
    assert PoseCondition(copy).window(1, 9, 1).fingerprint() == a.fingerprint()
    assert PoseCondition(seq).window(2, 9, 1).fingerprint() != a.fingerprint()
    assert a.describe() == "poses 8, 8..11, 0..3"


def test_a_longer_pose_video_extends_the_run(tmp_path) -> None:
    # 9-frame clips, m = 1: clip 0 = poses 0..8, clip 1 = [8, 8..15]: 16 poses cover two clips
    short = numbered_poses(16)
    go(tmp_path, dance(2), PoseCondition(short))
    longer = numbered_poses(30)
    be, res = go(tmp_path, dance(3), PoseCondition(longer))
    assert [r.index for r in be.requests] == [2] and res.clips_done == 3
    assert indices_of(be.requests[0].extras["pose"].frames) == [15] + list(
        range(16, 24)
    )  # later seams are continuous
    # a finished clip whose poses change is refused, naming the clip
    edited = longer.frames.clone()
    edited[12] = 99
    with pytest.raises(
        RunMismatchError, match=r"clip 2 \(index 1\) is already made with extra\.pose="
    ):
        go(tmp_path, dance(4), PoseCondition(PoseSequence(frames=edited)))
    # another palette or loop policy is another run
    with pytest.raises(RunMismatchError, match="clip_conditions"):
        go(tmp_path, dance(4), PoseCondition(longer, palette="rgb"))


def test_resume_with_the_pose_is_bit_exact(tmp_path) -> None:
    s, cond = dance(3), PoseCondition(numbered_poses(11))
    _, full = go(tmp_path / "a", s, cond)

    def cancel(clip, done, total):
        if clip == 1 and done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        go(tmp_path / "b", s, cond, on_step=cancel)
    be, resumed = go(tmp_path / "b", s, cond)
    assert [r.index for r in be.requests] == [1, 2]
    for a, b in zip(latents(full.run_dir), latents(resumed.run_dir), strict=True):
        assert torch.equal(a, b)


def test_bad_pose_input_is_refused_before_any_work() -> None:
    inputs = LoopInputs(reference(), ["the person is dancing"])
    with pytest.raises(SVIError, match="needs the per-clip condition"):
        prepare_run(dance(2), inputs)
    wrong = PoseCondition(numbered_poses(5, h=H, w=64))
    with pytest.raises(SVIError, match="pose frames are 64x32 but the video is 48x32"):
        prepare_run(dance(2), LoopInputs(reference(), ["x"], conditions=(wrong,)))
    pro = RunSettings(mode=get_mode("v2_pro", frames=9), width=W, height=H, num_clips=2)
    ok = PoseCondition(numbered_poses(5))
    with pytest.raises(SVIError, match="pixel-carry mode"):
        prepare_run(pro, LoopInputs(reference(), ["x"], conditions=(ok,)))
    with pytest.raises(SVIError, match="keep overlap = motion frames"):
        prepare_run(dance(2, overlap=0), LoopInputs(reference(), ["x"], conditions=(ok,)))
    with pytest.raises(SVIError, match="palette"):
        PoseCondition(numbered_poses(5), palette="bgr")


def test_rows_with_pose() -> None:
    assert rows_with_pose([0, 1], 2, frozenset()) == [True, True]
    assert rows_with_pose([0, 1], 4, frozenset({1})) == [True, True, False, False]
    assert rows_with_pose([1, 0], 2, frozenset({1})) == [False, True]
    assert rows_with_pose(None, 3, frozenset({1})) == [True, True, True]
    with pytest.raises(SVIError, match="evenly"):
        rows_with_pose([0, 1], 3, frozenset({1}))


# ----- the diffusers hook --------------------------------------------------------------------


@pytest.fixture(scope="module")
def official():
    pytest.importorskip("diffusers")
    from svi_core.pose import load_pose_embedding, split_dance_state_dict
    from svi_core.standalone.models import load_wan_transformer

    _, pose = split_dance_state_dict(load_file(str(FIX / "tiny_pose.safetensors")), "tiny")
    return (
        load_file(str(FIX / "expected.safetensors")),
        load_wan_transformer(FIX / "tiny_dit.safetensors"),
        load_pose_embedding(pose, "tiny"),
        json.loads((FIX / "config.json").read_text())["run"],
    )


def test_hook_batched_passes_equal_the_official_velocities(official) -> None:
    """One batched forward (cond + uncond rows) with the hook = the official pipeline's two
    passes, both with the pose (fixture made by running SVIDanceVideoPipeline)."""
    from svi_core.schedule import flow_schedule
    from svi_core.standalone.pose import PoseHook

    exp, dit, emb, run = official
    hook = PoseHook(emb, "tiny")
    hook.check(dit)
    tokens = hook.prepare(exp["window"], torch.device("cpu"), torch.float32)
    t0 = float(flow_schedule(run["steps"], run["shift"]).timesteps[0])
    x = torch.cat([exp["noise"]] * 2)
    ctx = torch.cat([exp["context_pos"], exp["context_neg"]])
    kw = dict(hidden_states=x, timestep=torch.full((2,), t0), encoder_hidden_states=ctx)
    with torch.no_grad(), hook.apply(tokens, dit, [True, True]):
        vc, vu = dit(**kw, return_dict=False)[0].float().chunk(2)
    assert (vc - exp["v_cond0"]).abs().max() <= 1e-4
    assert (vu - exp["v_uncond0"]).abs().max() <= 1e-4
    # a pass that nulls the pose gets no tokens in its row only
    with torch.no_grad():
        with hook.apply(tokens, dit, [True, False]):
            mixed = dit(**kw, return_dict=False)[0].float()
        plain = dit(**kw, return_dict=False)[0].float()
        with hook.apply(tokens, dit, [False, False]):
            none = dit(**kw, return_dict=False)[0].float()
    assert (mixed[:1] - vc).abs().max() <= 1e-5 and torch.equal(mixed[1:], plain[1:])
    assert torch.equal(none, plain)


def test_hook_refuses_another_width(official) -> None:
    from svi_core.standalone.pose import PoseHook

    _, dit, _, _ = official
    with pytest.raises(SVIError, match="pose embedding is 16 wide but this DiT is 48 wide"):
        PoseHook(PoseEmbedding(16), "other.safetensors").check(dit)


def test_dance_run_on_tiny_models_cancelled_and_resumed_bit_exactly(tmp_path) -> None:
    """A tiny random Wan2.1 I2V DiT + a tiny random pose embedding through the real loop."""
    pytest.importorskip("diffusers")
    from test_standalone_backend import image, text, tiny_dit, tiny_vae

    from svi_core.standalone.backend import DiffusersBackend
    from svi_core.standalone.pose import PoseHook

    torch.manual_seed(9)
    emb = PoseEmbedding(16).train(False).requires_grad_(False)  # tiny DiT width: 2 heads x 8
    dit, vae = tiny_dit(1), tiny_vae()

    def backend(pose=True):
        extras = {"pose": PoseHook(emb, "tiny")} if pose else None
        return DiffusersBackend(dit, vae, text_encoder=text, image_encoder=image, extras=extras)

    s = RunSettings(mode=get_mode("dance", frames=5, steps=2), width=32, height=32, num_clips=3)
    poses = numbered_poses(7, h=32, w=32)
    inputs = LoopInputs(
        reference(32, 32), ["the person is dancing"], conditions=(PoseCondition(poses),)
    )
    full = run_clips(backend(), s, inputs, tmp_path / "a")

    def cancel(clip, done, total):
        if clip == 2 and done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_clips(backend(), s, inputs, tmp_path / "b", on_step=cancel)
    assert run_clips(backend(), s, inputs, tmp_path / "b").clips_generated == 1
    for a, b in zip(latents(full.run_dir), latents(tmp_path / "b"), strict=True):
        assert torch.equal(a, b)
    # the pose reaches the model: another dance gives another video
    other = LoopInputs(
        reference(32, 32), ["the person is dancing"],
        conditions=(PoseCondition(numbered_poses(7, h=32, w=32, offset=90)),),
    )  # fmt: skip
    changed = run_clips(backend(), s, other, tmp_path / "c")
    assert (latents(changed.run_dir)[0] - latents(full.run_dir)[0]).abs().max() > 1e-4
    # a backend without the pose hook refuses the clip instead of ignoring the skeleton
    with pytest.raises(SVIError, match="cannot apply the per-clip condition"):
        run_clips(backend(pose=False), s, inputs, tmp_path / "d")


# ----- the pieces the ComfyUI nodes use ------------------------------------------------------


def test_condition_from_any_size_frames_letterboxed_and_swapped(caplog) -> None:
    frames = torch.zeros(4, 16, 48, 3, dtype=torch.uint8)  # 3:1 into a 48x32 video
    frames[..., 0] = 200  # red skeleton
    with caplog.at_level("INFO", logger="svi"):
        cond = PoseCondition.from_frames(frames, W, H, palette="rgb", source="pose_video")
    f = cond.poses.frames
    assert f.shape == (4, H, W, 3) and cond.palette == "rgb"
    # 16 rows scaled by 1 (min(32/16, 48/48)), centred: 8 black rows above and below
    assert f[:, :8].max() == 0 and f[:, 24:].max() == 0
    assert f[0, 16, 10].tolist() == [0, 0, 200]  # rgb palette: red and blue swapped
    assert "padded with black" in caplog.text
    official = PoseCondition.from_frames(frames, W, H)
    assert official.poses.frames[0, 16, 10].tolist() == [200, 0, 0]
    with pytest.raises(SVIError, match="palette"):
        PoseCondition.from_frames(frames, W, H, palette="bgr")
    with pytest.raises(SVIError, match="no frames"):
        PoseCondition.from_frames(frames[:0], W, H)


def test_lora_and_pose_from_one_file(tmp_path) -> None:
    from safetensors.torch import save_file

    from svi_core.errors import CheckpointError
    from svi_core.pose_inputs import load_lora_and_pose, refuse_model_without_pose_support

    torch.manual_seed(0)
    emb = PoseEmbedding(24)
    lora = {
        "pipe.dit.blocks.0.self_attn.q.lora_A.default.weight": torch.randn(2, 24),
        "pipe.dit.blocks.0.self_attn.q.lora_B.default.weight": torch.randn(24, 2),
    }
    pose = {f"dwpose_embedding.{k}": v for k, v in emb.state_dict().items()}
    save_file({**lora, **pose}, str(tmp_path / "dance.safetensors"))
    save_file(lora, str(tmp_path / "plain.safetensors"))
    weights, got = load_lora_and_pose(tmp_path / "dance.safetensors")
    assert list(weights.entries) == ["blocks.0.self_attn.q"] and got is not None
    for k, v in emb.state_dict().items():
        assert torch.equal(got.state_dict()[k], v)
    weights, none = load_lora_and_pose(tmp_path / "plain.safetensors")
    assert none is None and len(weights.entries) == 1
    with pytest.raises(CheckpointError, match="24 wide"):
        load_lora_and_pose(tmp_path / "dance.safetensors", expected_dim=48)
    kw = dict(pose_dim=5120, source="svi-dance.safetensors", model="'wan2.2_high.safetensors'")
    with pytest.raises(CheckpointError, match="no image embedding .*Wan2.2 expert"):
        refuse_model_without_pose_support(dit_width=5120, image_embedding=False, **kw)
    with pytest.raises(CheckpointError, match="5120 wide but .* is 1536 wide \\(Wan2.1 1.3B\\?\\)"):
        refuse_model_without_pose_support(dit_width=1536, image_embedding=True, **kw)
    refuse_model_without_pose_support(dit_width=5120, image_embedding=True, **kw)


def _openpose(body: np.ndarray, w: float, h: float) -> dict:
    pts = []
    for x, y in body[:18]:
        pts += [float(x * w), float(y * h), 0.9]
    return {"canvas_width": w, "canvas_height": h, "people": [{"pose_keypoints_2d": pts}]}


def test_aligned_skeleton_video_from_pose_keypoint() -> None:
    from test_pose_align import _person

    from svi_core.pose_align import aligned_skeleton_video

    driving = [_openpose(_person(1, 0.01).body, 512, 768) for _ in range(3)]
    ref_kp = _person(7)
    reference = _openpose(ref_kp.body, 300, 600)  # one dict (a single image) is accepted
    video = aligned_skeleton_video(driving, reference, 64, 96)
    plain = aligned_skeleton_video(driving, None, 64, 96)
    assert video.shape == plain.shape == (3, 96, 64, 3) and video.dtype == np.uint8
    assert video.max() > 0 and not np.array_equal(video, plain)
    # aligned: frame 0's neck lands on the reference's neck (a bright disc there)
    nx, ny = ref_kp.body[1]
    assert video[0, int(ny * 96), int(nx * 64)].max() == 255
    with pytest.raises(SVIError, match="no person was detected"):
        aligned_skeleton_video(
            driving, {"canvas_width": 9, "canvas_height": 9, "people": []}, 64, 96
        )
