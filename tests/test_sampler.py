import pytest
import torch

from svi_core.errors import Cancelled, SVIError
from svi_core.guidance import Guidance, GuidancePass
from svi_core.sampler import sample_flow
from svi_core.schedule import expert_switch_step, flow_schedule


def test_exact_velocity_recovers_x0_and_cfg_combines():
    x0 = torch.randn(1, 16, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 16, 2, 3, 3, generator=torch.Generator().manual_seed(2))

    # the ideal velocity for a straight path: v = noise - x0 everywhere
    def velocity(x, t, expert, passes):
        return [noise - x0 + (3.0 if p.negative_text else 0.0) for p in passes]

    out = sample_flow(velocity, noise, steps=7, guidance=1.0, shift=5.0)
    assert torch.allclose(out, x0, atol=1e-5)
    # CFG g: v = vu + g (vc - vu) = (noise - x0) + 3 (1 - g); over sigma 1 -> 0 x moves by -v
    out = sample_flow(velocity, noise, steps=7, guidance=4.0, shift=5.0)
    assert torch.allclose(out, x0 + 3.0 * (1 - 4.0) * -1.0, atol=1e-4)


def test_two_experts_switch_once_and_guided_flag():
    seen = []

    def velocity(x, t, expert, passes):
        seen.append((t, expert, len(passes) == 2))
        return [torch.zeros_like(x) for _ in passes]

    sample_flow(
        velocity, torch.zeros(1, 16, 1, 2, 2), steps=50, guidance=5.0, shift=5.0, boundary=0.875
    )
    experts = [e for _, e, _ in seen]
    assert experts == [0] * 21 + [1] * 29
    assert all(t >= 875 for t, e, _ in seen if e == 0) and all(
        t < 875 for t, e, _ in seen if e == 1
    )
    assert all(g for _, _, g in seen)
    seen.clear()
    sample_flow(velocity, torch.zeros(1, 16, 1, 2, 2), steps=4, guidance=1.0, shift=5.0)
    assert [e for _, e, _ in seen] == [0] * 4 and not any(g for *_, g in seen)
    assert expert_switch_step(flow_schedule(4, 5.0), None) == 4


def test_step_callback_and_cancel():
    calls = []

    def on_step(done, total):
        calls.append((done, total))
        if done == 3:
            raise Cancelled()

    def velocity(x, t, expert, passes):
        return [x]

    with pytest.raises(Cancelled):
        sample_flow(
            velocity, torch.ones(1, 16, 1, 1, 1), steps=10, guidance=1.0, shift=5.0, on_step=on_step
        )
    assert calls == [(1, 10), (2, 10), (3, 10)]


def test_bfloat16_timesteps_like_the_official_wan22_pipelines():
    seen = []

    def velocity(x, t, expert, passes):
        seen.append((t, expert))
        return [torch.zeros_like(x)]

    noise = torch.zeros(1, 16, 1, 1, 1)
    sample_flow(
        velocity,
        noise,
        steps=50,
        guidance=1.0,
        shift=5.0,
        boundary=0.875,
        timestep_dtype="bfloat16",
    )
    exact = flow_schedule(50, 5.0).timesteps.tolist()
    ts = [t for t, _ in seen]
    assert ts[1] == 996.0 and exact[1] != 996.0  # 995.93 reaches the model as bf16 996
    assert all(t % 4 == 0 for t in ts if t >= 512)  # bf16 spacing above 512
    assert all(abs(t - e) <= 2.0 for t, e in zip(ts, exact, strict=True))
    # the switch still follows the exact schedule: steps 0-20 high-noise
    assert [e for _, e in seen] == [0] * 21 + [1] * 29


def test_talk_guidance_runs_three_passes_and_combines_like_the_official_pipeline():
    # official svi_video_talk.py:455-462: cond = (positive text, audio), drop_text = (negative
    # text, audio), uncond = (negative text, null audio);
    # v = uncond + text * (cond - drop_text) + audio * (drop_text - uncond)
    g = Guidance(kind="text_audio", scale=2.0, audio_scale=5.0)
    assert g.passes == (
        GuidancePass(negative_text=False),
        GuidancePass(negative_text=True),
        GuidancePass(negative_text=True, null=frozenset({"audio"})),
    )
    c, d, u = (torch.full((2,), v) for v in (1.0, 10.0, 100.0))
    assert torch.equal(g.combine([c, d, u]), u + 2.0 * (c - d) + 5.0 * (d - u))
    # both scales 1: one conditional pass (official `if text != 1 or audio != 1`)
    one = Guidance(kind="text_audio", scale=1.0, audio_scale=1.0)
    assert one.passes == (GuidancePass(),)
    assert torch.equal(one.combine([c]), c)
    # only the audio scale != 1: still three passes
    assert len(Guidance(kind="text_audio", scale=1.0, audio_scale=5.0).passes) == 3


def test_cfg_guidance_can_drop_a_condition_in_the_unconditional_pass():
    g = Guidance(scale=2.0, uncond_null=frozenset({"pose"}))
    assert g.passes == (GuidancePass(), GuidancePass(negative_text=True, null=frozenset({"pose"})))
    with pytest.raises(RuntimeError, match="expects 2"):
        g.combine([torch.zeros(1)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0, 1e6])
def test_guidance_scales_must_be_finite_and_bounded(bad):
    with pytest.raises(SVIError, match="scale"):
        Guidance(scale=bad)
    with pytest.raises(SVIError, match="audio_scale"):
        Guidance(kind="text_audio", scale=2.0, audio_scale=bad)
