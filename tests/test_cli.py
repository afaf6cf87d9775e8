"""``python -m svi_core generate`` end to end on tiny models, and its refusals of bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_support import fixtures_dir
from safetensors.torch import save_file

from svi_core.cli import LoraSpec, main

FIXTURES = fixtures_dir()
PROMPTS = ["a lighthouse in a storm", "waves crash on the rocks", "the storm clears"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run 10-50x faster on one thread than on an oversubscribed CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_image(path, w=40, h=36):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def inputs(tmp_path):
    img = write_image(tmp_path / "frame.png")
    prompts = tmp_path / "prompt.txt"
    prompts.write_text(
        "prompts = [\n" + "".join(f"  {p!r},\n" for p in PROMPTS) + "]\n", encoding="utf-8"
    )
    return img, prompts


def base_args(tmp_path, img, prompts, model="dit.safetensors"):
    for name in (model, "vae.safetensors", "clip.safetensors", "emb.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / name))  # valid headers, no model
    return [
        "generate", "--model", str(tmp_path / model), "--vae", str(tmp_path / "vae.safetensors"),
        "--clip-vision", str(tmp_path / "clip.safetensors"),
        "--text-embeddings", str(tmp_path / "emb.safetensors"),
        "--image", str(img), "--prompts", str(prompts), "--output", str(tmp_path / "out.mp4"),
        "--no-progress",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--frames", "80"], "frames=80 per clip must be 4k \\+ 1.*try 77 or 81"),
        (["--width", "500", "--height", "480"], "width=500 \\(nearest valid: 496 or 512\\)"),
        (["--mode", "v2_pro", "--frames", "9", "--clips", "0"], "num_clips=0"),
        # non-finite and absurd numbers: refused up front, naming the bound (issue 10 H)
        (["--cfg", "nan"], "cfg=nan must be a finite number"),
        (["--shift", "inf"], "shift=inf must be a finite number in \\[0.1, 100\\]"),
        (["--fps", "nan"], "fps=nan must be a finite number in \\[1, 120\\]"),
        (["--clips", "99999999999999999999"], "num_clips=99999999999999999999 must be an integer"),
        (["--width", "160000", "--height", "160000"], "width=160000 \\(largest valid: 4096\\)"),
    ],
)
def test_bad_settings_refused(tmp_path, inputs, caplog, extra, message):
    assert main(base_args(tmp_path, *inputs) + extra) == 2
    assert caplog.text and __import__("re").search(message, caplog.text)
    assert not (tmp_path / "out.run").exists()


def test_bad_inputs_refused(tmp_path, inputs, caplog):
    img, prompts = inputs
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n", encoding="utf-8")
    assert main(base_args(tmp_path, img, empty)) == 2
    assert "no prompt found" in caplog.text
    broken = tmp_path / "broken.png"
    broken.write_text("not an image", encoding="utf-8")
    assert main(base_args(tmp_path, broken, prompts)) == 2
    assert "cannot be read as an image" in caplog.text
    args = base_args(tmp_path, img, prompts)
    args[args.index("--vae") + 1] = str(tmp_path / "missing_vae.safetensors")
    assert main(args) == 2
    assert "VAE file" in caplog.text and "missing_vae" in caplog.text
    args = base_args(tmp_path, img, prompts)
    i = args.index("--clip-vision")
    del args[i : i + 2]
    assert main(args) == 2 and "needs CLIP vision" in caplog.text


def test_all_problems_of_a_run_are_reported_together(tmp_path, inputs, caplog):
    """One run names every cheap problem at once (issue 10, 2): here the text encoder, the
    width, the prompt file, the image and the cfg, in one error line."""
    img, prompts = inputs
    broken = tmp_path / "broken.png"
    broken.write_text("not an image", encoding="utf-8")
    args = base_args(tmp_path, broken, tmp_path / "missing_prompts.txt")
    i = args.index("--text-embeddings")
    del args[i : i + 2]
    args += ["--width", "500", "--height", "480", "--cfg", "nan"]
    caplog.clear()
    assert main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    text = errors[0]
    assert text.startswith("error: 5 problems: (1) ")
    for part in (
        "cfg=nan",
        "no text encoder",
        "prompt file",
        "width=500",
        "cannot be read as an image",
    ):
        assert part in text, part
    assert not (tmp_path / "out.run").exists()


def test_lora_spec_parsing():
    assert LoraSpec.parse("a/b.safetensors:0.5") == LoraSpec(Path("a/b.safetensors"), 0.5)
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec(Path("a/b.safetensors"), 1.0)
    assert LoraSpec.parse("C:\\x\\l.safetensors").path == Path("C:\\x\\l.safetensors")


# ----- end to end on tiny models (the fixtures' official-layout files) ---------------------


def need_fixtures():
    if not (FIXTURES / "wan21_i2v_dit" / "model.safetensors").is_file():
        pytest.skip(
            f"tiny official-layout models not found under {FIXTURES} (set SVI_FIXTURES_DIR)"
        )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    need_fixtures()
    tmp_path = tmp_path_factory.mktemp("tiny_models")
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from svi_core.standalone.backend import save_text_embeddings

    out = {}
    for name in ("wan21_i2v_dit", "wan22_i2v_dit", "wan21_vae"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
        out[name] = tmp_path / name / "model.safetensors"
    lora = FIXTURES / "svi_lora" / "lora_peft_names.safetensors"
    shutil.copy(lora, tmp_path / "svi_lora.safetensors")
    out["lora"] = tmp_path / "svi_lora.safetensors"
    dit_cfg = json.loads((FIXTURES / "wan21_i2v_dit" / "config.json").read_text())
    text_dim, clip_dim = dit_cfg["text_dim"], dit_cfg["clip_dim"]  # sizes of the fixture set
    out["text_dim"] = text_dim
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=clip_dim, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=224, patch_size=14)  # fmt: skip
    clip = CLIPVisionModel(cfg)
    (tmp_path / "clip").mkdir()
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()
          for k, v in clip.state_dict().items() if not k.endswith("position_ids")}  # fmt: skip
    save_file(sd, str(tmp_path / "clip" / "clip.safetensors"))  # ComfyUI clip_vision_h naming
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    out["clip"] = tmp_path / "clip" / "clip.safetensors"
    from svi_core.modes import NEGATIVE_PROMPT_EN, NEGATIVE_PROMPT_ZH

    g = torch.Generator().manual_seed(1)
    ctx = {}
    for p in PROMPTS + [NEGATIVE_PROMPT_EN, NEGATIVE_PROMPT_ZH]:
        c = torch.zeros(1, 512, text_dim)
        c[:, :7] = torch.randn(1, 7, text_dim, generator=g)
        ctx[p] = c
    out["emb"] = save_text_embeddings(tmp_path / "emb.safetensors", ctx)
    return out


def test_generate_film_end_to_end_then_extend(tmp_path, inputs, caplog, tiny_models):
    from svi_core.video_io import count_frames

    m = tiny_models
    img, prompts = inputs
    out = tmp_path / "film.mp4"
    args = [
        "generate", "--mode", "film", "--model", str(m["wan21_i2v_dit"]),
        "--vae", str(m["wan21_vae"]), "--clip-vision", str(m["clip"]),
        "--text-embeddings", str(m["emb"]), "--lora", f"{m['lora']}:0.7",
        "--image", str(img), "--prompts", str(prompts), "--frames", "9", "--steps", "2",
        "--width", "32", "--height", "32", "--clips", "2", "--output", str(out),
    ]  # fmt: skip
    assert main(args) == 0, caplog.text
    assert count_frames(out) == 2 * 9 - 5
    manifest = json.loads((tmp_path / "film.run" / "manifest.json").read_text())
    assert [c["seed"] for c in manifest["clips"]] == [0, 42]
    assert manifest["settings"]["width"] == 32 and manifest["inputs"]["loras"].endswith("@0.7")
    args[args.index("--clips") + 1] = "3"
    assert main(args) == 0, caplog.text
    assert count_frames(out) == 3 * 9 - 2 * 5
    assert "1 generated now" in caplog.text
    args[args.index("--steps") + 1] = "3"
    assert main(args) == 2
    assert "steps=2" in caplog.text and "steps=3" in caplog.text


def tiny_umt5(tmp_path, width: int):
    """A ``width``-wide UMT5 encoder (HF names, as ComfyUI ships it) and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = sorted({w for p in PROMPTS for w in p.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(tmp_path / "tokenizer"))
    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=48, num_layers=1, num_heads=4,
                     relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")  # fmt: skip
    sd = UMT5EncoderModel(cfg).state_dict()
    sd = {k: v.contiguous() for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, str(tmp_path / "umt5.safetensors"))
    return tmp_path / "umt5.safetensors", tmp_path / "tokenizer"


def test_generate_pro_two_experts_with_umt5(tmp_path, inputs, caplog, tiny_models):
    from svi_core.video_io import count_frames

    m = tiny_models
    img, prompts = inputs
    umt5, tokenizer = tiny_umt5(tmp_path, m["text_dim"])
    out = tmp_path / "pro.mp4"
    args = [
        "generate", "--mode", "v2_pro", "--model", str(m["wan22_i2v_dit"]),
        "--low-noise-model", str(m["wan22_i2v_dit"]), "--vae", str(m["wan21_vae"]),
        "--text-encoder", str(umt5), "--tokenizer", str(tokenizer),
        "--image", str(img), "--prompts", str(prompts),
        "--frames", "9", "--steps", "3", "--width", "32", "--height", "32", "--clips", "2",
        "--output", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0, caplog.text
    assert count_frames(out) == 9 + (9 - 5)
    manifest = json.loads((tmp_path / "pro.run" / "manifest.json").read_text())
    assert manifest["settings"]["boundary"] == 0.875 and manifest["settings"]["motion_latents"] == 1


def test_report_and_demo_are_forwarded(monkeypatch):
    import svi_core.report
    import svi_core.toy.demo

    seen = []
    monkeypatch.setattr(svi_core.report, "main", lambda argv: seen.append(("report", argv)) or 0)
    monkeypatch.setattr(svi_core.toy.demo, "main", lambda argv: seen.append(("demo", argv)) or 3)
    assert main(["report", "v.mp4", "--out", "d"]) == 0
    assert main(["demo", "--clips", "2"]) == 3
    assert seen == [("report", ["v.mp4", "--out", "d"]), ("demo", ["--clips", "2"])]


def test_every_flag_of_demo_and_train_has_help_text():
    """`demo --help` and `train --help` explain every flag (issue 10, 4)."""
    from svi_core.toy.demo import build_parser as demo_parser
    from train.cli import FIELD_HELP
    from train.cli import build_parser as train_parser
    from train.config import FIELD_NAMES

    assert set(FIELD_HELP) == set(FIELD_NAMES)  # a new config field needs its help line
    for parser in (demo_parser(), train_parser()):
        for action in parser._actions:
            assert action.help, action.option_strings
    assert "(default: shot 1, film 5)" in train_parser().format_help()
