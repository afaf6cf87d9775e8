"""Does error recycling cut drift? The toy-world ERFT study, one command (CPU, seeded).

    nice python experiments/toyworld/erft_study.py --seed 0 --work /tmp/erft_study [--skip-pretrain]

Phases (each resumable: rerunning skips finished units; every unit records its CPU time):

1. base: the shipped toy DiT continued on fresh toy clips until its one-clip validation loss
   flattens or ``--base-steps`` pass (``erft_base.py``; curve and CPU time recorded). Raising
   ``--base-steps`` in a finished folder continues the base step-exactly and moves what was
   made from the old base to ``superseded_base<N>/``. ``--skip-pretrain`` uses the continued
   base cached in ``--work`` if there is one, else the shipped base as it is.
2. data: ``lora_steps x grad_accum`` fresh training videos, each used once (lossless .mkv, one
   fresh scene each), encoded into the trainer's cache once for all runs.
3. LoRAs: ERFT and plain (``erft_enabled=False``) through the real trainer ``train.loop.train``:
   same steps, effective batch (gradient accumulation), seed and data order; each at every
   learning rate of ``--lrs``.
4. validation: rollouts on ``VAL_SCENES`` (never the test scenes); per arm, the learning rate
   with the lowest appearance error to the truth (``truth_colour_w1``, mean over the second
   half of the validation clips) is kept.
5. test: base, plain and ERFT rolled out from ``--scenes`` held-out test scenes x ``--clips``
   clips through the real clip loop (mode ``tom``, same seeds); drift vs clip 1 and error to
   the world's true continuation per clip; DiT calls probed on the first ``--probe-scenes``.
6. why: the errors stored in the ERFT banks against the errors the base really makes in its
   rollouts (``erft_why.py``).
7. ablations (only if ERFT meets the targets, or ``--ablations yes``): ERFT without each
   injection (noise / latent / condition), same lr, tested the same way.
   ``--error-scales 3``: ERFT with its injected errors multiplied by each factor
   (``TrainConfig.error_scale``; 1 officially), same lr, tested the same way: does giving the
   banks' errors the size a long rollout really meets (see 6) help?
   ``--lora-seeds 1``: ERFT and plain retrained with each other training seed (LoRA init, data
   order, injection draws; same data, lrs and test seeds) and tested the same way: is the
   ERFT − plain difference larger than the spread between training runs?
8. report: ``RESULTS.md`` + plots in ``--out`` (tables with 95 % bootstrap intervals over
   scenes, paired differences, how far the rollouts still tell their scenes apart
   (``erft_rollout.scene_spread``), CPU time per phase).

``--stop-after PHASE`` ends after a phase (a long study spread over sessions; rerun to go on).

Deterministic: the same ``--seed`` gives the same numbers on the same machine (torch on one
thread per process). ``--reduced`` runs a tiny configuration of every phase (minutes), used to
check that property.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

ARMS = ("base", "plain", "erft")


@dataclass(frozen=True)
class Study:
    """Every setting of one study (written to ``work/study.json``)."""

    seed: int = 0
    scenes: int = 16
    clips: int = 50
    val_scenes: int = 4
    val_clips: int = 20
    sample_steps: int = 10
    lora_steps: int = 500
    grad_accum: int = 4
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    rank: int = 16
    bank_capacity: int = 500
    base_steps: int = 12000
    base_pool: int = 2000
    base_eval_every: int = 200
    base_window: int = 800
    probe_scenes: int = 4
    ablations: str = "auto"
    error_scales: tuple[float, ...] = ()
    lora_seeds: tuple[int, ...] = ()

    @classmethod
    def reduced(cls, seed: int) -> Study:
        return cls(seed=seed, scenes=2, clips=3, val_scenes=2, val_clips=3, lora_steps=10,
                   grad_accum=2, lrs=(3e-4,), base_steps=20, base_pool=32, base_eval_every=10,
                   base_window=10, probe_scenes=1, ablations="no")  # fmt: skip


# CPU seconds per unit of work on the development machine (one thread), for the estimate
# printed at the start; the results report what was really spent.
RATE = {"encode": 0.45, "video": 0.15, "base_step": 0.55, "base_eval": 20.0,
        "lora_sample": 0.15, "clip": 2.4}  # fmt: skip


def estimate_cpu_s(st: Study, skip_pretrain: bool) -> dict[str, float]:
    """Expected CPU seconds per phase (rough: :data:`RATE`)."""
    n = st.lora_steps * st.grad_accum
    arms = 2 * len(st.lrs)
    est = {
        "base": 64 * RATE["encode"]
        + (0 if skip_pretrain else st.base_pool * RATE["encode"] + st.base_steps
           * RATE["base_step"] + st.base_steps / st.base_eval_every * RATE["base_eval"]),
        "data": n * (RATE["encode"] + RATE["video"]),
        "loras": arms * n * RATE["lora_sample"],
        "validation": (1 + arms) * st.val_scenes * st.val_clips * RATE["clip"],
        "test": 3 * st.scenes * st.clips * RATE["clip"],
        "why": st.probe_scenes * st.clips * 1.5,
    }  # fmt: skip
    est["total"] = sum(est.values())
    return est


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# ------------------------------------------------------------------------------------ base


def phase_base(work: Path, st: Study, skip: bool) -> tuple[Path, dict]:
    """The base DiT file for this study and its record (curve, CPU time)."""
    import erft_base
    import erft_data
    from safetensors.torch import load_file, save_file

    from svi_core.toy.models import TOY_DIT, load_toy_vae

    bdir = work / "base"
    bdir.mkdir(parents=True, exist_ok=True)
    exported = bdir / "official" / "toy_wan_dit.safetensors"
    rec_path = bdir / "record.json"
    prev = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    if prev and (exported.is_file() or skip):
        if skip or erft_base.finished(prev, st.base_steps):
            return Path(prev["dit"]), prev
    from erft_rollout import cpu_seconds

    c0 = cpu_seconds()
    vae = load_toy_vae()
    val_path = bdir / "val.safetensors"
    if not val_path.is_file():
        import numpy as np

        rng = np.random.default_rng([st.seed, 7])
        clips = [(s, int(rng.integers(0, erft_data.MAX_START))) for s in erft_data.BASE_VAL_SCENES]
        save_file(erft_data.encode_clips_cached(vae, clips, bdir / "val_chunks", log),
                  str(val_path))  # fmt: skip
    val = load_file(str(val_path))
    if skip:
        from svi_core.toy.models import load_toy_dit

        dit = load_toy_dit(TOY_DIT)
        erft_data.dedupe_constant_rows(dit)
        v = erft_base.val_loss(dit, val)
        rec = {"dit": str(TOY_DIT), "skipped": True, "shipped_val": v,
               "cpu_s": cpu_seconds() - c0}  # fmt: skip
        log(f"base: --skip-pretrain, shipped toy base (one-clip val loss {v:.5f})")
        rec_path.write_text(json.dumps(rec, indent=1))
        return TOY_DIT, rec
    pool_path = bdir / "pool.safetensors"
    if not pool_path.is_file():
        clips = erft_data.fresh_scenes(st.seed, "base", st.base_pool)
        save_file(erft_data.encode_clips_cached(vae, clips, bdir / "pool_chunks", log),
                  str(pool_path))  # fmt: skip
    encode_cpu = prev.get("encode_cpu_s", 0.0) + cpu_seconds() - c0  # kept when continued
    record = erft_base.continue_base(
        bdir / "train", load_file(str(pool_path)), val, st.seed, st.base_steps,
        eval_every=st.base_eval_every, window=st.base_window, log=log,
    )  # fmt: skip
    path = erft_base.export_base(bdir / "train" / "dit.safetensors", exported.parent)
    erft_base.plot_curve(record, bdir / "base_curve.png")
    rec = {**record, "dit": str(path), "skipped": False, "encode_cpu_s": encode_cpu,
           "cpu_s": encode_cpu + record["cpu_s"]}  # fmt: skip
    rec_path.write_text(json.dumps(rec, indent=1))
    return path, rec


# ------------------------------------------------------------------------------------ data


def lora_config(work: Path, st: Study, name: str, lr: float, erft: bool, **extra):
    from svi_core.toy.models import TOY_FRAMES, TOY_HEIGHT, TOY_WIDTH
    from train.config import preset

    return preset(
        "film",  # zero padding; m = 1 as the rollouts' mode tom
        num_motion_frames=1,
        dataset=str(work / "dataset"),
        output_dir=str(work / "loras" / name),
        cache_dir=str(work / "train_cache"),
        num_frames=TOY_FRAMES,
        height=TOY_HEIGHT,
        width=TOY_WIDTH,
        crop_jitter=1000,  # no crop: the toy world is the data distribution itself
        augment_draws=1,
        context_file=str(work / "toy_context.safetensors"),
        lora_rank=st.rank,
        lora_alpha=float(st.rank),
        learning_rate=lr,
        gradient_accumulation=st.grad_accum,
        max_steps=st.lora_steps,
        precision="fp32",
        gradient_checkpointing=False,
        seed=extra.pop("seed", st.seed),
        erft_enabled=erft,
        bank_capacity=st.bank_capacity,
        checkpoint_every=max(st.lora_steps // 2, 1),
        save_banks=True,
        log_every=50,
        export_dtype="fp32",
        export_name=f"toy-{name}",
        **extra,
    )


def phase_data(work: Path, st: Study) -> dict:
    """Write the fresh training videos and fill the trainer's cache (batched encodes)."""
    import erft_data
    from erft_rollout import cpu_seconds
    from safetensors.torch import save_file

    from svi_core.toy.models import IMAGE_SHAPE, TEXT_SHAPE, TOY_VAE, load_toy_vae
    from train.cache import Encoders, build_cache
    from train.data import list_videos

    done = work / "dataset.json"
    if done.is_file():
        return json.loads(done.read_text())
    c0 = cpu_seconds()
    n = st.lora_steps * st.grad_accum
    clips = erft_data.fresh_scenes(st.seed, "lora", n)
    erft_data.write_dataset(work / "dataset", clips, log)
    save_file({"context": torch.zeros(TEXT_SHAPE[1:]), "clip_fea": torch.zeros(IMAGE_SHAPE[1:])},
              str(work / "toy_context.safetensors"))  # fmt: skip
    vae = load_toy_vae()
    lookup = erft_data.LatentLookup(vae)
    cfg = lora_config(work, st, "cache", 1e-4, True)
    lat = erft_data.encode_clips_cached(vae, clips, work / "dataset_latents", log)
    for i, (s, t) in enumerate(clips):
        v = erft_data.render(s, t)
        lookup.put(erft_data.pixels(v), lat["x0"][i : i + 1])
        lookup.put(erft_data.cond_pixels(v[0]), lat["cond"][i : i + 1])
    enc = Encoders(encode_video=lookup, video_id=erft_data.vae_identity(TOY_VAE))
    samples, skipped = build_cache(cfg, list_videos(cfg.dataset), enc)
    rec = {"videos": n, "samples": len(samples), "skipped": skipped, "lookup_hits": lookup.hits,
           "lookup_misses": lookup.misses, "cpu_s": cpu_seconds() - c0}  # fmt: skip
    log(f"data: {rec}")
    done.write_text(json.dumps(rec, indent=1))
    return rec


