"""UMT5 text encoder and CLIP vision loaders: both file layouts, tiny random models.

Each official (Wan) layout is checked against a small reference forward written here from
the official module structure (``wan/modules/t5.py``, ``wan/modules/clip.py``), so a swapped
tensor in the name mapping shows up as a numerical difference.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from svi_core.errors import CheckpointError

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = "a cat sat on the mat dog runs fast slowly".split()


# --------------------------------------------------------------------------------------
# UMT5
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    out = tmp_path_factory.mktemp("umt5_tokenizer")
    fast.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def hf_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=16,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    model = UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model


def _hf_to_wan_t5(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF UMT5 names -> official Wan T5 encoder names (test-side, written independently)."""
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}  # fmt: skip
    n = len({k.split(".")[2] for k in sd if k.startswith("encoder.block.")})
    for i in range(n):
        b = f"encoder.block.{i}.layer"
        out[f"blocks.{i}.norm1.weight"] = sd[f"{b}.0.layer_norm.weight"]
        for x in "qkvo":
            out[f"blocks.{i}.attn.{x}.weight"] = sd[f"{b}.0.SelfAttention.{x}.weight"]
        out[f"blocks.{i}.pos_embedding.embedding.weight"] = sd[
            f"{b}.0.SelfAttention.relative_attention_bias.weight"
        ]
        out[f"blocks.{i}.norm2.weight"] = sd[f"{b}.1.layer_norm.weight"]
        out[f"blocks.{i}.ffn.gate.0.weight"] = sd[f"{b}.1.DenseReluDense.wi_0.weight"]
        out[f"blocks.{i}.ffn.fc1.weight"] = sd[f"{b}.1.DenseReluDense.wi_1.weight"]
        out[f"blocks.{i}.ffn.fc2.weight"] = sd[f"{b}.1.DenseReluDense.wo.weight"]
    return out


def _bucket(rel: torch.Tensor, num_buckets: int, max_dist: int = 128) -> torch.Tensor:
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    big = (
        exact
        + (
            torch.log(rel.float().clamp(min=1) / exact)
            / math.log(max_dist / exact)
            * (half - exact)
        ).long()
    )
    return out + torch.where(rel < exact, rel, big.clamp(max=half - 1))


def _wan_t5_reference(w: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor):
    """Official Wan T5 encoder forward (no dropout), from its module structure."""

    def rms(x, g):
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    x = w["token_embedding.weight"][ids]
    b, L, _ = x.shape
    n_blocks = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
    for i in range(n_blocks):
        p = f"blocks.{i}."
        table = w[p + "pos_embedding.embedding.weight"]
        heads = table.shape[1]
        bias = table[_bucket(rel, table.shape[0])].permute(2, 0, 1)[None]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        h = rms(x, w[p + "norm1.weight"])
        q, k, v = ((h @ w[p + f"attn.{n}.weight"].T).view(b, L, heads, -1) for n in ("q", "k", "v"))
        att = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)
        o = torch.einsum("bnij,bjnc->binc", att, v).reshape(b, L, -1)
        x = x + o @ w[p + "attn.o.weight"].T
        h = rms(x, w[p + "norm2.weight"])
        gate = F.gelu(h @ w[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ w[p + "ffn.fc1.weight"].T) * gate) @ w[p + "ffn.fc2.weight"].T
    return rms(x, w["norm.weight"])


