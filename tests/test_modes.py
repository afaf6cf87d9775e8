import dataclasses

import pytest

from svi_core.errors import SVIError
from svi_core.modes import MODES, NEGATIVE_PROMPT_EN, NEGATIVE_PROMPT_ZH, get_mode


def test_wan21_presets_match_official_scripts():
    shot, film, tom, v2 = (get_mode(n) for n in ("shot", "film", "tom", "v2"))
    assert (shot.motion_frames, shot.padding, shot.prompt_policy) == (1, "reference", "first")
    assert (film.motion_frames, film.padding, film.prompt_policy) == (5, "zeros", "cycle")
    assert (tom.motion_frames, tom.padding) == (1, "zeros")
    assert (v2.motion_frames, v2.padding, v2.prompt_repeat) == (5, "reference", 2)
    for m in (shot, film, tom, v2):
        assert m.carry == "pixel" and m.clip_vision and m.stitch == "drop_tail"
        assert (m.cfg, m.steps, m.shift, m.frames, m.fps) == (5.0, 50, 5.0, 81, 24.0)
        assert (m.seed_base, m.seed_stride, m.boundary, m.mask_frames) == (0, 42, None, 1)
        assert m.negative_prompt == NEGATIVE_PROMPT_EN
        assert m.overlap_frames == m.motion_frames


def test_default_clip_counts():
    assert get_mode("shot").clip_count(7) == 10
    assert get_mode("film").clip_count(3) == 3
    assert get_mode("film").clip_count(30) == 10
    assert get_mode("tom").clip_count(4) == 4
    assert get_mode("v2").clip_count(6) == 12
    assert get_mode("v2_pro").clip_count(3) == 15


def test_pro_preset():
    pro = get_mode("v2_pro")
    assert (pro.carry, pro.motion_latents, pro.padding, pro.clip_vision) == (
        "latent",
        1,
        "zeros",
        False,
    )
    assert (pro.boundary, pro.fps, pro.width, pro.height) == (0.875, 15.0, 832, 480)
    assert pro.overlap_frames == 5  # 1 + 4k for k = 1
    assert get_mode("v2_pro", motion_latents=2).overlap_frames == 9
    assert get_mode("v2_pro", overlap=4).overlap_frames == 4
    assert pro.negative_prompt == NEGATIVE_PROMPT_ZH
    assert pro.negative_prompt.startswith("色调艳丽，过曝") and pro.negative_prompt.endswith(
        "倒着走"
    )
    assert pro.video_length(3) == 81 + 2 * 76


def test_lengths_and_seeds():
    film = get_mode("film")
    assert film.video_length(4) == 4 * 81 - 3 * 5
    assert [film.seed_for(k) for k in range(3)] == [0, 42, 84]
    assert get_mode("film", seed_base=7, seed_stride=3).seed_for(2) == 13
    assert get_mode("v2_w22").video_length(2) == 81 + 80


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODES["film"].cfg = 1.0  # type: ignore[misc]


def test_unknown_name_and_field():
    with pytest.raises(SVIError, match="unknown SVI mode 'flim'.*film"):
        get_mode("flim")
    with pytest.raises(SVIError, match="unknown mode setting.*cfg_scale"):
        get_mode("film", cfg_scale=3.0)


def test_bad_override_is_refused():
    with pytest.raises(SVIError, match="frames=80 per clip must be 4k"):
        get_mode("film", frames=80)
    with pytest.raises(SVIError, match="motion_frames"):
        get_mode("film", motion_frames=0)


