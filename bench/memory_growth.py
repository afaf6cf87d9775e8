"""Peak memory of the SVI loop: peak RSS for 40 clips / peak RSS for 4 clips, same size.

Each count runs in a fresh Python process (this script re-invoked with --child) so the peaks
are independent. Model: the tiny random diffusers DiT on CPU; the VAE is a cheap stand-in codec
(see bench/_tiny.py) so 40 clips of 33 frames at 416x240 finish in about a minute. If the loop
kept every clip's frames, 40 clips would hold ~0.4 GB of uint8 frames (1.5 GB as float32) more
than 4 clips. Target: ratio <= 1.10. The LAST line printed is the ratio.

    python bench/memory_growth.py [--few 4] [--many 40] [--width 416] [--height 240] [--frames 33]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    import torch
    from _tiny import CheapCodecBackend, reference, text_context, tiny_backend

    from svi_core.loop import LoopInputs, RunSettings, run_clips
    from svi_core.modes import get_mode

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # far less noise on a shared CPU
    backend = CheapCodecBackend(tiny_backend(head_dim=8, layers=1))
    mode = get_mode("film", frames=a.frames, steps=a.steps)
    settings = RunSettings(mode=mode, width=a.width, height=a.height, num_clips=a.child)
    prompts = [text_context(i) for i in range(3)]
    inputs = LoopInputs(reference(a.height, a.width), prompts, negative=text_context(99))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_clips(backend, settings, inputs, Path(tmp) / "run", output=Path(tmp) / "o.mp4")
        dt = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"clips {a.child} frames {res.frames} seconds {dt:.1f} peak_rss_kb {peak_kb}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--few", type=int, default=4)
    ap.add_argument("--many", type=int, default=40)
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    peaks = {}
    for n in (a.few, a.many):
        cmd = [sys.executable, __file__, "--child", str(n), "--width", str(a.width),
               "--height", str(a.height), "--frames", str(a.frames), "--steps", str(a.steps)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        line = out.splitlines()[-1]
        print(line)
        peaks[n] = int(line.split()[-1])
    print(
        f"peak RSS: {a.few} clips {peaks[a.few] / 1024:.0f} MiB, "
        f"{a.many} clips {peaks[a.many] / 1024:.0f} MiB"
    )
    print(f"{peaks[a.many] / peaks[a.few]:.4f}")


if __name__ == "__main__":
    main()