# ----------------------------------------------------------------------------------- LoRAs


def train_lora(work: Path, st: Study, base: Path, name: str, lr: float, erft: bool,
               **extra) -> Path:  # fmt: skip
    """Train (or reuse) one LoRA; its CPU time goes to ``loras/<name>/cpu.json``."""
    import erft_data
    from erft_rollout import cpu_seconds

    from svi_core.toy.models import TOY_VAE, load_toy_dit
    from train.cache import Encoders
    from train.loop import TrainModels, train

    cfg = lora_config(work, st, name, lr, erft, **extra)
    target = cfg.export_file
    if target.is_file() and (cfg.out / "cpu.json").is_file():
        return target
    c0 = cpu_seconds()
    log(f"training LoRA {name} (lr {lr:g}, {'ERFT' if erft else 'plain'} {extra or ''})")
    enc = Encoders(encode_video=None, video_id=erft_data.vae_identity(TOY_VAE))
    dit = load_toy_dit(base)
    erft_data.dedupe_constant_rows(dit)  # exact speed-up (constant toy context)
    path = train(cfg.replace(resume="latest"), TrainModels(transformer=dit, encoders=enc))
    (cfg.out / "cpu.json").write_text(json.dumps({"cpu_s": cpu_seconds() - c0}))
    return Path(path)


