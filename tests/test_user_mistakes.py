"""Every documented user mistake of every command ends in ONE clear line and exit status 2,
never a traceback (issue 10, 1): ``python -m svi_core generate | report | demo`` and
``python -m train``.

Each case runs the command's ``main`` in-process (a traceback would be an exception escaping
``main``) and checks: exit status 2, exactly one ERROR record, one line, naming the problem,
and no "Traceback" on stdout / stderr. Two cases also run as real processes.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from svi_core.cli import main as svi_main
from svi_core.video_io import write_segment
from train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs: a short video, a text file, an audio-only mp4, a truncated mp4, a
    pickle, a truncated safetensors file, an image and a prompt file."""
    import imageio_ffmpeg
    from PIL import Image

    d = tmp_path_factory.mktemp("mistakes")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 32, 48, 3), dtype=np.uint8)
    f = {"video": write_segment(d / "v.mp4", frames, fps=16)}
    f["notes"] = d / "notes.txt"
    f["notes"].write_text("just some notes\n", encoding="utf-8")
    f["truncated_mp4"] = d / "cut.mp4"
    f["truncated_mp4"].write_bytes(f["video"].read_bytes()[: f["video"].stat().st_size // 2])
    f["audio_mp4"] = d / "audio.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
         str(f["audio_mp4"])], check=True,
    )  # fmt: skip
    f["no_frames_mp4"] = d / "empty.mp4"
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=48x32:rate=16",
         "-frames:v", "0", "-pix_fmt", "yuv420p", str(f["no_frames_mp4"])], check=True,
    )  # fmt: skip
    f["pickle"] = d / "emb.safetensors"  # a pickle under a safetensors name
    f["pickle"].write_bytes(pickle.dumps({"context": [1.0, 2.0]}))
    good = d / "good.safetensors"
    save_file({"context": torch.zeros(16, 8)}, str(good))
    f["truncated_st"] = d / "cut.safetensors"
    f["truncated_st"].write_bytes(good.read_bytes()[:-100])
    f["good_st"] = good
    f["image"] = d / "frame.png"
    Image.fromarray(frames[0]).save(f["image"])
    f["prompts"] = d / "prompts.txt"
    f["prompts"].write_text("a moving pattern\n", encoding="utf-8")
    return f


def refused(caplog, capsys, run, expect: str) -> str:
    """Run ``run()``: exit 2, one ERROR record of one line containing ``expect``, no
    traceback printed. Returns the message."""
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        rc = run()
    out, err = capsys.readouterr()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 2, (rc, errors)
    assert len(errors) == 1, errors
    assert "\n" not in errors[0], errors[0]
    assert expect in errors[0], errors[0]
    assert "Traceback" not in out + err
    return errors[0]


