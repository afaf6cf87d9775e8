"""``generate --schedule``: a TOML schedule through the command line on tiny models (LoRA
strength per clip applied unmerged, a keyframe of another size, refusals before loading)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli import PROMPTS, base_args, inputs, tiny_models, write_image  # noqa: F401

from svi_core.cli import LoraSpec, main


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def film_args(m, img, prompts, out, *extra):
    return [
        "generate", "--mode", "film", "--model", str(m["wan21_i2v_dit"]),
        "--vae", str(m["wan21_vae"]), "--clip-vision", str(m["clip"]),
        "--text-embeddings", str(m["emb"]), "--image", str(img), "--prompts", str(prompts),
        "--frames", "9", "--steps", "2", "--width", "32", "--height", "32", "--clips", "2",
        "--output", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def clip_latents(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    return [load_file(str(run_dir / c["state"]))["latent"] for c in m["clips"]], m


def test_lora_spec_names():
    assert LoraSpec.parse("svi=a/b.safetensors:0.5").name == "svi"
    assert LoraSpec.parse("svi=a/b.safetensors:0.5").path.name == "b.safetensors"
    assert LoraSpec.parse("a/SVI-Film.safetensors").schedule_name == "svi-film"
    assert LoraSpec.parse("/x/a=b.safetensors").name is None  # a path holding '=' stays a path


def test_schedule_sets_lora_strength_and_keyframe(tmp_path, inputs, caplog, tiny_models):  # noqa: F811
    m = tiny_models
    img, prompts = inputs
    write_image(tmp_path / "key.png", w=50, h=20)
    sched = tmp_path / "story.toml"
    sched.write_text(
        f'[clips.1]\nlora.svi = 0\n\n[clips.2]\nkeyframe = "key.png"\nprompt = "{PROMPTS[2]}"\n',
        encoding="utf-8",
    )
    lora = ["--lora", f"svi={m['lora']}:1.0"]
    out = tmp_path / "story.mp4"
    assert main(film_args(m, img, prompts, out, *lora, "--schedule", str(sched))) == 0, caplog.text
    assert "applied unmerged" in caplog.text
    assert "schedule image 1 is 50x20; stretched to the video size 32x32" in caplog.text
    lats, manifest = clip_latents(tmp_path / "story.run")
    plans = [c["plan"] for c in manifest["clips"]]
    assert plans[0]["lora_strengths"] == {"svi": 0.0} and plans[1]["lora_strengths"] == {}
    assert plans[0]["keyframe"] is None and plans[1]["keyframe_slot"] == "latent"
    # clip 1 with the SVI LoRA at 0 is exactly clip 1 of a run without the LoRA
    plain = tmp_path / "plain.mp4"
    assert main(film_args(m, img, prompts, plain)) == 0, caplog.text
    plain_lats, _ = clip_latents(tmp_path / "plain.run")
    assert torch.equal(lats[0], plain_lats[0])
    # and a run with the LoRA at 1 everywhere differs on clip 1
    merged = tmp_path / "merged.mp4"
    assert main(film_args(m, img, prompts, merged, *lora)) == 0, caplog.text
    merged_lats, _ = clip_latents(tmp_path / "merged.run")
    assert (merged_lats[0] - lats[0]).abs().max() > 1e-4
    # extend by one clip with a line for it: finished clips are kept
    sched.write_text(sched.read_text() + "\n[clips.3]\nseed = 5\n", encoding="utf-8")
    args = film_args(m, img, prompts, out, *lora, "--schedule", str(sched))
    args[args.index("--clips") + 1] = "3"
    assert main(args) == 0, caplog.text
    lats3, manifest = clip_latents(tmp_path / "story.run")
    assert torch.equal(lats3[0], lats[0]) and manifest["clips"][2]["seed"] == 5


@pytest.mark.parametrize(
    "toml,message",
    [
        ("[clips.1]\nlora.sv = 0\n", r"no LoRA named 'sv' is loaded; did you mean 'svi'"),
        ("[clips.4]\nseed = 1\n", r"clip 4 is beyond the run \(2 clips\)"),
        ('[clips.1]\nkeyframe = "missing.png"\n', "schedule image 1 .*does not exist"),
        ("[clips.1-2]\nseed = 1\n[clips.2]\ncfg = 2\n", "overlap"),
        ("[clip.1]\nseed = 1\n", "unknown top-level key 'clip'; did you mean 'clips'"),
    ],
)
def test_bad_schedules_refused_before_any_model_loads(tmp_path, inputs, caplog, toml, message):  # noqa: F811
    img, prompts = inputs
    sched = tmp_path / "s.toml"
    sched.write_text(toml, encoding="utf-8")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "l.safetensors"))  # a valid header
    args = base_args(tmp_path, img, prompts) + [
        "--lora", f"svi={tmp_path / 'l.safetensors'}", "--clips", "2", "--schedule", str(sched),
    ]  # fmt: skip
    assert main(args) == 2
    assert __import__("re").search(message, caplog.text), caplog.text
    assert not (tmp_path / "out.run").exists()
