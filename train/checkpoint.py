"""Training checkpoints: write one atomically, find the one to resume, check it, load it back.

A checkpoint is a folder ``<output_dir>/checkpoints/step_XXXXXXX`` holding
``lora.safetensors`` (peft names, fp32), ``optimizer.rank{r}.pt`` (AdamW state, a tensor-only
``torch.save``), ``banks.rank{r}.safetensors`` (when ``save_banks`` and ERFT), ``rng.rank{r}.
safetensors`` (torch RNG states) and ``state.json`` (step, config fingerprint and values, world
size). ``checkpoints/latest`` names the newest.

What happens on resume (``resume = "latest"``): the checkpoint named by ``latest`` is checked
before any long work starts: every file present, every safetensors header complete, every
optimizer file a complete tensor-only archive, ``state.json`` parseable. A damaged one (a
truncated file after a crash or a full disk) is skipped with a warning naming the file, and the
newest complete older checkpoint is used instead; when none is complete the run stops with a
message saying what is damaged. An optimizer file that holds Python objects (a pickle) is never
a fallback case: it is refused with a clear error, since loading it could run code. A checkpoint
folder named explicitly (``resume = <folder>``) is used as given, or refused with the reason.

Every rank checks every rank's files (headers and archive indexes only, cheap), so all ranks
pick the same checkpoint without talking to each other.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from svi_core.errors import SVIError
from svi_core.log import logger

from .banks import ErrorBanks
from .config import ADDED_FIELDS, RUN_ONLY_FIELDS, TrainConfig
from .export import lora_state_dict


@dataclass(frozen=True)
class ResumePoint:
    """A checked checkpoint folder and its ``state.json`` contents."""

    folder: Path
    state: dict


class DamagedCheckpoint(Exception):
    """A checkpoint file is missing, truncated or unreadable (a fallback case, not a refusal)."""


def save_checkpoint(
    root: Path,
    step: int,
    config: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    banks: ErrorBanks,
    rank: int,
    world: int,
) -> Path:
    """Write ``root/step_XXXXXXX`` atomically (a temporary folder renamed when complete) and
    point ``root/latest`` at it; keep the newest ``config.keep_checkpoints``."""
    from safetensors.torch import save_file

    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(world)
    lora = lora_state_dict(model)  # every rank: gathering FSDP shards is collective
    if rank == 0:
        save_file({k: v.float() for k, v in lora.items()}, str(tmp / "lora.safetensors"))
    torch.save(optimizer.state_dict(), tmp / f"optimizer.rank{rank}.pt")
    if config.save_banks and config.erft_enabled:
        save_file(banks.state_dict(), str(tmp / f"banks.rank{rank}.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng.rank{rank}.safetensors"))
    _barrier(world)
    if rank == 0:
        state = {
            "step": step,
            "fingerprint": config.fingerprint(),
            "config": config.to_dict(),
            "world_size": world,
            "banks_saved": bool(config.save_banks and config.erft_enabled),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = root / "latest.tmp"
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, root / "latest")
        old = sorted(p for p in root.glob("step_*") if p.is_dir())
        for p in old[: max(0, len(old) - config.keep_checkpoints)]:
            shutil.rmtree(p, ignore_errors=True)
        logger.info("checkpoint '%s'", final)
    _barrier(world)
    return final


# ============================================================================================
# finding and checking the checkpoint to resume
# ============================================================================================


def find_resume(config: TrainConfig, root: Path, world: int) -> ResumePoint | None:
    """The checkpoint to resume from (checked), or None for a fresh start.

    ``resume = "latest"``: the folder named by ``root/latest``, else (damaged) the newest
    complete older ``step_*`` folder, with a warning; None when ``root`` has no checkpoint.
    ``resume = <folder>``: that folder, refused (SVIError) if damaged. Raises SVIError for a
    checkpoint of other settings or world size, and for an optimizer file holding a pickle.
    """
    if not config.resume:
        return None
    if config.resume != "latest":
        folder = Path(config.resume)
        try:
            state = check_checkpoint(folder)
        except DamagedCheckpoint as e:
            raise SVIError(
                f"resume checkpoint '{folder}' cannot be used: {e}. Pass a complete folder "
                "written by this trainer (output_dir/checkpoints/step_XXXXXXX) or resume='latest'"
            ) from None
        return ResumePoint(folder, _check_settings(config, folder, state, world))
    candidates = _candidates(root)
    if not candidates:
        logger.info("resume=latest: no checkpoint in '%s' yet; starting fresh", root)
        return None
    damaged: list[str] = []
    for folder in candidates:
        try:
            state = check_checkpoint(folder)
        except DamagedCheckpoint as e:
            damaged.append(f"'{folder.name}': {e}")
            logger.warning(
                "checkpoint '%s' is damaged (%s); trying the previous checkpoint", folder, e
            )
            continue
        if damaged:
            logger.warning(
                "resuming from the previous complete checkpoint '%s' (step %d) instead of the "
                "damaged newer one(s); the steps after it are trained again",
                folder,
                int(state["step"]),
            )
        return ResumePoint(folder, _check_settings(config, folder, state, world))
    raise SVIError(
        f"resume=latest: every checkpoint in '{root}' is damaged ({'; '.join(damaged)}). "
        "Nothing was loaded. Restore the files, or start over with resume='' (the damaged "
        "checkpoints folder is overwritten as training proceeds)."
    )


def _candidates(root: Path) -> list[Path]:
    """Checkpoint folders newest first: the one ``latest`` names, then every ``step_*``."""
    folders = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    pointer = root / "latest"
    named: Path | None = None
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name.startswith("step_") and (root / name).is_dir():
            named = root / name
        else:
            logger.warning(
                "'%s' names no checkpoint folder (%r); using the newest one", pointer, name
            )
    if named is None:
        return folders
    return [named] + [p for p in folders if p != named]


def check_checkpoint(folder: Path) -> dict:
    """``state.json`` of a complete checkpoint folder; raises :class:`DamagedCheckpoint` for a
    missing, truncated or unreadable file, SVIError for an optimizer file holding a pickle.
    Checks headers and archive indexes of every rank's files (cheap: no tensor is read)."""
    if not folder.is_dir():
        raise DamagedCheckpoint("not a folder")
    state_file = folder / "state.json"
    if not state_file.is_file():
        raise DamagedCheckpoint(
            "no state.json (pass a folder written by this trainer: "
            "output_dir/checkpoints/step_XXXXXXX)"
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["step"]), int(state["world_size"]), str(state["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"state.json unreadable ({type(e).__name__}: {e})") from None
    world = int(state["world_size"])
    files = [folder / "lora.safetensors"]
    for r in range(world):
        files.append(folder / f"rng.rank{r}.safetensors")
        if state.get("banks_saved"):
            files.append(folder / f"banks.rank{r}.safetensors")
    for f in files:
        check_safetensors(f)
    for r in range(world):
        check_torch_tensors(folder / f"optimizer.rank{r}.pt")
    return state


def check_safetensors(path: Path) -> None:
    """Raise :class:`DamagedCheckpoint` unless ``path`` is a complete safetensors file (its
    header parses and its data covers exactly the rest of the file)."""
    from safetensors import safe_open

    if not path.is_file():
        raise DamagedCheckpoint(f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error type for every header problem
        raise DamagedCheckpoint(f"{path.name} is truncated or corrupt ({e})") from None


def check_torch_tensors(path: Path) -> None:
    """Check a ``torch.save`` file of tensors without reading its tensors (memory-mapped,
    weights-only unpickling). Raises :class:`DamagedCheckpoint` for a missing, truncated or
    corrupt file and SVIError for one holding Python objects other than tensors (a pickle that
    could run code: never loaded)."""
    if not path.is_file():
        raise DamagedCheckpoint(f"{path.name} is missing")
    load_torch_tensors(path, mmap=True)


def load_torch_tensors(path: Path, mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` with the failures sorted out: a refusal (SVIError) for
    Python objects, :class:`DamagedCheckpoint` for anything else that fails."""
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with path.open("rb") as f:
            head = f.read(2)
        if head == b"PK":  # a torch archive cut short: its index (at the end) is missing
            raise DamagedCheckpoint(f"{path.name} is truncated (its archive index is missing)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise SVIError(
                f"checkpoint file '{path}' holds Python objects, not only tensors (a pickle); "
                "this trainer never writes such files and never loads them, since unpickling "
                "can run code. Delete the checkpoint folder (or resume from another one)."
            ) from None
        raise DamagedCheckpoint(f"{path.name} is corrupt ({e})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{path.name} is truncated or corrupt ({e})") from None


def _check_settings(config: TrainConfig, folder: Path, state: dict, world: int) -> dict:
    if state["fingerprint"] != config.fingerprint():
        theirs = {**ADDED_FIELDS, **state.get("config", {})}
        mine = config.to_dict()
        diff = sorted(
            k
            for k in set(mine) | set(theirs)
            if k not in RUN_ONLY_FIELDS and mine.get(k) != theirs.get(k)
        )
        shown = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {mine.get(k)!r}" for k in diff)
        raise SVIError(
            f"resume checkpoint '{folder}' was written by another training config ({shown}). "
            "Resume with the same settings, or start a new output_dir."
        )
    if state["world_size"] != world:
        raise SVIError(
            f"resume checkpoint '{folder}' was written by {state['world_size']} process(es); this "
            f"run has {world}. Error banks and optimizer state are per process: resume with "
            f"--nproc_per_node {state['world_size']}."
        )
    return state


# ============================================================================================
# loading
# ============================================================================================


def load_checkpoint(
    point: ResumePoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    banks: ErrorBanks,
    rank: int,
) -> int:
    """Load a checked checkpoint into ``model`` (LoRA parameters), ``optimizer``, ``banks``
    and the torch RNG; returns its step."""
    from safetensors.torch import load_file

    ckpt, state = point.folder, point.state
    lora = load_file(str(ckpt / "lora.safetensors"))
    model = getattr(model, "module", model)
    params = dict(model.named_parameters())
    own = {n for n in params if ".lora_A." in n or ".lora_B." in n}  # lora_state_dict's names
    missing = sorted(own - set(lora))
    extra = sorted(set(lora) - set(params))
    if missing or extra:
        raise SVIError(
            f"resume checkpoint '{ckpt}': LoRA parameters do not match the model (missing "
            f"{missing[:3]}, unexpected {extra[:3]})"
        )
    with torch.no_grad():
        for name, value in lora.items():
            p = params[name]
            value = value.to(p.device, p.dtype)
            if hasattr(p, "device_mesh"):  # FSDP2 shard: take this rank's part
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, p.device_mesh, p.placements)
            p.copy_(value)
    try:
        opt_state = load_torch_tensors(ckpt / f"optimizer.rank{rank}.pt")
    except DamagedCheckpoint as e:  # checked before; changed on disk since
        raise SVIError(f"resume checkpoint '{ckpt}': {e}") from None
    optimizer.load_state_dict(opt_state)
    bank_file = ckpt / f"banks.rank{rank}.safetensors"
    if state.get("banks_saved") and bank_file.is_file():
        banks.load_state_dict(load_file(str(bank_file)))
    elif state.get("config", {}).get("erft_enabled", True):
        logger.warning("checkpoint '%s' has no error banks; they refill from empty", ckpt)
    rng = load_file(str(ckpt / f"rng.rank{rank}.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return int(state["step"])


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
