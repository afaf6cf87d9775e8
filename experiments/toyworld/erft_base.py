"""The base model of the ERFT study: continue the shipped toy DiT until its one-clip validation
loss flattens, and record the curve.

One-clip validation loss: the flow-matching MSE ``|v_hat - (n - x0)|^2`` of the base I2V task
(condition = [frame 0, zeros], mask on latent frame 0, zero text / CLIP context, the pretraining
recipe of ``pretrain.py``) on ``BASE_VAL_SCENES`` (64 held-out clips), averaged over 8 fixed
noise levels (the shift-5 sigmas at u = 1/16, 3/16, ..., 15/16) with fixed noise: the same
number for the same weights, every time.

Training: AdamW (lr 3e-4 after 50 warm-up steps, weight decay 0.01, grad clip 1.0), batch 8,
drawn with a seeded generator from a pool of fresh clips (``erft_data.fresh_scenes(seed,
"base", N)``; never a test / validation scene). It stops after ``max_steps``, or earlier once
the loss has flattened: the best validation loss of the last ``window`` steps is less than
``min_gain`` (relative) below the best before them. Steps, not minutes, so the same seed gives
the same base.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from svi_core.toy.models import IMAGE_SHAPE, TEXT_SHAPE, TOY_DIT, load_toy_dit

EVAL_US = tuple((2 * i + 1) / 16 for i in range(8))


def shifted(u: torch.Tensor, shift: float = 5.0) -> torch.Tensor:
    """Sigma of the shift-``shift`` schedule at position u in (0, 1]."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def model_inputs(x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor, s: torch.Tensor):
    """DiT inputs of the base I2V task: ``([x_t, mask, cond], 1000 s, text, image)`` and the
    velocity target ``noise - x0``; latents NORMALISED ``[B, 16, T, h, w]``."""
    b = x0.shape[0]
    sv = s.view(-1, 1, 1, 1, 1)
    xt = (1 - sv) * x0 + sv * noise
    mask = torch.zeros(b, 4, *x0.shape[2:])
    mask[:, :, 0] = 1.0
    hidden = torch.cat([xt, mask, cond], dim=1)
    text = torch.zeros(b, *TEXT_SHAPE[1:])
    image = torch.zeros(b, *IMAGE_SHAPE[1:])
    return hidden, s * 1000.0, text, image, noise - x0


@torch.no_grad()
def val_loss(dit, val: dict[str, torch.Tensor], batch: int = 16) -> float:
    """The one-clip validation loss (module doc) of ``dit`` on ``val`` = {x0, cond}."""
    was = dit.training
    dit.train(False)
    x0_all, cond_all = val["x0"], val["cond"]
    gen = torch.Generator().manual_seed(1234)
    noise_all = torch.randn(len(EVAL_US), *x0_all.shape, generator=gen)
    total, count = 0.0, 0
    for j, u in enumerate(EVAL_US):
        for i in range(0, x0_all.shape[0], batch):
            x0, cond = x0_all[i : i + batch], cond_all[i : i + batch]
            s = shifted(torch.full((x0.shape[0],), u))
            hidden, t, text, image, target = model_inputs(x0, cond, noise_all[j, i : i + batch], s)
            pred = dit(hidden, t, text, encoder_hidden_states_image=image, return_dict=False)[0]
            total += float((pred.float() - target).pow(2).mean()) * x0.shape[0]
            count += x0.shape[0]
    dit.train(was)
    return total / count


