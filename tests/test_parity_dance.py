"""SVI-Dance pose embedding and its application vs the OFFICIAL DiffSynth pipeline.

The fixture in ``tests/fixtures/dance`` was written by ``tests/fixtures/make_dance_fixture.py``
running the official ``SVIDanceVideoPipeline`` (fetch_models + __call__) on CPU float32; see
that script for exactly what was recorded. Tolerance 1e-4 (fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity_support import report
from safetensors.torch import load_file

from svi_core.guidance import Guidance
from svi_core.pose import (
    load_dance_file,
    load_pose_embedding,
    pose_embedding_input,
    pose_tokens,
    split_dance_state_dict,
)
from svi_core.sampler import sample_flow

TOL = 1e-4
FIX = Path(__file__).resolve().parent / "fixtures" / "dance"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "expected.safetensors"))


@pytest.fixture(scope="module")
def run_cfg() -> dict:
    return json.loads((FIX / "config.json").read_text())["run"]


@pytest.fixture(scope="module")
def tiny_pose():
    _, pose = split_dance_state_dict(load_file(str(FIX / "tiny_pose.safetensors")), "tiny_pose")
    return load_pose_embedding(pose, "tiny_pose")


@pytest.fixture(scope="module")
def dit():
    from svi_core.standalone.models import load_wan_transformer

    torch.set_num_threads(1)
    return load_wan_transformer(FIX / "tiny_dit.safetensors")


def _tokens_5d(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Official ``[1, (f h w), c]`` -> ``[1, c, f, h, w]`` (the inverse of svi_video_dance.py:530)."""
    f, h, w = grid
    return tokens.reshape(1, f, h, w, -1).permute(0, 4, 1, 2, 3)


def test_embedding_input_layout_is_the_official_one(expected) -> None:
    ours = pose_embedding_input(expected["window"])
    assert ours.shape == expected["embed_input"].shape
    assert torch.equal(ours, expected["embed_input"])


def test_dance_file_5120_embedding_matches_official(expected) -> None:
    weights = load_dance_file(FIX / "dance_5120.safetensors", expected_dim=5120)
    assert weights.pose.dim == 5120 and weights.pose.hidden == 16
    assert sorted(weights.lora) == [
        "pipe.dit.blocks.0.self_attn.q.lora_A.default.weight",
        "pipe.dit.blocks.0.self_attn.q.lora_B.default.weight",
    ]
    with torch.no_grad():
        out = weights.pose(pose_embedding_input(expected["window"]))
    ref = expected["embed_out_5120"]
    assert out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    report("dance pose embedding (width 5120)", diff, TOL)
    assert diff <= TOL


def test_pose_tokens_match_the_add_condition(expected, tiny_pose) -> None:
    with torch.no_grad():
        raw = tiny_pose(pose_embedding_input(expected["window"]))
    assert (raw - expected["embed_out_tiny"]).abs().max().item() <= TOL
    tokens = pose_tokens(tiny_pose, expected["window"])
    want = _tokens_5d(expected["tokens"], tuple(tokens.shape[2:]))
    diff = (tokens - want).abs().max().item()
    report("dance pose tokens (bf16-rounded add_condition)", diff, TOL)
    assert diff <= TOL
    # the official rounds to bf16 (svi_video_dance.py:529): without it we would be off
    assert (raw - want).abs().max().item() > TOL


def _velocity(dit, tokens, pos, neg):
    """A ``VelocityFn``: one diffusers forward per guidance pass; the pose tokens go to every
    pass that does not list ``"pose"`` in its nulled conditions."""
    from svi_core.standalone.pose import pose_tokens_added

    def forward(x, t, ctx, with_pose):
        ts = torch.full((x.shape[0],), t, dtype=torch.float32)
        kwargs = dict(hidden_states=x, timestep=ts, encoder_hidden_states=ctx, return_dict=False)
        if with_pose and tokens is not None:
            with pose_tokens_added(dit, tokens):
                return dit(**kwargs)[0].float()
        return dit(**kwargs)[0].float()

    def velocity(x, t, expert, passes):
        return [
            forward(x, t, neg if p.negative_text else pos, "pose" not in p.null) for p in passes
        ]

    return velocity


def test_first_step_velocities_match(expected, dit, tiny_pose, run_cfg) -> None:
    from svi_core.schedule import flow_schedule

    tokens = pose_tokens(tiny_pose, expected["window"])
    t0 = float(flow_schedule(run_cfg["steps"], run_cfg["shift"]).timesteps[0])
    v = _velocity(dit, tokens, expected["context_pos"], expected["context_neg"])
    with torch.no_grad():
        vc, vu = v(expected["noise"], t0, 0, Guidance(scale=run_cfg["cfg_text"]).passes)
    dc = (vc - expected["v_cond0"]).abs().max().item()
    du = (vu - expected["v_uncond0"]).abs().max().item()
    report("dance DiT + pose, conditional pass (step 0)", dc, TOL)
    report("dance DiT + pose, unconditional pass (step 0)", du, TOL)
    assert dc <= TOL and du <= TOL


def test_noise_is_the_official_noise(expected) -> None:
    from svi_core.loop import clip_noise

    n = expected["noise"]
    ours = clip_noise(int(expected["seed"][0]), n.shape[2], n.shape[3], n.shape[4])
    assert torch.equal(ours, n)


def test_sampled_clip_matches_official(expected, dit, tiny_pose, run_cfg) -> None:
    tokens = pose_tokens(tiny_pose, expected["window"])
    pos, neg = expected["context_pos"], expected["context_neg"]
    kw = dict(steps=run_cfg["steps"], shift=run_cfg["shift"])
    # official Dance: text CFG 2.0, the pose in BOTH passes (cond_wo_pose=True, test:259)
    official = Guidance(scale=run_cfg["cfg_text"])
    cond_only = Guidance(scale=run_cfg["cfg_text"], uncond_null=frozenset({"pose"}))
    with torch.no_grad():
        out = sample_flow(
            _velocity(dit, tokens, pos, neg), expected["noise"], guidance=official, **kw
        )
        no_pose = sample_flow(
            _velocity(dit, None, pos, neg), expected["noise"], guidance=official, **kw
        )
        uncond_without_pose = sample_flow(
            _velocity(dit, tokens, pos, neg), expected["noise"], guidance=cond_only, **kw
        )
    diff = (out - expected["latents"]).abs().max().item()
    report(f"dance clip, {run_cfg['steps']} steps, text CFG {run_cfg['cfg_text']}", diff, TOL)
    assert diff <= TOL
    assert (no_pose - expected["latents_no_pose"]).abs().max().item() <= TOL
    # dropping the pose from the unconditional pass is NOT the official run
    assert (uncond_without_pose - expected["latents"]).abs().max().item() > 100 * TOL
