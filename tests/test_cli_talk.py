"""``python -m svi_core generate --mode talk``: every Talk input refused before any model loads, and
a talking video end to end on tiny models (with the shared tiny DiT / VAE fixtures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_support import fixtures_dir
from safetensors.torch import save_file
from test_cli import PROMPTS, base_args, inputs, write_image  # noqa: F401

from svi_core.cli import main
from svi_core.talk import MultiTalkConfig, write_wav

transformers = pytest.importorskip("transformers")
pytest.importorskip("imageio_ffmpeg")

from test_talk_wav2vec import _config, _save  # noqa: E402

FIXTURES = fixtures_dir()
RATE = 16000


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 1.7 * t) > 0)
    return x.astype(np.float32)


def multitalk_file(path: Path, dim: int, blocks: int, feature_width: int = 32) -> Path:
    from svi_core.standalone.multitalk import MultiTalkAudioModules

    torch.manual_seed(2)
    cfg = MultiTalkConfig(
        dim=dim, num_layers=blocks, intermediate_dim=8, token_dim=8, context_tokens=4,
        feature_width=feature_width,
    )  # fmt: skip
    sd = MultiTalkAudioModules(cfg, num_heads=4).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def dit_header_file(path: Path, dim: int, blocks: int = 2) -> Path:
    sd = {"patch_embedding.weight": torch.zeros(dim, 36, 1, 2, 2)}
    for i in range(blocks):
        sd[f"blocks.{i}.self_attn.q.weight"] = torch.zeros(dim, dim)
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def talk_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("talk_files")
    torch.manual_seed(0)
    w2v = _save(root / "chinese-wav2vec2-base", transformers.Wav2Vec2Model(_config()).train(False))
    return {
        "w2v": w2v,
        "mt64": multitalk_file(root / "multitalk.safetensors", dim=64, blocks=2),
        "speech": write_wav(root / "speech.wav", speech(1.2), RATE),
    }


def talk_args(tmp_path, inputs, files, dit_dim=64, mode="talk"):  # noqa: F811
    args = base_args(tmp_path, *inputs)
    dit_header_file(tmp_path / "dit.safetensors", dit_dim)
    return args + [
        "--mode", mode, "--audio", str(files["speech"]), "--multitalk", str(files["mt64"]),
        "--wav2vec", str(files["w2v"]),
    ]  # fmt: skip


def drop(args, flag):
    i = args.index(flag)
    return args[:i] + args[i + 2 :]


def swap(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = str(value)
    return args


def refused(args, caplog, *needles):
    assert main(args) == 2
    for n in needles:
        assert n in caplog.text, caplog.text[-2000:]
    caplog.clear()


def test_talk_inputs_are_checked_before_any_model(tmp_path, inputs, talk_files, caplog):  # noqa: F811
    args = talk_args(tmp_path, inputs, talk_files)
    refused(drop(args, "--audio"), caplog, "needs --audio", "multitalk.safetensors")
    refused(drop(args, "--multitalk"), caplog, "needs --multitalk", "lips would not follow")
    refused(swap(args, "--mode", "shot"), caplog, "--audio, --multitalk, --wav2vec are for")
    refused(base_args(tmp_path, *inputs) + ["--cfg-audio", "4"], caplog, "--cfg-audio is the audio")
    args = talk_args(tmp_path, inputs, files=talk_files)
    # not audio, silence, too short for one clip of 81 frames
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio\n" * 50)
    refused(swap(args, "--audio", bad), caplog, "notes.wav cannot be decoded as audio")
    silent = write_wav(tmp_path / "silent.wav", np.zeros(RATE * 5, np.float32), RATE)
    refused(swap(args, "--audio", silent), caplog, "silent.wav is silent")
    refused(args, caplog, "speech.wav is 1.20 s", "one clip needs 3.24 s")
    # a MultiTalk patch for another DiT width, a wav2vec2 of another kind or size
    refused(
        talk_args(tmp_path, inputs, talk_files, dit_dim=32) + ["--frames", "9"],
        caplog, "multitalk.safetensors' is a MultiTalk patch for a DiT of width 64",
    )  # fmt: skip
    args = talk_args(tmp_path, inputs, talk_files)  # the DiT of width 64 again
    hubert = tmp_path / "hubert"
    shutil.copytree(talk_files["w2v"], hubert)
    cfg = json.loads((hubert / "config.json").read_text())
    (hubert / "config.json").write_text(json.dumps({**cfg, "model_type": "hubert"}))
    refused(swap(args, "--wav2vec", hubert), caplog, "type 'hubert', not wav2vec2")
    big = tmp_path / "big"
    shutil.copytree(talk_files["w2v"], big)
    (big / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    refused(swap(args, "--wav2vec", big), caplog, "4 layers x 16 channels = 64", "reads 32")
    not_mt = tmp_path / "lora.safetensors"
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 64)}, str(not_mt))
    refused(swap(args, "--multitalk", not_mt), caplog, "is not a MultiTalk audio-module file")
    assert not (tmp_path / "out.run").exists()


def test_the_talk_lora_is_refused_without_the_speech(tmp_path, inputs, caplog):  # noqa: F811
    lora = tmp_path / "svi-talk.safetensors"
    lora.write_bytes(b"x")
    args = base_args(tmp_path, *inputs) + ["--mode", "shot", "--lora", str(lora)]
    refused(args, caplog, "looks like the SVI-Talk LoRA", "--mode talk --audio")


def test_talk_clip_count_and_prompt_defaults(tmp_path, inputs, talk_files):  # noqa: F811
    from svi_core.cli import build_parser, options_from_args

    args = talk_args(tmp_path, inputs, talk_files) + ["--frames", "9"]
    args = drop(args, "--prompts")
    opts = options_from_args(build_parser().parse_args(args))
    assert opts.prompts == ("a person is talking",)  # official test_svi_talk.py:138
    assert opts.settings.num_clips == 4  # 1.2 s = 30 feature frames: ceil(31 / 9)
    m = opts.settings.mode
    assert (m.cfg, m.cfg_audio, m.fps, m.steps, m.motion_frames) == (2.0, 5.0, 25.0, 50, 1)
    assert opts.settings.width <= 640
    opts = options_from_args(build_parser().parse_args(args + ["--clips", "2"]))
    assert opts.settings.num_clips == 2


# ----- end to end on tiny models -------------------------------------------------------------


def test_generate_talk_end_to_end(tmp_path, talk_files, caplog):
    if not (FIXTURES / "wan21_i2v_dit" / "model.safetensors").is_file():
        pytest.skip(f"tiny official-layout models not found under {FIXTURES} (SVI_FIXTURES_DIR)")
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from svi_core.modes import NEGATIVE_PROMPT_EN
    from svi_core.standalone.backend import save_text_embeddings
    from svi_core.video_io import mp4_frame_count, mp4_track_seconds

    for name in ("wan21_i2v_dit", "wan21_vae"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    dit = json.loads((FIXTURES / "wan21_i2v_dit" / "config.json").read_text())
    mt = multitalk_file(tmp_path / "multitalk.safetensors", dit["dim"], dit["num_layers"])
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=dit["clip_dim"], intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=14))  # fmt: skip
    (tmp_path / "clip").mkdir()
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()
          for k, v in clip.state_dict().items() if not k.endswith("position_ids")}  # fmt: skip
    save_file(sd, str(tmp_path / "clip" / "clip.safetensors"))
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    g = torch.Generator().manual_seed(1)
    emb = save_text_embeddings(
        tmp_path / "emb.safetensors",
        {
            p: torch.randn(1, 512, dit["text_dim"], generator=g)
            for p in ("a person is talking", NEGATIVE_PROMPT_EN)
        },
    )
    img = write_image(tmp_path / "face.png")
    out = tmp_path / "talk.mp4"
    args = [
        "generate", "--mode", "talk", "--model", str(tmp_path / "wan21_i2v_dit" / "model.safetensors"),
        "--vae", str(tmp_path / "wan21_vae" / "model.safetensors"),
        "--clip-vision", str(tmp_path / "clip" / "clip.safetensors"), "--text-embeddings", str(emb),
        "--audio", str(talk_files["speech"]), "--multitalk", str(mt),
        "--wav2vec", str(talk_files["w2v"]), "--image", str(img), "--frames", "9",
        "--steps", "2", "--width", "32", "--height", "32", "--output", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0, caplog.text
    assert mp4_frame_count(out) == 4 * 9  # every frame of the 4 clips covering 1.2 s
    tracks = mp4_track_seconds(out)
    assert abs(tracks["soun"] - 36 / 25) < 0.1
    manifest = json.loads((tmp_path / "talk.run" / "manifest.json").read_text())
    assert manifest["inputs"]["multitalk"].startswith("multitalk.safetensors:")
    assert manifest["settings"]["clip_conditions"]["audio"]["encoder"].startswith("wav2vec2 2x16")
    assert main(args) == 0 and "0 generated now" in caplog.text  # resume: nothing left to do
