"""The ERFT study's machinery (experiments/toyworld): the base continuation resumes
step-exactly when its cap is raised, which configuration changes reuse a work folder, and the
target check (per-model intervals as the issue words it, and paired by scene), the scaled-errors
section, the training-seed replicates, and the scene-spread measure on rollouts with known
spread."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "toyworld"))
erft_base = pytest.importorskip("erft_base")
pytest.importorskip("diffusers")


def _clips(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Random normalised latents ``[n, 16, 4, 6, 8]`` (the toy clip's latent grid)."""
    g = torch.Generator().manual_seed(seed)
    return {"x0": torch.randn(n, 16, 4, 6, 8, generator=g),
            "cond": torch.randn(n, 16, 4, 6, 8, generator=g)}  # fmt: skip


def test_raising_the_cap_continues_step_exactly(tmp_path: Path):
    torch.set_num_threads(1)
    pool, val = _clips(6, 1), _clips(2, 2)
    quiet = lambda _msg: None  # noqa: E731
    one = erft_base.continue_base(tmp_path / "one", pool, val, 0, 4, eval_every=2, window=100,
                                  log=quiet)  # fmt: skip
    first = erft_base.continue_base(tmp_path / "two", pool, val, 0, 2, eval_every=2, window=100,
                                    log=quiet)  # fmt: skip
    assert first["steps"] == 2 and first["stopped"] == "max_steps"
    two = erft_base.continue_base(tmp_path / "two", pool, val, 0, 4, eval_every=2, window=100,
                                  log=quiet)  # fmt: skip
    assert two["steps"] == 4
    assert [c["val"] for c in two["curve"]] == [c["val"] for c in one["curve"]]
    a = load_file(str(tmp_path / "one" / "dit.safetensors"))
    b = load_file(str(tmp_path / "two" / "dit.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rec = json.loads((tmp_path / "two" / "base_curve.json").read_text())
    assert rec["best_val"] == min(c["val"] for c in rec["curve"])
    with pytest.raises(ValueError, match="past max_steps"):
        (tmp_path / "two" / "dit.safetensors").unlink()
        erft_base.continue_base(tmp_path / "two", pool, val, 0, 3, eval_every=2, window=100,
                                log=quiet)  # fmt: skip


def _study(work: Path, base_steps: int, stopped: str, **over) -> dict:
    (work / "base").mkdir(parents=True, exist_ok=True)
    (work / "base" / "record.json").write_text(json.dumps({"stopped": stopped}))
    for name in ("loras", "rollouts", "results"):
        (work / name).mkdir(exist_ok=True)
        (work / name / "x").write_text(name)
    (work / "why.json").write_text("{}")  # the error analysis' cache of the old base
    return {"seed": 0, "base_steps": base_steps, "ablations": "auto", **over}


def test_config_changes_the_study_accepts(tmp_path: Path):
    """Only additive settings, or a raised cap of a base that stopped at its cap, reuse a work
    folder; the latter moves what the old base produced aside and keeps the rest."""
    erft_study = pytest.importorskip("erft_study")
    old = _study(tmp_path, 3000, "max_steps")
    erft_study.supersede_base(tmp_path, old, {**old, "ablations": "yes"})
    erft_study.supersede_base(tmp_path, old, {**old, "error_scales": [3.0]})
    assert (tmp_path / "loras" / "x").is_file()  # additive: nothing moved
    for bad, why in (({**old, "seed": 1}, "seed"), ({**old, "base_steps": 2000}, "base_steps")):
        with pytest.raises(SystemExit, match=why):
            erft_study.supersede_base(tmp_path, old, bad)
    erft_study.supersede_base(tmp_path, old, {**old, "base_steps": 12000})
    moved = tmp_path / "superseded_base3000"
    assert [(moved / n / "x").read_text() for n in ("loras", "rollouts", "results")] == [
        "loras", "rollouts", "results"]  # fmt: skip
    assert not (tmp_path / "loras").exists() and (tmp_path / "base" / "record.json").is_file()
    assert (moved / "why.json").is_file() and not (tmp_path / "why.json").exists()
    flat = _study(tmp_path / "flat", 3000, "flattened")
    with pytest.raises(SystemExit, match="base_steps"):
        erft_study.supersede_base(tmp_path / "flat", flat, {**flat, "base_steps": 12000})


def _arm(offsets, shift: float, motion: float) -> list[dict]:
    return [{"per_clip": [{"delta_e": o + shift, "truth_colour_w1": o + shift, "motion": motion}
                          for _ in range(2)]} for o in offsets]  # fmt: skip


def test_targets_per_model_and_paired():
    """Scenes far apart (offsets 0..45) and ERFT 2 below every other model in each scene: the
    per-model intervals overlap (targets as written not met), the paired ones do not."""
    erft_report = pytest.importorskip("erft_report")
    offsets = [3.0 * i for i in range(16)]
    test = {"base": _arm(offsets, 10.0, 0.02), "plain": _arm(offsets, 10.5, 0.02),
            "erft": _arm(offsets, 8.0, 0.03)}  # fmt: skip
    v = erft_report.targets(test, 2)
    assert not v["met"] and v["paired_met"]
    assert v["checks"]["delta_e"]["erft_minus"]["base"][0] == pytest.approx(-2.0)
    test["erft"] = _arm(offsets, 8.0, 0.01)  # less motion than the base
    assert not erft_report.targets(test, 2)["paired_met"]
    tight = [10.0 + 0.01 * i for i in range(16)]
    apart = {"base": _arm(tight, 10.0, 0.02), "plain": _arm(tight, 10.5, 0.02),
             "erft": _arm(tight, 8.0, 0.03)}  # fmt: skip
    assert erft_report.targets(apart, 2)["met"]


def test_scaled_errors_section(tmp_path: Path):
    """The scaled-errors variant is reported against each arm, paired by scene: a variant 1.5
    below ERFT (and so 3.5 / 4 below plain / base) in every scene reads -1.5 / -3.5 / -4."""
    erft_report = pytest.importorskip("erft_report")
    offsets = [3.0 * i for i in range(16)]

    def arm(shift: float) -> list[dict]:
        return [{"per_clip": [{"delta_e": o + shift, "truth_colour_w1": o + shift,
                               "truth_motion_ratio": 0.5, "motion": 0.01} for _ in range(2)]}
                for o in offsets]  # fmt: skip

    test = {"base": arm(10.0), "plain": arm(9.5), "erft": arm(7.5)}
    lines = erft_report.scaled_section(tmp_path, test, {"x3": arm(6.0)}, 2)
    rows = [r for r in lines if r.startswith("| x3 |") or r.startswith("|  | appearance")]
    assert [r.rstrip(" |").split(" | ")[2:5] for r in rows] == [
        ["-1.50 [-1.50, -1.50]", "-3.50 [-3.50, -3.50]", "-4.00 [-4.00, -4.00]"]
    ] * 2
    assert (tmp_path / "scaled.png").is_file()


def test_scene_spread_on_known_rollouts(tmp_path: Path):
    """Rollouts that are the world's true frames spread exactly as the truth does; rollouts
    where every scene shows the same frames (collapsed to one image) spread 0; the report
    lists both."""
    import numpy as np

    erft_rollout = pytest.importorskip("erft_rollout")
    erft_report = pytest.importorskip("erft_report")
    from erft_data import WORLD

    from svi_core.toy.world import ToyScene

    scenes = [100, 101, 102]

    def write(name: str, frames_of) -> list[Path]:
        folders = []
        for s in scenes:
            d = tmp_path / name / f"scene{s}"
            d.mkdir(parents=True)
            f = frames_of(s)
            np.save(d / "clip_000.npy", f[:3])
            np.save(d / "clip_001.npy", f[3:5])
            folders.append(d)
        return folders

    truth = write("truth", lambda s: ToyScene(s, WORLD).frames(0, 5))
    same = write("same", lambda s: ToyScene(scenes[0], WORLD).frames(0, 5))
    t = erft_rollout.scene_spread(truth, scenes, [1, 2])
    c = erft_rollout.scene_spread(same, scenes, [1, 2])
    assert t["model"] == pytest.approx(t["truth"]) and t["truth"][2] > 0.05
    assert c["model"] == {1: 0.0, 2: 0.0} and c["truth"] == t["truth"]
    lines = erft_report.spread_section({"collapsed": c})
    assert lines[-1] == "| collapsed | 0 | 0 |"


def test_replicate_section_reads_each_seed(tmp_path: Path):
    """Two training seeds that disagree (ERFT 2 below plain with seed 0, 2 above with seed 1)
    are reported as such, each paired by scene against its own plain LoRA and the one base."""
    erft_report = pytest.importorskip("erft_report")
    offsets = [3.0 * i for i in range(16)]
    test = {"base": _arm(offsets, 10.0, 0.02), "plain": _arm(offsets, 9.0, 0.02),
            "erft": _arm(offsets, 7.0, 0.03)}  # fmt: skip
    other = {"erft": _arm(offsets, 11.0, 0.03), "plain": _arm(offsets, 9.0, 0.02)}
    lines = erft_report.replicate_section(test, {1: other}, 0, 2)
    rows = [r.rstrip(" |").split(" | ")[2:] for r in lines if "colour" in r and "[" in r]
    assert rows == [["-2.00 [-2.00, -2.00]", "-3.00 [-3.00, -3.00]"],
                    ["2.00 [2.00, 2.00]", "1.00 [1.00, 1.00]"]]  # fmt: skip
