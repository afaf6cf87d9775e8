"""svi_core.pose: pose frames, per-clip pose windows, embedding layout, the SVI-Dance file.

Expected values are read from the official code (test_svi_dance.py, svi_video_dance.py,
utils/image_process.py of vita-epfl/Stable-Video-Infinity), not produced by our own code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from svi_core.errors import CheckpointError, SVIError
from svi_core.pose import (
    PoseEmbedding,
    PoseSequence,
    clips_to_cover,
    fit_pose_frame,
    letterbox,
    load_dance_file,
    load_pose_embedding,
    pose_embedding_input,
    pose_tokens,
    pose_window_indices,
    prepare_pose_frames,
    read_pose_video,
    split_dance_state_dict,
)

torch.set_num_threads(1)


# ----- windows: the official indices -----------------------------------------------------


def official_windows(num_poses: int, clips: int, frames: int = 81, m: int = 1) -> list[list[int]]:
    """The official loop of test_svi_dance.py:218-227 + 281-288, restated on pose indices.

    Clip 0: tile the pose list ``frames // N + 1`` times when it is shorter than a clip, take the
    first ``frames``; ``sampled_idx = frames - 1``. Next clip: its first m entries are the last m
    of the previous window, then ``all[sampled_idx % len(all)]`` with ``sampled_idx += 1``.
    """
    everything = list(range(num_poses))
    if num_poses < frames:
        everything = everything * (frames // num_poses + 1)
    window = everything[:frames]
    sampled = frames - 1
    out = [window]
    for _ in range(clips - 1):
        new = window[-m:]
        for _i in range(m, frames):
            sampled = sampled % len(everything)
            new.append(everything[sampled])
            sampled += 1
        window = new
        out.append(window)
    return out


def test_windows_worked_values_toy_pose_video() -> None:
    # the official toy pose.mp4 has 223 frames; F = 81, one motion frame
    assert pose_window_indices(0, 223) == list(range(81))
    # clip 1 starts with pose 80 (the carried motion frame's pose) and then pose 80 AGAIN,
    # because sampled_idx starts at max_frames - 1 (test_svi_dance.py:227)
    assert pose_window_indices(1, 223) == [80] + list(range(80, 160))
    # clip 2: carried pose 159, then 160..222 and the loop back to 0..16 (modulo, :285)
    assert pose_window_indices(2, 223) == [159] + list(range(160, 223)) + list(range(0, 17))


def test_windows_short_pose_video_loops_from_clip_0() -> None:
    # N = 30 < 81: tiled 3 times (test_svi_dance.py:221-224), clip 0 ends on pose 80 % 30 = 20
    assert pose_window_indices(0, 30) == [i % 30 for i in range(81)]
    assert pose_window_indices(1, 30) == [20] + [(80 + j) % 30 for j in range(80)]


@pytest.mark.parametrize("n", [1, 7, 30, 80, 81, 82, 160, 223, 500])
@pytest.mark.parametrize("m", [1, 5])
def test_windows_follow_the_official_loop(n: int, m: int) -> None:
    expected = official_windows(n, 9, 81, m)
    for k in range(9):
        assert pose_window_indices(k, n, 81, m) == expected[k], (n, m, k)


def test_windows_of_short_clips_and_many_motion_frames() -> None:
    # m > F - m exercises the non-contiguous carry (clip 1 repeats a pose inside its carry)
    expected = official_windows(11, 6, 9, 6)
    for k in range(6):
        assert pose_window_indices(k, 11, 9, 6) == expected[k]


def test_window_carries_the_previous_clip_last_pose() -> None:
    for k in range(1, 20):
        prev = pose_window_indices(k - 1, 97)
        cur = pose_window_indices(k, 97)
        assert cur[0] == prev[-1]


def test_loop_policies() -> None:
    # pingpong: 0..4 then back 3..0 then up again; hold: the last pose forever
    assert pose_window_indices(0, 5, frames=13, motion_frames=1, policy="pingpong") == [
        0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4,
    ]  # fmt: skip
    assert pose_window_indices(0, 5, frames=9, motion_frames=1, policy="hold") == [
        0, 1, 2, 3, 4, 4, 4, 4, 4,
    ]  # fmt: skip
    assert pose_window_indices(3, 1, policy="pingpong") == [0] * 81
    with pytest.raises(SVIError, match="loop policy"):
        pose_window_indices(0, 5, policy="bounce")  # type: ignore[arg-type]


def test_window_argument_errors() -> None:
    with pytest.raises(SVIError, match="empty"):
        pose_window_indices(0, 0)
    with pytest.raises(SVIError, match="motion_frames"):
        pose_window_indices(1, 10, frames=5, motion_frames=5)
    with pytest.raises(SVIError, match="clip index"):
        pose_window_indices(-1, 10)


def test_clips_to_cover() -> None:
    # clip 0 covers poses 0..80, clip 1 reaches 159, clip k >= 1 reaches 79 + 80 k
    assert clips_to_cover(81) == 1
    assert clips_to_cover(82) == 2
    assert clips_to_cover(160) == 2
    assert clips_to_cover(161) == 3
    assert clips_to_cover(223) == 3


# ----- frames: resize + pad --------------------------------------------------------------


def test_letterbox_official_toy_example() -> None:
    # pose.mp4 608x1088 into the 592x1072 video of image.png (604x1080 floored to 16):
    # scale = min(1072/1088, 592/608) = 0.97368..; new = int(1088 s) = 1059, int(608 s) = 592
    box = letterbox(608, 1088, 592, 1072)
    assert (box.new_w, box.new_h, box.left, box.top) == (592, 1059, 0, 6)
    # a landscape 1280x720 pose into 832x480: 832x468, 6 px black above and below
    box = letterbox(1280, 720, 832, 480)
    assert (box.new_w, box.new_h, box.left, box.top) == (832, 468, 0, 6)


def test_letterbox_keeps_the_official_float_truncation() -> None:
    # 47x94 into 48x96: scale 48/47 = 96/94 = 1.0212765957446808, but int(47 * s) = 47 and
    # int(94 * s) = 95 (products just below the integer): a 1-px black column and row remain
    box = letterbox(47, 94, 48, 96)
    assert (box.new_w, box.new_h, box.left, box.top) == (47, 95, 0, 0)


def test_fit_pose_frame_nearest_and_centred() -> None:
    # a 2x4 frame (h=2, w=4) into 8 wide x 8 tall: scale 2, 8x4 content, 2 rows of black on top
    frame = torch.arange(2 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 3) + 1
    out = fit_pose_frame(frame, 8, 8)
    assert out.shape == (8, 8, 3)
    assert (out[:2] == 0).all() and (out[6:] == 0).all()
    # nearest neighbour: every source pixel becomes a 2x2 block
    assert torch.equal(out[2:6], frame.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_prepare_pose_frames_logs_the_letterbox(caplog) -> None:
    frames = [np.full((20, 40, 3), 200, np.uint8)]
    with caplog.at_level("INFO", logger="svi"):
        out = prepare_pose_frames(frames, 32, 32, source="dance.mp4")
    assert out.shape == (1, 32, 32, 3)
    assert "dance.mp4" in caplog.text and "padded with black" in caplog.text
    assert (out[0, :8] == 0).all() and (out[0, 8:24] == 200).all() and (out[0, 24:] == 0).all()


def test_prepare_pose_frames_alpha_and_swap() -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 2], rgba[..., 3] = 10, 30, 255
    out = prepare_pose_frames([rgba], 16, 16)
    assert out[0, 0, 0].tolist() == [10, 0, 30]
    swapped = prepare_pose_frames([rgba], 16, 16, swap_rb=True)
    assert swapped[0, 0, 0].tolist() == [30, 0, 10]


@pytest.mark.parametrize(
    "frame, match",
    [
        (np.zeros((8, 8, 3), np.float32), "float32 array"),
        (torch.zeros(8, 8, 3), "torch.float32 tensor"),
        (np.zeros((8, 8), np.uint8), "single-channel"),
        (np.zeros((8, 8, 2), np.uint8), "expected an RGB image"),
        ("frame.png", "not an image"),
    ],
)
def test_prepare_pose_frames_refuses_non_images(frame, match) -> None:
    with pytest.raises(SVIError, match=match):
        prepare_pose_frames([frame], 16, 16, source="pose.mp4")


def test_prepare_pose_frames_refuses_empty() -> None:
    with pytest.raises(SVIError, match="no frames"):
        prepare_pose_frames([], 16, 16, source="pose.mp4")


def test_read_pose_video(tmp_path) -> None:
    from svi_core.video_io import write_segment

    frames = np.zeros((7, 48, 32, 3), np.uint8)
    frames[:, 16:32, 8:24] = 255  # a white square, letterboxed into a 64x48 video
    path = write_segment(tmp_path / "pose.mp4", frames, fps=24, crf=0)
    seq = read_pose_video(path, 64, 48)
    assert len(seq) == 7 and seq.size == (64, 48)
    # 32x48 (w x h) into 64x48: scale 1, 16 px black left and right
    assert seq.frames[:, :, :16].max() < 20 and seq.frames[:, :, 48:].max() < 20
    assert seq.frames[:, 24, 32].min() > 230
    w = seq.window(1, frames=5, motion_frames=1)
    assert w.shape == (5, 48, 64, 3)
    assert torch.equal(w, seq.frames[torch.tensor([4, 4, 5, 6, 0])])


def test_read_pose_video_errors(tmp_path) -> None:
    with pytest.raises(SVIError, match="does not exist"):
        read_pose_video(tmp_path / "missing.mp4", 32, 32)
    bad = tmp_path / "notavideo.mp4"
    bad.write_text("hello")
    with pytest.raises(SVIError, match="cannot be read as a video"):
        read_pose_video(bad, 32, 32)


def test_pose_sequence_fingerprint_changes_with_content_and_policy() -> None:
    a = torch.zeros(3, 16, 16, 3, dtype=torch.uint8)
    b = a.clone()
    b[1, 2, 3, 0] = 1
    fa = PoseSequence(a).fingerprint()
    assert fa == PoseSequence(a.clone()).fingerprint()
    assert fa != PoseSequence(b).fingerprint()
    assert fa != PoseSequence(a, policy="pingpong").fingerprint()
    with pytest.raises(SVIError, match="no frames"):
        PoseSequence(torch.zeros(0, 16, 16, 3, dtype=torch.uint8))


# ----- embedding ----------------------------------------------------------------------


def test_embedding_input_layout() -> None:
    # svi_video_dance.py:529: [first frame x 3, all F frames] along time, / 255, [1, 3, F+3, H, W]
    win = torch.randint(
        0, 256, (5, 4, 6, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    x = pose_embedding_input(win)
    assert x.shape == (1, 3, 8, 4, 6) and x.dtype == torch.float32
    for t in range(3):
        assert torch.equal(x[0, :, t], win[0].permute(2, 0, 1).float() / 255.0)
    for f in range(5):
        assert torch.equal(x[0, :, 3 + f], win[f].permute(2, 0, 1).float() / 255.0)
    assert x.min() >= 0 and x.max() <= 1


def test_embedding_output_grid_for_an_official_clip() -> None:
    # 81 frames -> 84 embedding frames -> 21 latent frames; space / 16 (svi_video_dance.py:255-268)
    emb = PoseEmbedding(dim=8)
    x = pose_embedding_input(torch.zeros(81, 32, 48, 3, dtype=torch.uint8))
    with torch.no_grad():
        out = emb(x)
    assert out.shape == (1, 8, 21, 2, 3)
    assert PoseEmbedding.output_grid(81, 32, 48) == (21, 2, 3)
    assert sorted(emb.state_dict()) == sorted(
        f"{i}.{p}" for i in (0, 2, 4, 6, 8, 10, 12) for p in ("weight", "bias")
    )


def test_pose_tokens_are_bf16_rounded() -> None:
    torch.manual_seed(0)
    emb = PoseEmbedding(dim=8).train(False)
    win = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        raw = emb(pose_embedding_input(win))
    tok = pose_tokens(emb, win)
    assert torch.equal(tok, raw.to(torch.bfloat16).float())
    assert torch.equal(pose_tokens(emb, win, round_bf16=False), raw)


# ----- the SVI-Dance file -----------------------------------------------------------------


def _pose_sd(dim: int = 8, hidden: int = 16, prefix: str = "dwpose_embedding.") -> dict:
    emb = PoseEmbedding(dim, hidden)
    return {prefix + k: v.clone() for k, v in emb.state_dict().items()}


def _lora_sd() -> dict:
    return {
        "pipe.dit.blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 8),
        "pipe.dit.blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(8, 2),
    }


def test_split_dance_state_dict_any_prefix_and_ignored_modules(caplog) -> None:
    sd = {**_pose_sd(prefix="model.dwpose_embedding."), **_lora_sd()}
    sd["randomref_embedding_pose.0.weight"] = torch.zeros(1)
    with caplog.at_level("INFO", logger="svi"):
        lora, pose = split_dance_state_dict(sd, "x.safetensors")
    assert sorted(lora) == sorted(_lora_sd())
    assert "0.weight" in pose and "12.bias" in pose and len(pose) == 14
    assert "randomref_embedding_pose" in caplog.text


def test_load_dance_file_round_trip(tmp_path) -> None:
    path = tmp_path / "svi-dance.safetensors"
    sd = {**_pose_sd(dim=8), **_lora_sd()}
    save_file({k: v.to(torch.bfloat16) if "dwpose" in k else v for k, v in sd.items()}, str(path))
    w = load_dance_file(path, expected_dim=8)
    assert w.pose.dim == 8 and next(w.pose.parameters()).dtype == torch.float32
    assert torch.equal(
        w.pose[12].weight, sd["dwpose_embedding.12.weight"].to(torch.bfloat16).float()
    )


def test_load_dance_file_refuses_a_plain_lora(tmp_path) -> None:
    path = tmp_path / "svi-shot.safetensors"
    save_file(_lora_sd(), str(path))
    with pytest.raises(CheckpointError, match="no pose-embedding tensors") as e:
        load_dance_file(path)
    assert "svi-shot.safetensors" in str(e.value)


def test_load_dance_file_refuses_another_width(tmp_path) -> None:
    path = tmp_path / "svi-dance.safetensors"
    save_file({**_pose_sd(dim=8), **_lora_sd()}, str(path))
    with pytest.raises(CheckpointError, match="8 wide.*1536 wide") as e:
        load_dance_file(path, expected_dim=1536)
    assert "svi-dance.safetensors" in str(e.value)


def test_load_dance_file_refuses_pose_only(tmp_path) -> None:
    path = tmp_path / "pose_only.safetensors"
    save_file(_pose_sd(), str(path))
    with pytest.raises(CheckpointError, match="no LoRA tensors"):
        load_dance_file(path)


def test_load_pose_embedding_names_the_bad_key() -> None:
    sd = {k.split("dwpose_embedding.")[1]: v for k, v in _pose_sd().items()}
    broken = dict(sd)
    del broken["6.bias"]
    with pytest.raises(CheckpointError, match=r"missing 'dwpose_embedding\.6\.bias'"):
        load_pose_embedding(broken, "f.safetensors")
    bad = dict(sd)
    bad["4.weight"] = torch.zeros(16, 16, 3, 3, 1)
    with pytest.raises(CheckpointError, match=r"dwpose_embedding\.4\.weight' has shape"):
        load_pose_embedding(bad, "f.safetensors")
    extra = dict(sd)
    extra["14.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_pose_embedding(extra, "f.safetensors")
