"""Test helper, run with ComfyUI's python (0.11.0+): SVI-Talk's ComfyUI parts on core's own modules.

Usage: ``python check_talk.py <comfyui_path> <pack_root> <models_dir> <work_dir>``, with the tiny
Talk models of ``make_models.py --talk`` in ``models_dir``. Writes ``work_dir/out.safetensors``:

- ``samples``: the speech as the pack prepares it (16 kHz mono, -23 LUFS);
  ``features``: the official-order features computed with core's wav2vec2 modules
  (``nodes.talk_parts.official_features`` on the AUDIO_ENCODER core's loader builds);
- ``fwd_batched`` / ``fwd_single``: one DiT forward of the three SVI-Talk passes as one batch with
  ``cond_or_uncond = [0, 1, 2]`` through the pack's per-chunk audio patch, and the same three passes
  run one by one; ``fwd_noaudio``: the plain DiT;
- ``cfg_guider`` / ``cfg_ksampler``: two steps with the pack's guider for ``Guidance(cfg 2)`` and
  with ComfyUI's own KSampler path (must agree: the guider plumbing is ComfyUI's);
- ``talk`` / ``talk_again`` / ``talk_other``: two steps of SVI-Talk guidance with the clip's audio,
  again, and with other speech.
Prints one JSON line (ComfyUI version).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys


def main(comfy: str, pack: str, models: str, work: str) -> None:
    sys.path.insert(0, comfy)
    os.chdir(comfy)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.audio_encoders.audio_encoders as audio_encoders
    import comfy.model_management
    import comfy.sample
    import comfy.sd
    import comfy.utils
    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location(
        "svi_pack", os.path.join(pack, "__init__.py"), submodule_search_locations=[pack]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["svi_pack"] = module
    spec.loader.exec_module(module)
    from comfy_extras.nodes_model_patch import ModelPatchLoader
    from svi_pack.nodes.backend import image_condition, with_shift
    from svi_pack.nodes.guider import SVIGuider, sample_guided
    from svi_pack.nodes.talk import ComfyTalkAudio
    from svi_pack.nodes.talk_parts import official_features
    from svi_pack.svi_core.backend import ClipRequest
    from svi_pack.svi_core.guidance import Guidance
    from svi_pack.svi_core.talk import prepare_waveform
    from svi_pack.svi_core.talk.condition import AudioCondition, AudioFeatureSettings

    out: dict[str, torch.Tensor] = {}
    # ----- features with core's wav2vec2 modules, official order ---------------------------
    sd = comfy.utils.load_torch_file(
        os.path.join(models, "audio_encoders", "wav2vec2-chinese-base_fp16.safetensors")
    )
    enc = audio_encoders.load_audio_encoder_from_sd(sd)

    def speech(seconds: float, seed: int, rate: int = 22050) -> np.ndarray:
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) * (np.sin(2 * np.pi * 1.7 * t) > 0)
        return np.stack([x, 0.5 * x]) + 0.01 * rng.standard_normal((2, len(t)))

    def features(samples):
        comfy.model_management.load_model_gpu(enc.patcher)
        return official_features(enc.model, samples, device=enc.load_device)

    def condition(seed: int) -> AudioCondition:
        wave = torch.from_numpy(speech(1.0, seed)).float()[None]
        track = prepare_waveform(wave, 22050, source=f"speech {seed}")
        settings = AudioFeatureSettings(encoder="tiny", layers=12, channels=768)
        return AudioCondition.from_track(
            track, features, settings, waveform=(wave[0].numpy(), 22050)
        )

    cond = condition(0)
    track = prepare_waveform(torch.from_numpy(speech(1.0, 0)).float()[None], 22050)
    out["samples"] = torch.from_numpy(track.samples.copy())
    out["features"] = cond.features.get()

    # ----- the DiT with the per-chunk audio patch ------------------------------------------
    import folder_paths

    folder_paths.add_model_folder_path("model_patches", os.path.join(models, "model_patches"))
    patch = ModelPatchLoader().load_model_patch("multitalk.safetensors")[0]
    dit_path = os.path.join(
        models, "diffusion_models", "wan2.1_i2v_talk_tiny_dim160_fp16.safetensors"
    )
    model = comfy.sd.load_diffusion_model(dit_path)
    hook = ComfyTalkAudio(patch)
    hook.check_model(model)

    from svi_pack.svi_core.loop import RunSettings
    from svi_pack.svi_core.modes import get_mode

    mode = get_mode("talk", frames=9, steps=2)
    settings = RunSettings(mode=mode, width=32, height=32, num_clips=1)

    class Plan:  # the smallest ClipPlan stand-in for_clip needs
        index = 0

        def with_extra(self, name, payload):
            return payload

    window = cond.for_clip(Plan(), settings)
    patched = hook.patch(model, window, frozenset({2}))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 36, 3, 4, 4, generator=gen)
    t = torch.tensor([700.0])
    ctx_pos = torch.randn(1, 12, 4096, generator=gen)
    ctx_neg = torch.randn(1, 12, 4096, generator=gen)
    clip_fea = torch.randn(1, 257, 1280, generator=gen)
    dm = model.model.diffusion_model
    topts_base = patched.model_options["transformer_options"]
    with torch.no_grad():
        ctx3 = torch.cat([ctx_pos, ctx_neg, ctx_neg])
        opts = {**topts_base, "cond_or_uncond": [0, 1, 2]}
        out["fwd_batched"] = dm(x.repeat(3, 1, 1, 1, 1), t.repeat(3), ctx3,
                                clip_fea=clip_fea.repeat(3, 1, 1), transformer_options=opts).float()  # fmt: skip
        singles = []
        for i, c in enumerate((ctx_pos, ctx_neg, ctx_neg)):
            opts = {**topts_base, "cond_or_uncond": [i]}
            singles.append(dm(x, t, c, clip_fea=clip_fea, transformer_options=opts).float())
        out["fwd_single"] = torch.cat(singles)
        out["fwd_noaudio"] = dm(x, t, ctx_pos, clip_fea=clip_fea, transformer_options={}).float()

    # ----- sampling: the guider vs ComfyUI's KSampler, then SVI-Talk guidance ---------------
    shifted = with_shift(model, 5.0)
    lat = torch.randn(1, 16, 3, 4, 4, generator=gen)
    mask = torch.zeros(1, 4, 3, 4, 4)
    mask[:, :, 0] = 1
    pos, neg = [[ctx_pos, {}]], [[ctx_neg, {}]]
    pos, neg = (image_condition(c, lat, mask, None) for c in (pos, neg))
    noise = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(9))

    def request(guidance: Guidance) -> ClipRequest:
        return ClipRequest(index=0, seed=9, noise=noise, cond_latent=lat, mask=mask,
                           positive=pos, negative=neg, clip_vision=None, steps=2, shift=5.0,
                           guidance=guidance)  # fmt: skip

    def nothing(*_a):
        return None

    out["cfg_guider"] = sample_guided(shifted, request(Guidance(scale=2.0)), pos, neg, "euler",
                                      "simple", nothing)  # fmt: skip
    out["cfg_ksampler"] = comfy.sample.sample(
        shifted, noise, 2, 2.0, "euler", "simple", pos, neg, torch.zeros_like(noise),
        disable_pbar=True, seed=9,
    ).float()  # fmt: skip
    talk = Guidance(kind="text_audio", scale=2.0, audio_scale=5.0)

    def talk_sample(c: AudioCondition) -> torch.Tensor:
        m = hook.patch(shifted, c.for_clip(Plan(), settings), frozenset({2}))
        return sample_guided(m, request(talk), pos, neg, "euler", "simple", nothing)

    out["talk"] = talk_sample(cond)
    out["talk_again"] = talk_sample(cond)
    out["talk_other"] = talk_sample(condition(1))
    assert isinstance(SVIGuider(shifted, talk, pos, neg), SVIGuider)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(work, "out.safetensors"))
    import comfyui_version

    print(json.dumps({"comfyui": comfyui_version.__version__, "frames": cond.feature_frames}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
