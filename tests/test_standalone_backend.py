"""DiffusersBackend on tiny random diffusers models: shapes, spaces, CFG batching, experts."""

import hashlib

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: E402

from svi_core.backend import Backend, ClipRequest  # noqa: E402
from svi_core.errors import SVIError  # noqa: E402
from svi_core.guidance import Guidance  # noqa: E402
from svi_core.latents import normalise  # noqa: E402
from svi_core.loop import clip_noise  # noqa: E402
from svi_core.standalone.backend import DiffusersBackend  # noqa: E402

TEXT_DIM, IMAGE_DIM = 32, 24


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run 10-50x faster on one thread than on an oversubscribed CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_dit(seed, image=True):
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=36,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        image_dim=IMAGE_DIM if image else None,
        added_kv_proj_dim=16 if image else None,
    ).eval()


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1).eval()


def text(prompt):
    g = torch.Generator().manual_seed(int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16))
    ctx = torch.zeros(1, 512, TEXT_DIM)
    ctx[:, :5] = torch.randn(1, 5, TEXT_DIM, generator=g)
    return ctx


def image(frame):
    return frame.mean() * torch.ones(1, 257, IMAGE_DIM)


def request(cfg=5.0, boundary=None, clip=True):
    t, h, w = 3, 4, 4
    cond = torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 4, t, h, w)
    mask[:, :, 0] = 1
    return ClipRequest(
        index=0, seed=0, noise=clip_noise(0, t, h, w), cond_latent=cond, mask=mask,
        positive="a cat", negative="blurry", clip_vision=torch.ones(1, 257, IMAGE_DIM) if clip else None,
        steps=4, guidance=Guidance(scale=cfg), shift=5.0, boundary=boundary,
    )  # fmt: skip


def test_encode_decode_spaces():
    vae = tiny_vae()
    be = DiffusersBackend(tiny_dit(1), vae, text_encoder=text, image_encoder=image)
    assert isinstance(be, Backend)
    px = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    lat = be.encode(px)
    assert lat.shape == (1, 16, 3, 4, 4)
    raw = vae.encode(px).latent_dist.mean
    assert torch.allclose(lat, normalise(raw), atol=1e-6)  # NORMALISED across the protocol
    out = be.decode(lat)
    assert out.shape == (1, 3, 9, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert be.encode_clip_vision(px[:, :, 0]).shape == (1, 257, IMAGE_DIM)


def test_batched_cfg_equals_two_passes_and_guidance_matters():
    dit, vae = tiny_dit(1), tiny_vae()
    a = DiffusersBackend(dit, vae, text_encoder=text, batch_cfg=True).denoise(request())
    b = DiffusersBackend(dit, vae, text_encoder=text, batch_cfg=False).denoise(request())
    assert torch.allclose(a, b, atol=1e-5)
    c = DiffusersBackend(dit, vae, text_encoder=text).denoise(request(cfg=1.0))
    assert (a - c).abs().max() > 1e-3


def test_two_experts_switch():
    hi, lo, vae = tiny_dit(1, image=False), tiny_dit(2, image=False), tiny_vae()
    calls = []
    hi.register_forward_hook(lambda *a: calls.append("hi"))
    lo.register_forward_hook(lambda *a: calls.append("lo"))
    be = DiffusersBackend(hi, vae, low_noise_transformer=lo, text_encoder=text)
    be.denoise(request(boundary=0.875, clip=False))
    # 4 steps, shift 5: t = 1000, 937.5, 833.3, 625 -> 2 high-noise steps, then low-noise
    assert calls == ["hi", "hi", "lo", "lo"]


def test_model_and_mode_mismatch_is_an_error():
    be = DiffusersBackend(tiny_dit(1), tiny_vae(), text_encoder=text)
    with pytest.raises(SVIError, match="needs a CLIP-vision"):
        be.encode_clip_vision(torch.zeros(1, 3, 32, 32))
    with pytest.raises(SVIError, match="no CLIP-vision"):
        be.denoise(request(clip=False))
    w22 = DiffusersBackend(tiny_dit(1, image=False), tiny_vae(), text_encoder=text)
    with pytest.raises(SVIError, match="no image embedding"):
        w22.denoise(request(clip=True))


def test_resume_on_tiny_diffusers_models_is_bit_exact(tmp_path):
    from safetensors.torch import load_file

    from svi_core.errors import Cancelled
    from svi_core.loop import LoopInputs, RunSettings, run_clips
    from svi_core.modes import get_mode

    be = DiffusersBackend(tiny_dit(1), tiny_vae(), text_encoder=text, image_encoder=image)
    s = RunSettings(mode=get_mode("tom", frames=5, steps=2), width=32, height=32, num_clips=3)
    ref = torch.randint(
        0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    inputs = LoopInputs(ref, ["a cat", "a dog"])
    run_clips(be, s, inputs, tmp_path / "a")

    def cancel(clip, done, total):
        if clip == 2 and done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_clips(be, s, inputs, tmp_path / "b", on_step=cancel)
    assert run_clips(be, s, inputs, tmp_path / "b").clips_generated == 1
    for k in range(3):
        a = load_file(str(tmp_path / "a" / "clips" / f"clip_{k:05d}.safetensors"))
        b = load_file(str(tmp_path / "b" / "clips" / f"clip_{k:05d}.safetensors"))
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["motion"], b["motion"])