def test_umt5_hf_layout_loads_and_zeroes_padding(tmp_path, tokenizer_dir, hf_umt5) -> None:
    from svi_core.standalone.models import encode_text, load_umt5_encoder

    sd = {k: v for k, v in hf_umt5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    path = tmp_path / "umt5_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model, tok = load_umt5_encoder(path, tokenizer_dir, dtype=torch.float32)
    assert model.config.num_heads == 4 and model.config.relative_attention_num_buckets == 8
    texts = ["a cat  sat on the mat", "dog runs"]
    ctx = encode_text(model, tok, texts, max_len=12)
    assert ctx.shape == (2, 12, 16)
    batch = tok(["a cat sat on the mat", "dog runs"], padding="max_length", max_length=12,
                return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        ref = hf_umt5(**batch).last_hidden_state
    n0, n1 = int(batch["attention_mask"][0].sum()), int(batch["attention_mask"][1].sum())
    assert (n0, n1) == (7, 3)  # words + </s>
    torch.testing.assert_close(ctx[0, :n0], ref[0, :n0])
    torch.testing.assert_close(ctx[1, :n1], ref[1, :n1])
    assert ctx[0, n0:].abs().max() == 0 and ctx[1, n1:].abs().max() == 0
    assert ctx[1, :n1].abs().min() > 0


def test_umt5_official_wan_layout_matches_reference(tmp_path, tokenizer_dir, hf_umt5) -> None:
    from svi_core.standalone.models import encode_text, load_umt5_encoder

    wan = _hf_to_wan_t5(hf_umt5.state_dict())
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan, str(path))
    model, tok = load_umt5_encoder(path, tokenizer_dir, dtype=torch.float32)
    ctx = encode_text(model, tok, ["the dog runs fast"], max_len=10)
    batch = tok(["the dog runs fast"], padding="max_length", max_length=10, return_tensors="pt")
    ref = _wan_t5_reference(wan, batch["input_ids"], batch["attention_mask"])
    n = int(batch["attention_mask"].sum())
    torch.testing.assert_close(ctx[0, :n], ref[0, :n], atol=1e-5, rtol=1e-5)
    assert ctx[0, n:].abs().max() == 0


def test_umt5_missing_tokenizer_is_an_error(tmp_path, hf_umt5) -> None:
    from svi_core.standalone.models import load_umt5_encoder

    path = tmp_path / "t5.safetensors"
    sd = {k: v for k, v in hf_umt5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match="tokenizer folder not found"):
        load_umt5_encoder(path, tmp_path / "nope", dtype=torch.float32)


# --------------------------------------------------------------------------------------
# CLIP vision
# --------------------------------------------------------------------------------------

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def hf_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        hidden_act="gelu",
    )
    torch.manual_seed(1)
    model = CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 1.0))
    return model


def _bare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("vision_model."): v for k, v in sd.items() if "position_ids" not in k}


