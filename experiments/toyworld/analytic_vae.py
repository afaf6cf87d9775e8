"""Hand-set starting weights for the toy Wan VAE (diffusers ``AutoencoderKLWan``).

Why: trained from scratch on 2 shared CPU cores, the Wan VAE stays at "predict the mean colour"
for hundreds of steps (measured: L1 0.39 after 130 steps at several learning rates). So the
toy VAE starts from an exact, hand-built autoencoder in the Wan layout and is only fine-tuned:

Encoder: RGB -> 2x2 average -> 2x2 average -> space-to-depth 2x2, so each latent cell (8x8
pixels) holds the mean colours of its four 4x4 sub-blocks (12 of the 16 channels); in time,
latent frame i is pixel frame 4i (the causal time convs pick their newest input).
Decoder: the mean of the four sub-blocks (3 channels) plus the 12 sub-block channels are carried
through nearest upsampling; the output is the cell mean colour (blocky), frames repeated 4x.
Residual branches start at zero (identity blocks) so fine-tuning can add detail.

The only non-linearities on the path (RMS norm over channels + SiLU in both heads) are made
near-linear: a residual bias adds a large constant channel C0 (so the norm barely depends on the
content) and an offset K to the content channels (so SiLU(v + K) ~ v + K); gammas undo the norm.
"""

from __future__ import annotations

import math

import torch

K = 10.0  # SiLU offset: SiLU(v + K) = (v + K) * sigmoid(v + K), within 1e-3 of v + K for |v| <= 1
C0 = 1000.0  # constant channel: makes the RMS norm's divisor ~ independent of the content


def _zero(m: torch.nn.Module) -> None:
    for p in m.parameters():
        p.data.zero_()


def _eye_conv3d(conv: torch.nn.Module, pairs: list[tuple[int, int, float]]) -> None:
    """Causal 3-D conv: out[o] += w * in[i] at the spatial centre and the current frame."""
    w = conv.weight.data
    w.zero_()
    conv.bias.data.zero_()
    kt, kh, kw = w.shape[2:]
    for o, i, val in pairs:
        w[o, i, kt - 1, kh // 2, kw // 2] += val


@torch.no_grad()
def init_analytic(vae) -> None:
    """Overwrite ``vae`` (base_dim 16, z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks) in place."""
    enc, dec = vae.encoder, vae.decoder
    # every residual branch and attention projection starts at zero; shortcuts are identities
    for m in vae.modules():
        name = type(m).__name__
        if name == "WanResidualBlock":
            _zero(m.conv2)
            sc = m.conv_shortcut
            if isinstance(sc, torch.nn.Module) and hasattr(sc, "weight"):
                n = min(sc.weight.shape[0], sc.weight.shape[1])
                _eye_conv3d(sc, [(i, i, 1.0) for i in range(n)])
        elif name == "WanAttentionBlock":
            _zero(m.proj)
    # ---- encoder
    _eye_conv3d(enc.conv_in, [(c, c, 1.0) for c in range(3)])
    levels = [b for b in enc.down_blocks if type(b).__name__ == "WanResample"]
    assert len(levels) == 3, "expected 3 resamples (Wan2.1 layout)"
    for r in levels[:2]:  # 2x2 average of the 3 colour channels
        conv = r.resample[1]
        conv.weight.data.zero_()
        conv.bias.data.zero_()
        for c in range(3):
            conv.weight.data[c, c, 0:2, 0:2] = 0.25
    conv = levels[2].resample[1]  # space-to-depth: channel 3p + c, p = 2a + b
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    for a in range(2):
        for b in range(2):
            for c in range(3):
                conv.weight.data[3 * (2 * a + b) + c, c, a, b] = 1.0
    for r in levels:
        if hasattr(r, "time_conv"):
            tc = r.time_conv
            tc.weight.data.zero_()
            tc.bias.data.zero_()
            for i in range(tc.weight.shape[0]):
                tc.weight.data[i, i, 2, 0, 0] = 1.0  # newest of the 3 frames
    last = enc.mid_block.resnets[-1].conv2
    last.bias.data[:12] = K
    last.bias.data[12] = C0
    n0 = math.sqrt(12 * K * K + C0 * C0)
    g = enc.norm_out.gamma.data
    g.zero_()
    g[:12] = n0 / math.sqrt(g.shape[0])
    _eye_conv3d(enc.conv_out, [(j, j, 1.0) for j in range(12)])
    enc.conv_out.bias.data[:12] = -K
    # ---- quant convs: identity
    for q in (vae.quant_conv, vae.post_quant_conv):
        _eye_conv3d(q, [(i, i, 1.0) for i in range(q.weight.shape[0])])
    # ---- decoder: 3 mean colours (ch 0-2) + the 12 sub-block channels (ch 3-14)
    _eye_conv3d(
        dec.conv_in,
        [(c, 3 * p + c, 0.25) for p in range(4) for c in range(3)]
        + [(3 + j, j, 1.0) for j in range(12)],
    )
    for ub in dec.up_blocks:
        if ub.upsamplers is None:
            continue
        r = ub.upsamplers[0]
        conv = r.resample[1]
        conv.weight.data.zero_()
        conv.bias.data.zero_()
        for i in range(min(conv.weight.shape[0], conv.weight.shape[1], 15)):
            conv.weight.data[i, i, 1, 1] = 1.0
        if hasattr(r, "time_conv"):
            tc = r.time_conv
            tc.weight.data.zero_()
            tc.bias.data.zero_()
            dim = tc.weight.shape[1]
            for i in range(dim):
                tc.weight.data[i, i, 2, 0, 0] = 1.0
                tc.weight.data[dim + i, i, 2, 0, 0] = 1.0
    last = dec.up_blocks[-1].resnets[-1].conv2
    last.bias.data[:3] = K
    last.bias.data[15] = C0
    n0 = math.sqrt(3 * K * K + C0 * C0)
    g = dec.norm_out.gamma.data
    g.zero_()
    g[:3] = n0 / math.sqrt(g.shape[0])
    _eye_conv3d(dec.conv_out, [(c, c, 1.0) for c in range(3)])
    dec.conv_out.bias.data[:3] = -K