def lora_name(arm: str, lr: float) -> str:
    return f"{arm}_lr{lr:g}"


# -------------------------------------------------------------------------------- rollouts


def run_units(units: list[dict], jobs: int) -> list[dict]:
    """Run rollout units (dicts of :func:`erft_rollout.rollout` arguments), ``jobs`` at a time
    in separate processes (each on one thread); results in input order."""
    if jobs <= 1:
        return [_unit(u) for u in units]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(jobs, initializer=_init_worker) as pool:
        return pool.map(_unit, units, chunksize=1)


def _init_worker() -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))


def _unit(u: dict) -> dict:
    from erft_rollout import rollout

    r = rollout(Path(u["folder"]), u["scene"], u["clips"], Path(u["dit"]),
                None if u["lora"] is None else Path(u["lora"]), u["steps"], u["probe"])  # fmt: skip
    log(f"rollout {u['folder']}: {u['clips']} clips, {r['cpu_s']:.0f} CPU s")
    return r


def rollouts(work: Path, split: str, arm: str, dit: Path, lora: Path | None, scenes, clips: int,
             st: Study, jobs: int, probe_first: int = 0) -> list[dict]:  # fmt: skip
    units = [
        {"folder": str(work / "rollouts" / split / arm / f"scene{s}"), "scene": s, "clips": clips,
         "dit": str(dit), "lora": None if lora is None else str(lora), "steps": st.sample_steps,
         "probe": i < probe_first}
        for i, s in enumerate(scenes)
    ]  # fmt: skip
    return run_units(units, jobs)