def _hf_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP vision names -> Wan / open-clip ``visual.*`` names (test-side)."""
    sd = _bare(sd)
    dim = sd["embeddings.class_embedding"].shape[0]
    out = {
        "visual.patch_embedding.weight": sd["embeddings.patch_embedding.weight"],
        "visual.cls_embedding": sd["embeddings.class_embedding"].view(1, 1, dim),
        "visual.pos_embedding": sd["embeddings.position_embedding.weight"][None],
        "visual.pre_norm.weight": sd["pre_layrnorm.weight"],
        "visual.pre_norm.bias": sd["pre_layrnorm.bias"],
        "visual.post_norm.weight": sd["post_layernorm.weight"],
        "visual.post_norm.bias": sd["post_layernorm.bias"],
        "visual.head": torch.randn(dim, 8),
        "textual.token_embedding.weight": torch.randn(4, 8),  # the text tower is ignored
        "log_scale": torch.tensor(1.0),
    }
    n = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    for i in range(n):
        s, t = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for kind in ("weight", "bias"):
            out[t + f"attn.to_qkv.{kind}"] = torch.cat(
                [sd[s + f"self_attn.{x}_proj.{kind}"] for x in "qkv"]
            )
            out[t + f"attn.proj.{kind}"] = sd[s + f"self_attn.out_proj.{kind}"]
            out[t + f"norm1.{kind}"] = sd[s + f"layer_norm1.{kind}"]
            out[t + f"norm2.{kind}"] = sd[s + f"layer_norm2.{kind}"]
            out[t + f"mlp.0.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
            out[t + f"mlp.2.{kind}"] = sd[s + f"mlp.fc2.{kind}"]
    return out


def _wan_clip_reference(w: dict[str, torch.Tensor], frame: torch.Tensor, heads: int):
    """Official ``CLIPModel.visual`` (use_31_block) on a [1, 3, H, W] frame in [-1, 1]."""
    pw = w["visual.patch_embedding.weight"]
    grid = int(round((w["visual.pos_embedding"].shape[1] - 1) ** 0.5))
    size = grid * pw.shape[-1]
    x = F.interpolate(frame, size=(size, size), mode="bicubic", align_corners=False)
    x = ((x * 0.5 + 0.5) - MEAN) / STD
    x = F.conv2d(x, pw, stride=pw.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([w["visual.cls_embedding"].expand(x.shape[0], -1, -1), x], 1)
    x = x + w["visual.pos_embedding"]
    dim = x.shape[-1]
    x = F.layer_norm(x, (dim,), w["visual.pre_norm.weight"], w["visual.pre_norm.bias"], 1e-5)
    n = len({k.split(".")[2] for k in w if k.startswith("visual.transformer.")})
    for i in range(n - 1):  # all blocks but the last
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (dim,), w[p + "norm1.weight"], w[p + "norm1.bias"], 1e-5)
        b, s, _ = h.shape
        qkv = F.linear(h, w[p + "attn.to_qkv.weight"], w[p + "attn.to_qkv.bias"])
        q, k, v = qkv.view(b, s, 3, heads, dim // heads).unbind(2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        o = o.transpose(1, 2).reshape(b, s, dim)
        x = x + F.linear(o, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (dim,), w[p + "norm2.weight"], w[p + "norm2.bias"], 1e-5)
        h = F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        x = x + F.linear(h, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
    return x


def test_clip_vision_comfy_layout(tmp_path, hf_clip) -> None:
    from svi_core.standalone.models import clip_vision_features, load_clip_vision

    sd = {"vision_model." + k: v for k, v in _bare(hf_clip.state_dict()).items()}
    sd["visual_projection.weight"] = torch.randn(8, 32)
    path = tmp_path / "clip_vision_h.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = load_clip_vision(path, num_heads=2)
    assert model.config.image_size == 28 and model.config.num_hidden_layers == 3
    frame = torch.rand(1, 3, 40, 56) * 2 - 1  # not square, not 28: resized whole
    feats = clip_vision_features(model, frame)
    assert feats.shape == (1, 5, 32)
    ref = _wan_clip_reference(_hf_to_open_clip(hf_clip.state_dict()), frame, heads=2)
    torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)


def test_clip_vision_official_layout(tmp_path, hf_clip) -> None:
    from svi_core.standalone.models import clip_vision_features, load_clip_vision

    wan = _hf_to_open_clip(hf_clip.state_dict())
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(wan, str(path))
    model = load_clip_vision(path, num_heads=2)
    frame = torch.rand(1, 3, 32, 32) * 2 - 1
    feats = clip_vision_features(model, frame)
    ref = _wan_clip_reference(wan, frame, heads=2)
    torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)
    # the last block is not used: changing it leaves the feature unchanged
    wan2 = dict(wan)
    wan2["visual.transformer.2.mlp.2.bias"] = wan["visual.transformer.2.mlp.2.bias"] + 1.0
    torch.save(wan2, str(path))
    torch.testing.assert_close(
        clip_vision_features(load_clip_vision(path, num_heads=2), frame), feats
    )


def test_clip_vision_rejects_a_vae(tmp_path) -> None:
    from svi_core.standalone.models import load_clip_vision

    path = tmp_path / "vae.safetensors"
    save_file(
        {
            "encoder.conv1.weight": torch.zeros(1),
            "decoder.middle.0.residual.0.gamma": torch.zeros(1),
        },
        str(path),
    )
    with pytest.raises(CheckpointError, match="CLIP vision encoder was expected"):
        load_clip_vision(path)


def test_t5_v1_1_is_not_umt5(tmp_path, tokenizer_dir, hf_umt5) -> None:
    from svi_core.standalone.models import load_umt5_encoder

    sd = {
        k: v
        for k, v in hf_umt5.state_dict().items()
        if k != "encoder.embed_tokens.weight"
        and not k.startswith("encoder.block.1.layer.0.SelfAttention.relative_attention_bias")
    }
    path = tmp_path / "t5xxl_fp16.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"t5xxl_fp16\.safetensors.*not UMT5"):
        load_umt5_encoder(path, tokenizer_dir, dtype=torch.float32)
