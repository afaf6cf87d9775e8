"""The embedded demo end to end: shipped toy models -> SVI clip loop -> video + drift report."""

from __future__ import annotations

import json

import pytest

from svi_core.drift import read_video_frames
from svi_core.toy.demo import main, run_demo
from svi_core.toy.models import TOY_DIT

pytestmark = pytest.mark.skipif(not TOY_DIT.is_file(), reason="toy assets not built")


def test_short_demo_writes_video_and_report(tmp_path):
    f = 5  # short clips keep the test quick; the demo default is TOY_FRAMES
    res = run_demo(tmp_path / "demo", clips=2, scene=5, steps=2, plot=False, frames=f)
    frames = list(read_video_frames(str(res.video)))
    assert len(frames) == 2 * f - 1  # tom: the second clip regenerates 1 frame
    assert frames[0].shape == (48, 64, 3)
    data = json.loads(open(res.report_json).read())
    assert [c["start"] for c in data["clips"]] == [0, f - 1]
    assert data["anchor"] == "image"
    assert data["clips"][0]["motion"] > 0  # the model makes moving video, not a still
    assert res.summary["clips"] == 2


def test_demo_cli_rejects_bad_counts(tmp_path):
    assert main(["--out", str(tmp_path / "d"), "--clips", "0"]) == 2
    assert main(["--out", str(tmp_path / "d"), "--steps", "100000"]) == 2
    assert main(["--out", str(tmp_path / "d"), "--threads", "-1"]) == 2
    assert not (tmp_path / "d").exists()


def test_demo_cli_draws_the_plot_without_matplotlib(tmp_path, monkeypatch):
    """`python -m svi_core demo` without matplotlib: exit 0 and a PIL report.png, not a
    ModuleNotFoundError after every clip was generated (issue 10, 14); torch runs on the
    demo's default one thread (issue 10, 3)."""
    import torch

    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["--out", str(tmp_path / "d"), "--clips", "2", "--steps", "1"]) == 0
        assert torch.get_num_threads() == 1  # the demo's default --threads
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "d" / "report.png").stat().st_size > 1000


def test_demo_drift_guard_switch(tmp_path):
    res = run_demo(tmp_path / "g", clips=2, scene=5, steps=2, plot=False, frames=5,
                   drift_guard="carry")  # fmt: skip
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["settings"]["drift_guard"]["mode"] == "carry"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--drift-guard", "sometimes"])