def select_lr(val: dict[str, list[dict]], st: Study) -> tuple[float, dict[str, float]]:
    """The lr whose validation rollouts have the lowest mean ``truth_colour_w1`` over the second
    half of the clips; returns (lr, score per lr)."""
    import numpy as np

    scores = {}
    for key, res in val.items():
        half = st.val_clips // 2
        scores[key] = float(np.mean([[c["truth_colour_w1"] for c in r["per_clip"][half:]]
                                     for r in res]))  # fmt: skip
    best = min(scores, key=scores.get)
    return float(best), scores


# settings that only add units: changing them keeps everything
ADDITIVE = ("ablations", "error_scales", "lora_seeds")


def supersede_base(work: Path, old: dict, cur: dict) -> None:
    """Accept a changed configuration only when it changes :data:`ADDITIVE` settings (nothing
    moves) or raises ``base_steps`` above where the cached base stopped at its cap: the base
    then continues step-exactly, and everything trained or rolled out on the old base
    (``loras``, ``rollouts``, ``results``, the error analysis' ``why*.json``) moves to
    ``work/superseded_base<steps>/``; the data and caches stay. Anything else: SystemExit."""
    changed = sorted(k for k in set(old) | set(cur) if old.get(k) != cur.get(k))
    changed = [k for k in changed if k not in ADDITIVE]
    if not changed:
        return
    rec_path = work / "base" / "record.json"
    rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    if changed != ["base_steps"] or not (
        cur["base_steps"] > old["base_steps"] and rec.get("stopped", "max_steps") == "max_steps"
    ):
        raise SystemExit(
            f"{work / 'study.json'} holds another configuration ({', '.join(changed)} differ); "
            "use another --work (only raising --base-steps of a base that stopped at its cap "
            "continues in the same folder)"
        )
    archive = work / f"superseded_base{old['base_steps']}"
    for name in ("loras", "rollouts", "results", "why.json", "why_cpu.json"):
        if (work / name).exists():
            archive.mkdir(exist_ok=True)
            if (archive / name).exists():
                raise SystemExit(f"{archive / name} exists already; move it away and rerun")
            (work / name).rename(archive / name)
    log(f"base_steps {old['base_steps']} -> {cur['base_steps']}: the base continues; LoRAs, "
        f"rollouts and results of the old base moved to {archive}")  # fmt: skip


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/erft_study"))
    p.add_argument("--out", type=Path, default=None, help="results folder (default WORK/results)")
    p.add_argument(
        "--skip-pretrain",
        action="store_true",
        help="no base continuation: the cached continued base, else the shipped one",
    )
    p.add_argument("--reduced", action="store_true", help="tiny configuration (determinism check)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="rollout processes at once (2 only when the machine is idle)",
    )
    p.add_argument("--ablations", choices=("auto", "yes", "no"), default=None)
    p.add_argument(
        "--error-scales",
        type=float,
        nargs="+",
        default=None,
        help="also train and test ERFT with its injected errors scaled by each factor",
    )
    p.add_argument(
        "--lora-seeds",
        type=int,
        nargs="+",
        default=None,
        help="also retrain ERFT and plain with each of these training seeds and test them",
    )
    p.add_argument("--scenes", type=int, default=None)
    p.add_argument(
        "--stop-after",
        choices=("base", "data", "loras", "validation"),
        default=None,
        help="end after this phase (to spread the study over sessions; rerun to go on)",
    )
    p.add_argument(
        "--base-steps",
        type=int,
        default=None,
        help="cap of the base continuation (raising it continues a finished base step-exactly)",
    )
    p.add_argument("--clips", type=int, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    st = Study.reduced(a.seed) if a.reduced else Study(seed=a.seed)
    over = {k: tuple(v) if isinstance(v, list) else v
            for k, v in (("ablations", a.ablations), ("scenes", a.scenes), ("clips", a.clips),
                         ("base_steps", a.base_steps), ("error_scales", a.error_scales),
                         ("lora_seeds", a.lora_seeds)) if v is not None}  # fmt: skip
    if over:
        st = Study(**{**asdict(st), **over})
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "study.json"
    # as study.json holds it (tuples become lists); a setting missing from an older study.json
    # reads as changed, which supersede_base accepts for ADDITIVE ones
    cur = json.loads(json.dumps({**asdict(st), "skip_pretrain": a.skip_pretrain}))
    old = json.loads(saved.read_text()) if saved.is_file() else cur
    if old != cur:
        supersede_base(work, old, cur)
    saved.write_text(json.dumps(cur, indent=1))
    out = a.out or work / "results"
    out.mkdir(parents=True, exist_ok=True)

    import erft_data

    est = estimate_cpu_s(st, a.skip_pretrain)
    log(
        "estimated CPU time (one thread): "
        + ", ".join(f"{k} {v / 60:.0f} min" for k, v in est.items())
        + " (ablations, if run: about as much again as one arm's training + test rollouts)"
    )
    base, base_rec = phase_base(work, st, a.skip_pretrain)
    if a.stop_after == "base":
        log(f"stopped after the base ({base_rec.get('steps', 0)} steps, {base_rec.get('stopped')})")
        return 0
    data_rec = phase_data(work, st)
    if a.stop_after == "data":
        return 0
    loras: dict[str, Path] = {}
    for arm, erft in (("erft", True), ("plain", False)):
        for lr in st.lrs:
            loras[lora_name(arm, lr)] = train_lora(work, st, base, lora_name(arm, lr), lr, erft)

    if a.stop_after == "loras":
        return 0
    val_scenes = erft_data.VAL_SCENES[: st.val_scenes]
    val = {"base": rollouts(work, "val", "base", base, None, val_scenes, st.val_clips, st, a.jobs)}
    chosen: dict[str, float] = {}
    val_scores: dict[str, dict[str, float]] = {}
    for arm in ("erft", "plain"):
        per_lr = {}
        for lr in st.lrs:
            name = lora_name(arm, lr)
            val[name] = rollouts(work, "val", name, base, loras[name], val_scenes, st.val_clips,
                                 st, a.jobs)  # fmt: skip
            per_lr[f"{lr:g}"] = val[name]
        chosen[arm], val_scores[arm] = select_lr(per_lr, st)
        log(f"validation: {arm} lr {chosen[arm]:g} ({val_scores[arm]})")

    if a.stop_after == "validation":
        return 0
    test_scenes = erft_data.TEST_SCENES[: st.scenes]
    arm_lora = {"base": None, "plain": loras[lora_name("plain", chosen["plain"])],
                "erft": loras[lora_name("erft", chosen["erft"])]}  # fmt: skip
    test = {arm: rollouts(work, "test", arm, base, arm_lora[arm], test_scenes, st.clips, st,
                          a.jobs, st.probe_scenes) for arm in ARMS}  # fmt: skip

    import erft_report
    import erft_why

    verdict = erft_report.targets(test, st.clips)
    ablation_res: dict[str, list[dict]] = {}
    folders = {arm: arm for arm in ARMS}  # label of each test run -> its rollouts/test folder
    if st.ablations == "yes" or (st.ablations == "auto" and verdict["met"]):
        lr = chosen["erft"]
        for inj in ("noise", "latent", "condition"):
            name = f"erft_no_{inj}_lr{lr:g}"
            lp = train_lora(work, st, base, name, lr, True, **{f"{inj}_prob": 0.0})
            folders[f"ERFT without {inj}"] = name
            ablation_res[f"ERFT without {inj}"] = rollouts(work, "test", name, base, lp,
                                                           test_scenes, st.clips, st, a.jobs)  # fmt: skip
    scaled: dict[str, list[dict]] = {}
    for scale in st.error_scales:
        name = f"erft_scale{scale:g}_lr{chosen['erft']:g}"
        lp = train_lora(work, st, base, name, chosen["erft"], True, error_scale=scale)
        label = f"ERFT, errors x{scale:g}"
        folders[label] = name
        scaled[label] = rollouts(work, "test", name, base, lp, test_scenes, st.clips, st, a.jobs)
    replicates: dict[int, dict[str, list[dict]]] = {}
    for seed in st.lora_seeds:
        replicates[seed] = {}
        for arm, erft in (("erft", True), ("plain", False)):
            name = f"{arm}_seed{seed}_lr{chosen[arm]:g}"
            lp = train_lora(work, st, base, name, chosen[arm], erft, seed=seed)
            folders[f"{arm} seed {seed}"] = name
            replicates[seed][arm] = rollouts(work, "test", name, base, lp, test_scenes, st.clips,
                                             st, a.jobs)  # fmt: skip
    bank_file = (work / "loras" / lora_name("erft", chosen["erft"]) / "checkpoints"
                 / f"step_{st.lora_steps:07d}" / "banks.rank0.safetensors")  # fmt: skip
    why = erft_why.analyse(work, bank_file, test, st, out)
    import erft_rollout

    spread = {label: erft_rollout.scene_spread(
        [work / "rollouts" / "test" / folder / f"scene{s}" for s in test_scenes],
        list(test_scenes), erft_report.checkpoints(st.clips))
        for label, folder in folders.items()}  # fmt: skip
    ledger = erft_report.ledger(work, st, base_rec, data_rec, loras, val, test, ablation_res,
                                scaled, replicates)  # fmt: skip
    erft_report.write(out, st, base_rec, data_rec, chosen, val_scores, test, ablation_res,
                      verdict, why, ledger, scaled, spread, replicates)  # fmt: skip
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
