"""Error banks of ERFT: the model's own one-step errors, stored per timestep cell, on the CPU.

Two banks (``noise`` holds ``E_noi``, ``video`` holds ``E_vid``), each with ``num_cells`` cells
(the 50 inference timesteps of the shift-5 schedule; an error goes to the nearest cell) of
capacity ``Z`` (500 officially). When a cell is full, the stored error with the smallest L2
distance to the new one is replaced (official ``l2_batch``), which keeps the cell diverse.

Storage cost: entries are stored in bfloat16 (``bank_dtype``), one per tensor, allocated as
they arrive. One Wan2.1 81-frame 480x832 latent error ``[16, 21, 60, 104]`` is 4.2 MB in bf16,
so a full official bank pair (2 banks x 50 cells x 500) is ~210 GB per process; a run of S
steps holds at most ``2 * S`` entries (8.4 MB per step at 480x832), e.g. 42 GB after 5000
steps. bf16 keeps 8 mantissa bits (relative error <= 0.4 %), far below the error magnitudes
recycled here; lower ``capacity`` (or ``num_frames``/size) is the lever when RAM is short.

Each entry is ``[16, T, h, w]`` (a NORMALISED-latent difference, batch dimension dropped).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from .erft import nearest_index, schedule_timesteps

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ErrorBank:
    """One bank: ``num_cells`` lists of at most ``capacity`` error tensors (CPU, ``dtype``)."""

    def __init__(self, num_cells: int, capacity: int, dtype: torch.dtype = torch.bfloat16):
        if num_cells < 1 or capacity < 1:
            raise ValueError(f"num_cells and capacity must be >= 1; got {num_cells}, {capacity}")
        self.num_cells = num_cells
        self.capacity = capacity
        self.dtype = dtype
        self.cells: list[list[torch.Tensor]] = [[] for _ in range(num_cells)]
        self.shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return sum(len(c) for c in self.cells)

    def _check_shape(self, error: torch.Tensor) -> None:
        if self.shape is None:
            self.shape = tuple(error.shape)
        elif tuple(error.shape) != self.shape:
            raise ValueError(
                f"error shape {tuple(error.shape)} differs from the bank's {self.shape}: every "
                "training sample must have the same frame count and size"
            )

    def add(self, cell: int, error: torch.Tensor) -> int:
        """Store ``error`` in ``cell``; returns the slot written. A full cell replaces the entry
        nearest (L2) to the new one, measured in float32 after rounding to the bank dtype."""
        self._check_shape(error)
        entry = error.detach().to("cpu", self.dtype).clone()
        slots = self.cells[cell]
        if len(slots) < self.capacity:
            slots.append(entry)
            return len(slots) - 1
        slot = self.nearest(cell, entry)
        slots[slot] = entry
        return slot

    def nearest(self, cell: int, error: torch.Tensor, chunk: int = 16) -> int:
        """Slot in ``cell`` whose entry has the smallest L2 distance to ``error`` (chunked so a
        full cell is never stacked at once)."""
        new = error.float().flatten()
        best, best_slot = float("inf"), 0
        slots = self.cells[cell]
        for start in range(0, len(slots), chunk):
            block = torch.stack([e.flatten() for e in slots[start : start + chunk]]).float()
            dist = torch.linalg.vector_norm(block - new, dim=1)
            i = int(torch.argmin(dist))
            if float(dist[i]) < best:
                best, best_slot = float(dist[i]), start + i
        return best_slot

    def sample(self, cell: int, rng: random.Random) -> torch.Tensor | None:
        """A uniformly drawn entry of ``cell`` (or None if empty)."""
        slots = self.cells[cell]
        return rng.choice(slots) if slots else None

    def sample_any(self, rng: random.Random) -> torch.Tensor | None:
        """An entry drawn uniformly over ALL stored entries of all cells (or None)."""
        n = len(self)
        if n == 0:
            return None
        k = rng.randrange(n)
        for c in self.cells:
            if k < len(c):
                return c[k]
            k -= len(c)
        raise AssertionError("unreachable")

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{f"{prefix}.{cell}": [n, *shape]}`` for every non-empty cell (bank dtype)."""
        return {f"{prefix}.{i}": torch.stack(c) for i, c in enumerate(self.cells) if c}

    def load_state_dict(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        self.cells = [[] for _ in range(self.num_cells)]
        self.shape = None
        for key, stacked in state.items():
            if not key.startswith(prefix + "."):
                continue
            cell = int(key[len(prefix) + 1 :])
            if not 0 <= cell < self.num_cells or stacked.shape[0] > self.capacity:
                raise ValueError(
                    f"bank entry {key!r} ({stacked.shape[0]} errors) does not fit a bank of "
                    f"{self.num_cells} cells x {self.capacity}"
                )
            for e in stacked:
                self._check_shape(e)
                self.cells[cell].append(e.to(self.dtype).clone())


class ErrorBanks:
    """The two ERFT banks over one timestep grid (the ``num_cells`` inference timesteps)."""

    def __init__(
        self, num_cells: int = 50, capacity: int = 500, shift: float = 5.0, dtype: str = "bf16"
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"bank dtype must be one of {sorted(_DTYPES)}; got {dtype!r}")
        self.grid = schedule_timesteps(num_cells, shift)
        self.noise = ErrorBank(num_cells, capacity, _DTYPES[dtype])
        self.video = ErrorBank(num_cells, capacity, _DTYPES[dtype])

    def cell(self, t: float) -> int:
        """Nearest inference-timestep cell of DiT timestep ``t`` (0..1000)."""
        return nearest_index(self.grid, t)

    def add(self, e_noi: torch.Tensor, e_vid: torch.Tensor, t: float) -> None:
        """Store one step's errors (``[16, T, h, w]`` or ``[1, 16, T, h, w]``) at timestep t."""
        c = self.cell(t)
        self.noise.add(c, _unbatch(e_noi))
        self.video.add(c, _unbatch(e_vid))

    def has(self, t: float) -> bool:
        return bool(self.noise.cells[self.cell(t)])

    def __len__(self) -> int:
        return len(self.noise)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.noise.state_dict("noise"), **self.video.state_dict("video")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.noise.load_state_dict(state, "noise")
        self.video.load_state_dict(state, "video")

    def counts(self) -> Iterator[tuple[int, int]]:
        """(noise, video) entry counts per cell."""
        for a, b in zip(self.noise.cells, self.video.cells, strict=True):
            yield len(a), len(b)


def _unbatch(e: torch.Tensor) -> torch.Tensor:
    if e.ndim == 5:
        if e.shape[0] != 1:
            raise ValueError(f"one error at a time; got batch {e.shape[0]}")
        return e[0]
    return e


def gather_errors(
    e_noi: torch.Tensor, e_vid: torch.Tensor, t: float
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """All ranks' ``(E_noi, E_vid, t)`` when torch.distributed is initialised with > 1 process
    (used for the first ``bank_warmup_iters`` steps), else just this rank's. Errors are sent in
    their own dtype and device (gloo: CPU, nccl: GPU) and returned on the CPU."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [(e_noi, e_vid, t)]
    world = dist.get_world_size()
    noi, vid = e_noi.contiguous(), e_vid.contiguous()
    tt = torch.tensor([t], dtype=torch.float64, device=noi.device)
    gn = [torch.empty_like(noi) for _ in range(world)]
    gv = [torch.empty_like(vid) for _ in range(world)]
    gt = [torch.empty_like(tt) for _ in range(world)]
    dist.all_gather(gn, noi)
    dist.all_gather(gv, vid)
    dist.all_gather(gt, tt)
    return [(a.cpu(), b.cpu(), float(c.item())) for a, b, c in zip(gn, gv, gt, strict=True)]
