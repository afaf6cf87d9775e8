"""One rollout of the ERFT study: a long toy video from a held-out scene through the real clip
loop, measured against clip 1 (``svi_core.drift``) and against the world's true continuation
(``svi_core.ground_truth``), optionally with a probe of every DiT call for the error analysis.

Metrics are computed from the exact uint8 frames the loop produced (kept per clip as ``.npy``
in the rollout folder by the loop's ``on_clip`` callback), not from the lossy joined mp4, so a
resumed rollout measures the same numbers. Frame i of the stitched video is compared with true
frame i of the scene (mode ``tom``: each clip's frame 0 is the previous clip's last frame, so
the stitched video advances one world frame per frame).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from erft_data import WORLD, dedupe_constant_rows

from svi_core.drift import DriftAccumulator
from svi_core.ground_truth import truth_errors
from svi_core.toy.models import TOY_HEIGHT, TOY_WIDTH, toy_backend
from svi_core.toy.world import ToyScene, toy_first_frame

DRIFT_METRICS = ("delta_e", "brightness", "contrast", "sharpness", "ssim_anchor", "flicker",
                 "motion")  # fmt: skip


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (ffmpeg), user + system."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


class Probe:
    """Forward hook on the DiT: per call, the timestep, the one-step clean estimate
    ``x0_hat = x_t - s * v_hat`` (NORMALISED ``[16, T, h, w]``) and the condition latent's
    first frame ``y[4:, 0]`` (``[16, h, w]``); grouped per clip by :meth:`end_clip`."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def __call__(self, module, args, kwargs, output) -> None:
        hidden = kwargs["hidden_states"]
        t = float(kwargs["timestep"].reshape(-1)[0])
        v = output[0] if isinstance(output, tuple) else output.sample
        s = t / 1000.0
        x0_hat = hidden[0, :16].float() - s * v[0].float()
        self.calls.append((t, x0_hat.clone(), hidden[0, 20:36, 0].float().clone()))

    def end_clip(self, path: Path, final: torch.Tensor) -> None:
        np.savez_compressed(
            path,
            t=np.array([c[0] for c in self.calls], np.float32),
            x0_hat=np.stack([c[1].numpy() for c in self.calls]).astype(np.float32),
            cond0=self.calls[0][2].numpy().astype(np.float32),
            final=final[0].float().numpy(),
        )
        self.calls = []


def rollout(
    folder: Path,
    scene: int,
    clips: int,
    dit_path: Path,
    lora: Path | None,
    steps: int = 10,
    probe: bool = False,
) -> dict:
    """Generate ``clips`` clips from frame 0 of ``scene`` (resumable) and measure them; the
    result (also ``folder/result.json``) holds per-clip drift and truth metrics and the CPU
    seconds spent."""
    from svi_core.loop import LoopInputs, RunSettings, run_clips
    from svi_core.toy.demo import toy_mode

    result_path = folder / "result.json"
    if result_path.is_file():
        data = json.loads(result_path.read_text())
        if data["clips"] == clips:
            return data
    folder.mkdir(parents=True, exist_ok=True)
    c0, w0 = cpu_seconds(), time.time()
    spent = (
        json.loads((folder / "cpu.json").read_text())["cpu_s"]
        if (folder / "cpu.json").is_file()
        else 0.0
    )  # noqa: E501
    ref = toy_first_frame(scene, WORLD)
    backend = toy_backend(lora=lora, dit_path=dit_path)
    dedupe_constant_rows(backend.experts[0])  # exact speed-up (constant toy context)
    hook = None
    pr = Probe() if probe else None
    if pr is not None:
        hook = backend.experts[0].register_forward_hook(pr, with_kwargs=True)

    def on_clip(res) -> None:
        k = res.record.index
        np.save(folder / f"clip_{k:03d}.npy", res.kept.numpy())
        if pr is not None:
            pr.end_clip(folder / f"probe_{k:03d}.npz", res.latent)
        cpu = spent + cpu_seconds() - c0
        (folder / "cpu.json").write_text(json.dumps({"cpu_s": cpu}))

    settings = RunSettings(mode=toy_mode(steps), width=TOY_WIDTH, height=TOY_HEIGHT,
                           num_clips=clips)  # fmt: skip
    run_clips(backend, settings, LoopInputs(reference=torch.from_numpy(ref.copy()),
              prompts=["toy world"]), folder / "run", on_clip=on_clip)  # fmt: skip
    if hook is not None:
        hook.remove()
    data = measure(folder, scene, clips)
    data["cpu_s"] = spent + cpu_seconds() - c0
    data["wall_s"] = time.time() - w0
    data["lora"] = None if lora is None else str(lora)
    data["dit"] = str(dit_path)
    result_path.write_text(json.dumps(data))
    return data


def load_frames(folder: Path, clips: int) -> list[np.ndarray]:
    """Kept uint8 frames ``[n, H, W, 3]`` of clips 0 .. clips-1."""
    out = []
    for k in range(clips):
        p = folder / f"clip_{k:03d}.npy"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: rollout incomplete (delete {folder}/run to redo it)")
        out.append(np.load(p))
    return out


def measure(folder: Path, scene: int, clips: int) -> dict:
    """Per-clip drift (vs clip 1 and the reference image) and truth metrics of a rollout."""
    from svi_core.drift import ClipSpan

    kept = load_frames(folder, clips)
    spans, pos = [], 0
    for k, c in enumerate(kept):
        spans.append(ClipSpan(k, pos, pos + c.shape[0]))
        pos += c.shape[0]
    frames = [f for c in kept for f in c]
    ref = toy_first_frame(scene, WORLD)
    acc = DriftAccumulator(anchor=ref)
    for f in frames:
        acc.push(f)
    drift = acc.finish(spans)
    truth = ToyScene(scene, WORLD).frames(0, pos)
    terr = truth_errors(iter(frames), iter(truth), spans)
    per_clip = []
    for c, e in zip(drift.clips, terr, strict=True):
        row = {m: float(getattr(c, m)) for m in DRIFT_METRICS}
        row.update({f"truth_{k}": v for k, v in e.to_dict().items()
                    if k not in ("index", "start", "end")})  # fmt: skip
        per_clip.append(row)
    return {"scene": scene, "clips": clips, "frames": pos, "per_clip": per_clip}


def scene_spread(folders: list[Path], scenes: list[int], clip_numbers: list[int]) -> dict:
    """How much a model still tells its scenes apart: at the last kept frame of each clip in
    ``clip_numbers`` (1-based), the mean pixel RMSE (pixels in [0, 1]) between every pair of
    scenes' frames, for the rollouts in ``folders`` (one per scene, same order as ``scenes``)
    and for the world's true frames at the same times. Near 0 for the model while the truth
    stays apart: the rollouts have forgotten their scenes and converge to one image."""
    counts = [np.load(p, mmap_mode="r").shape[0] for p in sorted(folders[0].glob("clip_*.npy"))]
    ends = np.cumsum(counts) - 1  # frame index of each clip's last kept frame

    def spread(frames: list[np.ndarray]) -> float:
        f = [x.astype(np.float32) / 255.0 for x in frames]
        d = [np.sqrt(np.mean((f[i] - f[j]) ** 2)) for i in range(len(f)) for j in range(i)]
        return float(np.mean(d))

    out: dict = {"model": {}, "truth": {}}
    for n in clip_numbers:
        out["model"][n] = spread([np.load(d / f"clip_{n - 1:03d}.npy")[-1] for d in folders])
        out["truth"][n] = spread([ToyScene(s, WORLD).frame(int(ends[n - 1])) for s in scenes])
    return out
