"""The per-clip condition seam: plans, extras through the loop, per-clip identity, legacy runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _svi_fakes import FakeBackend
from safetensors.torch import load_file
from test_loop import PROMPTS, reference, settings

from svi_core.conditions import ClipCondition, ClipPlan
from svi_core.errors import Cancelled, RunMismatchError, SVIError
from svi_core.guidance import Guidance
from svi_core.loop import LoopInputs, RunSettings, prepare_run, run_clips
from svi_core.modes import get_mode
from svi_core.video_io import read_video_frames

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class Beat:
    """A test condition: clip k gets the payload tensor ``values[k]`` and, optionally, its
    seed from ``seeds`` (a stand-in for an audio window or a schedule line)."""

    values: tuple[float, ...]
    seeds: tuple[int, ...] = ()
    name: str = "beat"

    def identity(self):
        return {"kind": "beat", "seeded": bool(self.seeds)}

    def validate(self, settings: RunSettings) -> None:
        if len(self.values) < settings.num_clips:
            raise SVIError(f"beat: {len(self.values)} values for {settings.num_clips} clips")

    def for_clip(self, plan: ClipPlan, settings: RunSettings) -> ClipPlan:
        plan = plan.with_extra(self.name, torch.full((2,), self.values[plan.index]))
        if self.seeds:
            plan = plan.replace(seed=self.seeds[plan.index])
        return plan


def latents(run_dir):
    m = json.loads((Path(run_dir) / "manifest.json").read_text())
    return [load_file(str(Path(run_dir) / c["state"]))["latent"] for c in m["clips"]]


def go(tmp, s, cond, backend=None, **kw):
    be = backend or FakeBackend(clip_vision=s.mode.clip_vision)
    inputs = LoopInputs(reference(), PROMPTS, conditions=(cond,) if cond else ())
    res = run_clips(be, s, inputs, tmp / "run", output=tmp / "out.mp4", **kw)
    return be, res


def test_condition_reaches_every_clip_and_changes_it(tmp_path):
    cond = Beat(values=(0.5, -1.0, 2.0), seeds=(7, 8, 9))
    assert isinstance(cond, ClipCondition)
    be, res = go(tmp_path / "a", settings("tom", clips=3), cond)
    assert [float(r.extras["beat"][0]) for r in be.requests] == [0.5, -1.0, 2.0]
    assert [r.seed for r in be.requests] == [7, 8, 9]
    _, plain = go(tmp_path / "b", settings("tom", clips=3), None)
    assert not torch.equal(latents(res.run_dir)[0], latents(plain.run_dir)[0])
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["identity_version"] == 2
    assert manifest["settings"]["clip_conditions"] == {"beat": {"kind": "beat", "seeded": True}}
    plans = [c["plan"] for c in manifest["clips"]]
    assert [p["seed"] for p in plans] == [7, 8, 9]
    assert len({p["extra.beat"] for p in plans}) == 3


def test_finished_clips_cannot_change_but_later_ones_can(tmp_path):
    s2, s3 = settings("tom", clips=2), settings("tom", clips=3)
    go(tmp_path, s2, Beat(values=(0.5, -1.0, 2.0)))
    # clip 1 is finished: another value for it is refused, naming the clip and the field
    with pytest.raises(RunMismatchError, match=r"clip 1 is already made with extra\.beat="):
        go(tmp_path, s3, Beat(values=(0.5, 3.0, 2.0)))
    # clip 2 is not made yet: its value may change (e.g. a longer audio track, a new schedule)
    be, res = go(tmp_path, s3, Beat(values=(0.5, -1.0, 4.0)))
    assert [r.index for r in be.requests] == [2] and float(be.requests[0].extras["beat"][0]) == 4
    # the condition's run-level settings are part of the run identity
    with pytest.raises(RunMismatchError, match="setting clip_conditions"):
        go(tmp_path, s3, Beat(values=(0.5, -1.0, 4.0), seeds=(0, 42, 84)))
    with pytest.raises(RunMismatchError, match="clip_conditions"):
        go(tmp_path, s3, None)


def test_resume_with_a_condition_is_bit_exact(tmp_path):
    s = settings("film", clips=3)
    cond = Beat(values=(0.1, 0.2, 0.3))
    _, full = go(tmp_path / "a", s, cond)

    def cancel(clip, done, total):
        if clip == 1 and done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        go(tmp_path / "b", s, cond, on_step=cancel)
    _, resumed = go(tmp_path / "b", s, cond)
    for a, b in zip(latents(full.run_dir), latents(resumed.run_dir), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(
        np.stack(list(read_video_frames(full.video))),
        np.stack(list(read_video_frames(resumed.video))),
    )


def test_the_mode_names_the_conditions_it_needs(tmp_path):
    mode = get_mode("tom", frames=9, steps=2, conditions=("beat",))
    s = RunSettings(mode=mode, width=48, height=32, num_clips=2)
    with pytest.raises(SVIError, match="needs the per-clip condition"):
        prepare_run(s, LoopInputs(reference(), PROMPTS))
    with pytest.raises(SVIError, match="2 clips"):  # the condition validates before any work
        prepare_run(s, LoopInputs(reference(), PROMPTS, conditions=(Beat(values=(1.0,)),)))
    prepare_run(s, LoopInputs(reference(), PROMPTS, conditions=(Beat(values=(1.0, 2.0)),)))
    with pytest.raises(SVIError, match="named 'beat'"):
        prepare_run(
            s,
            LoopInputs(
                reference(), PROMPTS, conditions=(Beat(values=(1.0, 2.0)), Beat((1.0, 2.0)))
            ),
        )


def test_a_backend_without_the_hook_refuses_the_extra():
    pytest.importorskip("diffusers")
    from svi_core.backend import ClipRequest
    from svi_core.standalone.backend import DiffusersBackend

    be = DiffusersBackend(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    req = ClipRequest(
        index=3,
        seed=0,
        noise=torch.zeros(1, 16, 1, 1, 1),
        cond_latent=torch.zeros(1, 16, 1, 1, 1),
        mask=torch.zeros(1, 4, 1, 1, 1),
        positive=torch.zeros(1, 4, 8),
        negative=torch.zeros(1, 4, 8),
        clip_vision=None,
        steps=1,
        shift=5.0,
        guidance=Guidance(scale=1.0),
        extras={"audio": torch.zeros(1)},
    )
    with pytest.raises(SVIError, match="cannot apply the per-clip condition.*audio.*clip 3"):
        be.denoise(req)


def test_plans_hold_the_per_clip_decisions():
    s = settings("tom", clips=2)
    run = prepare_run(s, LoopInputs(reference(), PROMPTS))
    p = run.plan(1)
    assert (p.index, p.seed, p.prompt_index, p.positive) == (1, 42, 1, PROMPTS[1])
    assert p.guidance == Guidance(scale=5.0) and p.keyframe is None and not p.extras
    with pytest.raises(TypeError):
        p.extras["x"] = 1  # plans are immutable
    q = p.replace(reference=torch.zeros(16, 16, 3, dtype=torch.uint8))
    with pytest.raises(SVIError, match="reference image must be uint8"):
        from svi_core.loop import _check_plan

        _check_plan(q, s)


@pytest.mark.parametrize("name", ["film", "v2_pro"])
def test_a_run_made_by_the_previous_version_resumes_and_extends(tmp_path, name):
    """tests/fixtures/legacy_run_v1 holds 2-clip runs written by the version before the run
    identity was versioned (no per-clip plans, no segment hashes, fewer mode fields), made
    with the fake backend and the settings of tests/test_loop.py."""
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "legacy_run_v1" / name, old / "run")
    s = settings(name, clips=3)
    be, res = go(old, s, None)
    assert [r.index for r in be.requests] == [2], "the two old clips are reused"
    _, fresh = go(tmp_path / "new", s, None)
    for a, b in zip(latents(fresh.run_dir), latents(res.run_dir), strict=True):
        assert torch.equal(a, b)
    assert res.frames == fresh.frames
    # other settings are still refused for the old run
    with pytest.raises(RunMismatchError, match="cfg"):
        go(old, settings(name, clips=3, cfg=4.0), None)
