"""The schedule equals the official one recorded in the shared fixtures (flow_schedule.json)."""

import json

import pytest
import torch
from parity_support import fixtures_dir

from svi_core.schedule import expert_switch_step, flow_schedule

FIXTURES = fixtures_dir()
SCHEDULE = FIXTURES / "flow_schedule.json"


@pytest.fixture(scope="module")
def official():
    if not SCHEDULE.is_file():
        pytest.skip(f"no fixture at {SCHEDULE} (set SVI_FIXTURES_DIR)")
    return json.loads(SCHEDULE.read_text())


def test_schedule_matches_fixture(official):
    s = flow_schedule(official["num_inference_steps"], official["shift"])
    assert torch.allclose(
        s.timesteps, torch.tensor(official["timesteps"], dtype=torch.float64), atol=1e-9, rtol=0
    )
    assert torch.allclose(
        s.sigmas,
        torch.tensor(official["sigmas_with_terminal"], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    assert float(s.sigmas[-1]) == official["sigma_after_last_step"]


def test_pro_expert_switch(official):
    s = flow_schedule(official["num_inference_steps"], official["shift"])
    k = expert_switch_step(s, 0.875)
    ts = official["timesteps"]
    assert all(t >= 875 for t in ts[:k]) and all(t < 875 for t in ts[k:])
    assert k == 21  # steps 0-20 high-noise expert (DESIGN §3)


def test_comfy_simple_schedule_at_shift_5_is_the_official_one(official):
    """What the nodes sample with (ComfyUI's ModelSamplingSD3 at shift 5 + scheduler 'simple',
    float32, recorded by tests/fixtures/make_fixtures.py) equals the official schedule."""
    if "comfy_simple_sigmas" not in official:
        pytest.skip("this fixture set has no comfy_simple_sigmas")
    s = flow_schedule(official["num_inference_steps"], official["shift"])
    comfy = torch.tensor(official["comfy_simple_sigmas"], dtype=torch.float64)
    assert comfy.shape == s.sigmas.shape
    assert torch.allclose(comfy, s.sigmas, atol=5e-7, rtol=0)
