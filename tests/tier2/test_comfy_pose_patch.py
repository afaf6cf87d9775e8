"""Tier 2: SVI-Dance pose tokens on ComfyUI's own Wan model (``nodes.pose_patch``).

Runs ``check_pose_patch.py`` with the host's python (ComfyUI's WanModel, ModelPatcher,
wrappers and samplers), then checks here that ComfyUI's forward with the pose wrapper equals
diffusers' forward with the pose hook (``svi_core.standalone.pose``, itself proven equal to the
official DiffSynth pipeline by ``tests/test_parity_dance.py``), that the hook is removed after
each forward, and that sampling through ComfyUI changes with the pose and is repeatable.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .comfy_host import comfy_paths

pytestmark = [pytest.mark.tier2, pytest.mark.slow]

PATHS = comfy_paths()
if PATHS is None:
    pytest.skip(
        "tier 2 needs a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON to its venv's "
        "python, with this pack's requirements.txt installed)",
        allow_module_level=True,
    )

TOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    root, python = PATHS
    work = tmp_path_factory.mktemp("pose_patch")
    proc = subprocess.run(
        [python, str(Path(__file__).parent / "check_pose_patch.py"), str(root),
         str(Path(__file__).parents[2]), str(work)],
        capture_output=True, text=True, cwd=str(root), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return work, info


def test_comfy_pose_forward_equals_the_diffusers_hook(run) -> None:
    from svi_core.pose import load_pose_embedding, pose_tokens, split_dance_state_dict
    from svi_core.standalone.models import load_wan_transformer
    from svi_core.standalone.pose import pose_tokens_added

    work, info = run
    assert info["key"] in info["wrapper_keys"]
    out = load_file(str(work / "out.safetensors"))
    sd = load_file(str(work / "pose.safetensors"))
    window = sd.pop("window")
    _, pose_sd = split_dance_state_dict(sd, "pose.safetensors")
    emb = load_pose_embedding(pose_sd, "pose.safetensors")
    dit = load_wan_transformer(work / "dit.safetensors")
    tokens = pose_tokens(emb, window)
    kw = dict(
        hidden_states=out["x"],
        timestep=out["t"],
        encoder_hidden_states=out["context"],
        return_dict=False,
    )
    with torch.no_grad():
        plain = dit(**kw)[0]
        with pose_tokens_added(dit, tokens):
            posed = dit(**kw)[0]
    d_plain = (plain - out["plain"]).abs().max().item()
    d_pose = (posed - out["pose"]).abs().max().item()
    print(f"ComfyUI {info['comfyui']}: plain {d_plain:.2e}, with pose {d_pose:.2e}")
    assert d_plain <= TOL and d_pose <= TOL
    assert (out["pose"] - out["plain"]).abs().max().item() > 100 * TOL
    assert torch.equal(out["plain_after"], out["plain"])


def test_comfy_sampling_with_pose(run) -> None:
    work, _ = run
    out = load_file(str(work / "out.safetensors"))
    assert (out["sample_pose"] - out["sample_plain"]).abs().max().item() > 1e-3
    assert torch.equal(out["sample_pose"], out["sample_pose_again"])
    assert torch.equal(out["sample_pose"], out["sample_pose_clone"])


def test_comfy_null_passes_drop_the_pose_row_by_row(run) -> None:
    """``null_passes={1}``: in a [cond, uncond] batch (cond_or_uncond [0, 1]) the cond row gets
    the pose, the uncond row is the plain forward (the official cond_wo_pose=False branch)."""
    work, _ = run
    out = load_file(str(work / "out.safetensors"))
    assert (out["rows"][:1] - out["pose"]).abs().max().item() <= TOL
    assert (out["rows"][1:] - out["plain_neg"]).abs().max().item() <= TOL
    s = out["sample_uncond_without_pose"]
    assert (s - out["sample_pose"]).abs().max().item() > 1e-4
    assert (s - out["sample_plain"]).abs().max().item() > 1e-4