def generate_args(f, tmp_path, **replace) -> list[str]:
    for name in ("dit.safetensors", "vae.safetensors", "clip.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / name))
    args = {
        "--model": tmp_path / "dit.safetensors", "--vae": tmp_path / "vae.safetensors",
        "--clip-vision": tmp_path / "clip.safetensors", "--text-embeddings": f["good_st"],
        "--image": f["image"], "--prompts": f["prompts"], "--output": tmp_path / "out.mp4",
    }  # fmt: skip
    args.update(replace)
    return ["generate", *[str(x) for kv in args.items() for x in kv], "--no-progress"]


GENERATE_MISTAKES = [
    ({"--text-embeddings": "pickle"}, "looks like a Python pickle"),
    ({"--text-embeddings": "truncated_st"}, "is truncated"),
    ({"--model": "notes"}, "unknown model file type '.txt'"),  # a text file as the DiT
    ({"--vae": "pickle"}, "looks like a Python pickle"),
    ({"--image": "notes"}, "cannot be read as an image"),
    ({"--prompts": "video"}, "prompt file"),  # binary, not UTF-8 text
    ({"--output": "notes"}, "must end in .mp4"),
]


@pytest.mark.parametrize(("replace", "expect"), GENERATE_MISTAKES)
def test_generate_mistakes(files, tmp_path, caplog, capsys, replace, expect):
    replace = {k: files[v] for k, v in replace.items()}
    refused(caplog, capsys, lambda: svi_main(generate_args(files, tmp_path, **replace)), expect)
    assert not (tmp_path / "out.run").exists()  # refused before any model or run folder


@pytest.mark.parametrize(
    ("extra", "expect"),
    [(["--cfg", "nan"], "cfg=nan"), (["--frames", "80"], "frames=80"),
     (["--clips", "99999999999999999999"], "num_clips="),
     (["--width", "160000", "--height", "160000"], "largest valid: 4096")],
)  # fmt: skip
def test_generate_number_mistakes(files, tmp_path, caplog, capsys, extra, expect):
    refused(caplog, capsys, lambda: svi_main(generate_args(files, tmp_path) + extra), expect)


REPORT_MISTAKES = [
    ("notes", [], "not a video file"),
    ("audio_mp4", [], "no video stream"),
    ("no_frames_mp4", [], "no video stream"),
    ("truncated_mp4", [], "cannot be read as a video"),
    ("missing", [], "video file not found"),
    ("video", ["--anchor", "notes"], "cannot be read as an image"),
    ("video", ["--out-is-a-file"], "is a file"),
    ("video", ["--clip-frames", "0", "--overlap", "0"], "clip_frames=0"),
]


@pytest.mark.parametrize(("video", "extra", "expect"), REPORT_MISTAKES)
def test_report_mistakes(files, tmp_path, caplog, capsys, video, extra, expect):
    out = tmp_path / "rep"
    if "--out-is-a-file" in extra:
        out.write_text("x")
        extra = []
    extra = [str(files[x]) if x in files else x for x in extra]
    path = files.get(video, tmp_path / "missing.mp4")
    args = ["report", str(path), "--out", str(out), "--clip-frames", "9", "--overlap", "1"]
    refused(caplog, capsys, lambda: svi_main(args + extra), expect)


def test_report_damaged_run_manifest(files, tmp_path, caplog, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{ not json")
    args = ["report", str(files["video"]), "--out", str(tmp_path / "r"), "--run", str(run)]
    refused(caplog, capsys, lambda: svi_main(args), "is damaged")


def test_demo_mistakes(tmp_path, caplog, capsys):
    out = tmp_path / "demo"
    assert svi_main(["demo", "--out", str(out), "--clips", "1", "--steps", "1", "--no-plot"]) == 0
    # a rerun into the same --out with other settings: the run store refuses, one line
    rerun = ["demo", "--out", str(out), "--clips", "1", "--steps", "2", "--no-plot"]
    msg = refused(caplog, capsys, lambda: svi_main(rerun), "steps=1")
    assert "another --out" in msg
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(caplog, capsys, lambda: svi_main(["demo", "--out", str(a_file)]), "is a file")
    refused(
        caplog, capsys, lambda: svi_main(["demo", "--out", str(out), "--clips", "0"]), "clips=0"
    )


TRAIN_MISTAKES = [
    (["--context_file", "pickle"], "looks like a Python pickle"),
    (["--context_file", "truncated_st"], "is truncated"),
    (["--text_embeddings", "notes"], "is not a safetensors file"),
    (["--dit_path", "missing"], "does not exist"),
    (["--learning_rate", "nan"], "learning_rate=nan"),
    (["--export_name", "x" * 300], "export_name is 300 characters"),
    (["--learnin_rate", "1e-4"], None),  # argparse: unknown flag (its own usage + one line)
    (["--config", "notes"], "not valid TOML"),
]


@pytest.mark.parametrize(("extra", "expect"), TRAIN_MISTAKES)
def test_train_mistakes(files, tmp_path, caplog, capsys, extra, expect):
    extra = [str(files[x]) if x in files else x for x in extra]
    extra = [str(tmp_path / "missing.safetensors") if x == "missing" else x for x in extra]
    args = ["--output_dir", str(tmp_path / "out"), *extra]
    if expect is None:  # argparse refuses an unknown flag with exit status 2 and its usage
        with pytest.raises(SystemExit) as info:
            train_main(args)
        assert info.value.code == 2
        return
    refused(caplog, capsys, lambda: train_main(args), expect)


def one_process(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def test_as_real_processes(files, tmp_path):
    """The same through ``python -m``: exit 2, one stderr line, no traceback, no ffmpeg log."""
    for args in (
        ["-m", "svi_core", "report", str(files["notes"]), "--out", str(tmp_path / "r")],
        ["-m", "train", "--context_file", str(files["pickle"]), "--output_dir", str(tmp_path)],
    ):  # fmt: skip
        proc = one_process(args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