def continue_base(
    out: Path,
    pool: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    seed: int,
    max_steps: int,
    eval_every: int = 100,
    window: int = 600,
    min_gain: float = 0.01,
    log=print,
) -> dict:
    """Train from the shipped toy DiT; writes ``out/dit.safetensors`` (diffusers names, the
    best-validation weights) and ``out/base_curve.json``; returns the curve record. Resumes
    from ``out/ckpt.pt`` (step-exact: the batch draw is a function of (seed, step); the best
    weights so far are in the checkpoint too), so raising ``max_steps`` of a finished run
    continues it to the same weights a longer run from scratch would reach."""
    out.mkdir(parents=True, exist_ok=True)
    curve_path = out / "base_curve.json"
    if (out / "dit.safetensors").is_file() and curve_path.is_file():
        done = json.loads(curve_path.read_text())
        if finished(done, max_steps):
            return done
    from erft_data import dedupe_constant_rows

    dit = load_toy_dit(TOY_DIT).train()
    dedupe_constant_rows(dit)  # exact speed-up (constant toy context)
    for p in dit.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-4, weight_decay=0.01)
    ckpt = out / "ckpt.pt"
    step, curve, cpu, best_state = 0, [], 0.0, None
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=True)
        dit.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, cpu = int(st["step"]), float(st["cpu"])
        curve = json.loads(st["curve"])
        if step > max_steps:
            raise ValueError(f"{ckpt} is at step {step}, past max_steps {max_steps}: its "
                             "weights are not those of a shorter run; use another folder")  # fmt: skip
        best_state = st.get("best")
        best = min(c["val"] for c in curve)
        if best_state is None and curve[-1]["val"] > best:
            log(f"warning: {ckpt} predates saved best weights; the best (val {best:.5f}) is "
                f"lost, the weights of step {step} stand in for it")  # fmt: skip
        log(f"base: resumed at step {step} (best val {best:.5f}), continuing to {max_steps}")
    else:
        curve.append({"step": 0, "val": val_loss(dit, val), "cpu_s": 0.0})
        log(f"base: shipped toy DiT, one-clip val loss {curve[-1]['val']:.5f}")
    best = min(c["val"] for c in curve)
    if best_state is None:
        best_state = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    n = pool["x0"].shape[0]
    bs = 8
    c0 = time.process_time()
    stopped = "flattened" if _flat(curve, window, min_gain) else "max_steps"
    while step < max_steps and stopped == "max_steps":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, n, (bs,), generator=gen)
        noise = torch.randn(pool["x0"][idx].shape, generator=gen)
        s = shifted(1.0 - torch.rand(bs, generator=gen))
        hidden, t, text, image, target = model_inputs(
            pool["x0"][idx].float(), pool["cond"][idx].float(), noise, s
        )
        for g in opt.param_groups:
            g["lr"] = 3e-4 * min(1.0, (step + 1) / 50)
        pred = dit(hidden, t, text, encoder_hidden_states_image=image, return_dict=False)[0]
        loss = (pred.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        step += 1
        if step % eval_every == 0 or step == max_steps:
            v = val_loss(dit, val)
            spent = cpu + time.process_time() - c0
            curve.append({"step": step, "val": v, "train": float(loss.detach()), "cpu_s": spent})
            if v < best:
                best = v
                best_state = {k: t_.detach().clone() for k, t_ in dit.state_dict().items()}
            log(f"base step {step}: val {v:.5f} (best {best:.5f}), {spent / 60:.1f} CPU min")
            part = ckpt.with_suffix(".part")  # written whole, then renamed: a kill mid-write
            torch.save(                        # leaves the previous checkpoint intact
                {"model": dit.state_dict(), "opt": opt.state_dict(), "step": step,
                 "cpu": spent, "curve": json.dumps(curve), "best": best_state},
                part,
            )  # fmt: skip
            os.replace(part, ckpt)
            if _flat(curve, window, min_gain):
                stopped = "flattened"
                break
    record = {
        "curve": curve,
        "stopped": stopped,
        "best_val": best,
        "shipped_val": curve[0]["val"],
        "steps": step,
        "cpu_s": curve[-1]["cpu_s"],
        "pool_clips": n,
        "rule": f"stop when the best val loss of the last {window} steps is < {min_gain:.0%} "
        "below the best before them",
    }
    save_file({k: v.contiguous() for k, v in best_state.items()}, str(out / "dit.safetensors"))
    curve_path.write_text(json.dumps(record, indent=1))
    return record


def finished(record: dict, max_steps: int) -> bool:
    """Whether a base record (:func:`continue_base`'s) is final for a cap of ``max_steps``: it
    flattened, or it already ran that many steps."""
    return record["stopped"] == "flattened" or record["steps"] >= max_steps


def _flat(curve: list[dict], window: int, min_gain: float) -> bool:
    last = curve[-1]["step"]
    if last < 2 * window:
        return False
    before = min(c["val"] for c in curve if c["step"] <= last - window)
    recent = min(c["val"] for c in curve if c["step"] > last - window)
    return recent > before * (1.0 - min_gain)


def export_base(src: Path, dst_dir: Path) -> Path:
    """Write the continued base in the official Wan format (``toy_wan_dit.safetensors`` +
    ``toy_wan_dit.json``, float16 like the shipped file) into ``dst_dir``; returns the file."""
    from export import official_dit_config
    from pretrain import DIT_CONFIG

    from svi_core.checkpoints import diffusers_dit_to_official

    dst_dir.mkdir(parents=True, exist_ok=True)
    target = dst_dir / "toy_wan_dit.safetensors"
    off = diffusers_dit_to_official(load_file(str(src)))
    save_file({k: v.half().contiguous() for k, v in off.items()}, str(target))
    target.with_suffix(".json").write_text(json.dumps(official_dit_config(DIT_CONFIG), indent=1))
    return target


def plot_curve(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = record["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([x["step"] for x in c], [x["val"] for x in c], marker="o", ms=3, label="validation")
    tr = [x for x in c if "train" in x]
    if tr:
        ax.plot([x["step"] for x in tr], [x["train"] for x in tr], alpha=0.4, label="train batch")
    ax.set_xlabel("continuation step (batch 8); step 0 = shipped toy base")
    ax.set_ylabel("one-clip flow-matching MSE")
    ax.set_title(f"base: {record['stopped']} after {record['steps']} steps, "
                 f"{record['cpu_s'] / 60:.0f} CPU min")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