def test_timestep_dtype_per_model_family():
    assert {get_mode(n).timestep_dtype for n in ("shot", "film", "tom", "v2")} == {"float32"}
    assert {get_mode(n).timestep_dtype for n in ("v2_w22", "v2_pro")} == {"bfloat16"}
    with pytest.raises(SVIError, match="timestep_dtype"):
        get_mode("film", timestep_dtype="float16")


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("cfg", float("nan"), "cfg=nan must be a finite number"),
        ("cfg", float("inf"), "cfg=inf must be a finite number"),
        ("cfg", 101.0, "cfg=101.0 must be in \\(0, 100\\]"),
        ("shift", float("nan"), "shift=nan must be a finite number in \\[0.1, 100\\]"),
        ("shift", float("-inf"), "shift=-inf"),
        ("fps", float("nan"), "fps=nan must be a finite number in \\[1, 120\\]"),
        ("steps", 10**6, "steps=1000000 must be an integer in \\[1, 1000\\]"),
        ("frames", 2001, "frames=2001 per clip must be 4k \\+ 1 in \\[5, 1001\\].*try 1001"),
        ("seed_base", -1, "seed_base=-1 must be an integer in \\[0, 18446744073709551615\\]"),
        ("prompt_repeat", 10**9, "prompt_repeat=1000000000 must be an integer in \\[1, 1000\\]"),
    ],
)
def test_non_finite_and_absurd_numbers_are_refused_naming_the_bound(field, value, bound):
    with pytest.raises(SVIError, match=bound):
        get_mode("film", **{field: value})


def test_every_problem_of_a_mode_is_listed_at_once():
    with pytest.raises(SVIError) as info:
        get_mode("film", cfg=float("nan"), steps=0, frames=80)
    text = str(info.value)
    assert "cfg=nan" in text and "steps=0" in text and "frames=80" in text


def test_run_settings_bounds():
    from svi_core.loop import RunSettings

    mode = get_mode("film", frames=9)
    with pytest.raises(SVIError, match="num_clips=99999999999999999999 must be an integer in"):
        RunSettings(mode, 32, 32, num_clips=99999999999999999999).validate()
    with pytest.raises(SVIError, match="width=160000 \\(largest valid: 4096\\)"):
        RunSettings(mode, 160000, 160000, num_clips=1).validate()
    big_seed = get_mode("film", frames=9, seed_base=2**64 - 10)
    with pytest.raises(SVIError, match="last clip's seed"):
        RunSettings(big_seed, 32, 32, num_clips=2).validate()
    RunSettings(big_seed, 32, 32, num_clips=1).validate()  # the seed itself fits


def test_clip_vision_rule_is_one_sentence_for_every_front_end():
    from svi_core.modes import clip_vision_problem

    assert clip_vision_problem(get_mode("v2_pro"), False, "x") is None  # Wan2.2: no CLIP
    assert clip_vision_problem(get_mode("film"), True, "x") is None
    text = clip_vision_problem(get_mode("film"), False, "pass --clip-vision FILE")
    assert "needs CLIP vision" in text and text.endswith("pass --clip-vision FILE")


def test_talk_preset_is_the_official_one():
    """test_svi_talk.py / scripts/test/svi_talk.sh / svi_video_talk.py (TALK_RULES §1-§9)."""
    m = get_mode("talk")
    assert (m.model, m.clip_vision, m.carry, m.motion_frames, m.padding) == (
        "wan2.1", True, "pixel", 1, "reference",
    )  # fmt: skip
    # every frame of every clip kept (test_svi_talk.py:304-308): N * 81 frames
    assert m.overlap_frames == 0 and m.video_length(50) == 50 * 81
    assert (m.guidance, m.cfg, m.cfg_audio) == ("text_audio", 2.0, 5.0)
    assert [(p.negative_text, sorted(p.null)) for p in m.guidance_for().passes] == [
        (False, []), (True, []), (True, ["audio"]),
    ]  # fmt: skip
    assert (m.steps, m.shift, m.fps, m.max_width, m.resize) == (50, 5.0, 25.0, 640, "fit_width")
    assert m.default_prompt == "a person is talking" and m.conditions == ("audio",)
    assert m.negative_prompt == get_mode("shot").negative_prompt
    # clips: the official 50 without speech; with speech, enough to cover it
    assert m.clip_count(1) == 50
    assert m.clip_count(1, 7500) == 93  # 5 min at 25 fps: ceil((7500 + 1) / 81)
    assert m.clip_count(1, 81) == 1 and m.clip_count(1, 82) == 2
