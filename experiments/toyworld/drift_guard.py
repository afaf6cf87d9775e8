"""Drift guard and extend on the toy world (CPU, shipped toy models, seeded).

    OMP_NUM_THREADS=1 nice python experiments/toyworld/drift_guard.py --work /tmp/svi_guard

1. Drift guard: ``--clips`` (50) clips from each of 8 held-out toy scenes with the shipped toy
   models through the real SVI loop (mode ``tom``, the toy demo's settings), drift guard
   ``off`` / ``output`` / ``carry``, same seeds; drift report of every rollout
   (``svi_core.report``); colour ΔE against clip 1 at clips 10 / 25 / 50 with the motion
   number beside them, mean over scenes.
2. Extend: a 10-clip run, extended by 10 clips from its mp4 (``LoopInputs.start``), against a
   20-clip run: lengths, and whether the first 10 clips' frames are untouched.

Writes ``--work/results.md`` (the table the README quotes) and ``results.json``; rollouts
already made are reused. Reports the CPU time (user + system) of this process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

SCENES = (3, 7, 11, 19, 23, 29, 31, 37)  # held out: the toy was trained on seeds >= 10000
GUARDS = ("off", "output", "carry")
CHECKPOINTS = (10, 25, 50)


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reference(scene: int) -> np.ndarray:
    from svi_core.toy.models import TOY_HEIGHT, TOY_WIDTH
    from svi_core.toy.world import WorldConfig, toy_first_frame

    return toy_first_frame(scene, WorldConfig(height=TOY_HEIGHT, width=TOY_WIDTH))


def settings(clips: int, guard: str, steps: int):
    from svi_core.drift_guard import DriftGuard
    from svi_core.loop import RunSettings
    from svi_core.toy.demo import toy_mode
    from svi_core.toy.models import TOY_HEIGHT, TOY_WIDTH

    return RunSettings(
        mode=toy_mode(steps),
        width=TOY_WIDTH,
        height=TOY_HEIGHT,
        num_clips=clips,
        drift_guard=DriftGuard(guard),
    )


def rollout(work: Path, backend, guard: str, scene: int, clips: int, steps: int) -> dict:
    from svi_core.loop import LoopInputs, run_clips
    from svi_core.report import build_report, layout_from_run

    d = work / "rollouts" / f"{guard}_scene{scene}"
    rep_path = d / "report.json"
    if rep_path.is_file():
        data = json.loads(rep_path.read_text())
        if len(data["clips"]) >= clips:
            return data
    ref = reference(scene)
    t0, c0 = time.time(), cpu_seconds()
    res = run_clips(
        backend,
        settings(clips, guard, steps),
        LoopInputs(reference=torch.from_numpy(ref.copy()), prompts=["toy world"]),
        d / "run",
        output=d / "video.mp4",
    )
    spans, f, m = layout_from_run(str(res.run_dir))
    build_report(str(res.video), str(d), f, m, anchor=ref, plot=False, spans=spans[:clips])
    data = json.loads(rep_path.read_text())
    data["cpu_seconds"] = cpu_seconds() - c0
    rep_path.write_text(json.dumps(data))
    log(
        f"{guard} scene {scene}: {clips} clips, {time.time() - t0:.0f} s wall, "
        f"{data['cpu_seconds']:.0f} s CPU, ΔE last {data['clips'][-1]['delta_e']:.2f}"
    )
    return data


def guard_table(results: dict[str, list[dict]], clips: int) -> tuple[str, dict]:
    ks = [k for k in CHECKPOINTS if k <= clips]
    summary: dict = {}
    lines = [
        f"| drift guard | {' | '.join(f'ΔE clip {k}' for k in ks)} | "
        f"{' | '.join(f'motion clip {k}' for k in ks)} | motion (all clips) |",
        "|---|" + "---|" * (2 * len(ks) + 1),
    ]
    for guard, reps in results.items():
        de = [float(np.mean([r["clips"][k - 1]["delta_e"] for r in reps])) for k in ks]
        mo = [float(np.mean([r["clips"][k - 1]["motion"] for r in reps])) for k in ks]
        mo_all = float(np.mean([np.mean([c["motion"] for c in r["clips"]]) for r in reps]))
        summary[guard] = {
            "delta_e": dict(zip(ks, de, strict=True)),
            "motion": dict(zip(ks, mo, strict=True)),
            "motion_all": mo_all,
        }
        lines.append(
            f"| {guard} | {' | '.join(f'{x:.2f}' for x in de)} | "
            f"{' | '.join(f'{x:.4f}' for x in mo)} | {mo_all:.4f} |"
        )
    return "\n".join(lines), summary


def extend_check(work: Path, backend, steps: int, n: int = 10) -> dict:
    """A ``n``-clip run, extended by ``n`` clips from its mp4, against a ``2n``-clip run."""
    from svi_core.extend import load_video_start
    from svi_core.loop import LoopInputs, run_clips
    from svi_core.video_io import mp4_video_track, read_video_frames

    scene = SCENES[0]
    ref = torch.from_numpy(reference(scene).copy())
    d = work / "extend"
    short = run_clips(
        backend, settings(n, "off", steps), LoopInputs(ref, ["toy world"]), d / "short",
        output=d / "short.mp4",
    )  # fmt: skip
    long = run_clips(
        backend, settings(2 * n, "off", steps), LoopInputs(ref, ["toy world"]), d / "long",
        output=d / "long.mp4",
    )  # fmt: skip
    s = settings(n, "off", steps)
    start = load_video_start(short.video, s.mode, (s.width, s.height))
    ext = run_clips(
        backend, s, LoopInputs(start.first, ["toy world"], start=start), d / "ext",
        output=d / "extended.mp4",
    )  # fmt: skip
    a = list(read_video_frames(short.video))
    b = list(read_video_frames(ext.video))
    untouched = all(np.array_equal(x, y) for x, y in zip(a, b[: len(a)], strict=False))
    manifest = json.loads((d / "ext" / "manifest.json").read_text())
    return {
        "short_frames": len(a),
        "long_frames": mp4_video_track(long.video).frames,
        "extended_frames": len(b),
        "extended_frames_in_tables": mp4_video_track(ext.video).frames,
        "first_clips_bit_identical": bool(untouched),
        "stream_copy": bool(manifest["prefix"]["stream_copy"]),
        "same_bytes_as_original": (d / "ext" / manifest["prefix"]["segment"]).read_bytes()
        == Path(short.video).read_bytes(),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/svi_guard"))
    p.add_argument("--clips", type=int, default=50)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--scenes", type=int, default=len(SCENES))
    p.add_argument("--skip-extend", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    from svi_core.toy.models import toy_backend

    a.work.mkdir(parents=True, exist_ok=True)
    backend = toy_backend()
    c0 = cpu_seconds()
    results: dict[str, list[dict]] = {g: [] for g in GUARDS}
    for scene in SCENES[: a.scenes]:  # scene by scene: a stopped run has whole comparisons
        for g in GUARDS:
            results[g].append(rollout(a.work, backend, g, scene, a.clips, a.steps))
    table, summary = guard_table(results, a.clips)
    off50, carry50 = (
        summary["off"]["delta_e"][max(summary["off"]["delta_e"])],
        summary["carry"]["delta_e"][max(summary["carry"]["delta_e"])],
    )
    mo_off, mo_carry = summary["off"]["motion_all"], summary["carry"]["motion_all"]
    target = (
        f"Target (carry ΔE <= half of off's at clip {a.clips}, motion within 10 %): "
        f"carry/off ΔE = {carry50 / off50:.3f}, motion carry/off = {mo_carry / mo_off:.3f} -> "
        f"{'met' if carry50 <= 0.5 * off50 and abs(mo_carry / mo_off - 1) <= 0.1 else 'NOT met'}"
    )
    rollout_cpu = sum(r.get("cpu_seconds", 0.0) for reps in results.values() for r in reps)
    out = {"guard": summary, "target": target, "rollout_cpu_seconds": rollout_cpu}
    if not a.skip_extend:
        out["extend"] = extend_check(a.work, backend, a.steps)
    out["cpu_seconds_this_call"] = cpu_seconds() - c0
    text = (
        f"Toy world, {a.scenes} held-out scenes x {a.clips} clips, mode tom (13 frames, 10 steps, "
        "CFG 1), shipped toy models, same seeds; ΔE = CIE76 of the clip's mean Lab colour against "
        "clip 1, motion = mean |frame difference| per pixel in [0, 1]; means over scenes.\n\n"
        f"{table}\n\n{target}\n\nCPU time of the rollouts: {rollout_cpu / 60:.1f} min "
        "(1 thread).\n"
    )
    if "extend" in out:
        text += f"\nExtend: {json.dumps(out['extend'])}\n"
    (a.work / "results.md").write_text(text)
    (a.work / "results.json").write_text(json.dumps(out, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
