"""svi_core.standalone.pose: the pose hook on diffusers' Wan transformer (beyond the parity)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svi_core.errors import SVIError

FIX = Path(__file__).resolve().parent / "fixtures" / "dance"


@pytest.fixture(scope="module")
def dit():
    from svi_core.standalone.models import load_wan_transformer

    torch.set_num_threads(1)
    return load_wan_transformer(FIX / "tiny_dit.safetensors")


def _forward(dit, x):
    ctx = torch.zeros(1, 4, dit.config.text_dim)
    t = torch.tensor([500.0])
    with torch.no_grad():
        return dit(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]


def test_hook_adds_then_goes_away(dit) -> None:
    from svi_core.standalone.pose import pose_tokens_added

    x = torch.randn(2, 16, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    plain = _forward(dit, x)
    zero = torch.zeros(1, 48, 2, 2, 3)
    with pose_tokens_added(dit, zero):
        assert torch.equal(_forward(dit, x), plain)  # adding zeros changes nothing
    tokens = torch.randn(1, 48, 2, 2, 3, generator=torch.Generator().manual_seed(1))
    with pose_tokens_added(dit, tokens):
        posed = _forward(dit, x)
    assert (posed - plain).abs().max() > 1e-3
    # broadcast over the batch: both entries (cond and uncond of one CFG batch) get the pose
    with pose_tokens_added(dit, tokens):
        single = _forward(dit, x[1:])
    assert torch.allclose(single, posed[1:], atol=1e-5)
    assert torch.equal(_forward(dit, x), plain)  # the hook is gone


def test_hook_refuses_other_grids_and_widths(dit) -> None:
    from svi_core.standalone.pose import check_pose_width, pose_tokens_added

    x = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(2))
    plain = _forward(dit, x)
    with pytest.raises(SVIError, match="patch grid"):
        with pose_tokens_added(dit, torch.ones(1, 48, 3, 2, 3)):
            _forward(dit, x)
    assert torch.equal(_forward(dit, x), plain)  # removed after the error too
    with pytest.raises(SVIError, match="do not fit this DiT"):
        with pose_tokens_added(dit, torch.zeros(1, 5120, 2, 2, 3)):
            pass
    with pytest.raises(SVIError, match="5120 wide but this DiT is 48 wide"):
        check_pose_width(dit, 5120, "svi-dance.safetensors")
    check_pose_width(dit, 48, "tiny")
