"""Error banks of ERFT: the model's own one-step errors, stored per timestep cell, on the CPU.

Two banks (``noise`` holds ``E_noi``, ``video`` holds ``E_vid``), each with ``num_cells`` cells
(the 50 inference timesteps of the shift-5 schedule; an error goes to the nearest cell) of
capacity ``Z`` (500 officially). When a cell is full, the stored error with the smallest L2
distance to the new one is replaced (official ``l2_batch``), which keeps the cell diverse.

Storage cost: entries are stored in bfloat16 (``bank_dtype``) as rows of one matrix per cell,
grown by doubling as they arrive (so at most 2x what is stored, never the full capacity
up front). One Wan2.1 81-frame 480x832 latent error ``[16, 21, 60, 104]`` is 4.2 MB in bf16,
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


class _Cell:
    """One cell: entries as rows of a contiguous ``[rows, numel]`` matrix (grown by doubling up
    to the capacity) plus their float32 squared norms, for a fast nearest-entry search."""

    def __init__(self, numel: int, dtype: torch.dtype):
        self.data = torch.empty(0, numel, dtype=dtype)
        self.norms = torch.empty(0, dtype=torch.float32)
        self.count = 0

    def append(self, row: torch.Tensor, norm: float, capacity: int) -> int:
        if self.count == self.data.shape[0]:
            rows = min(capacity, max(8, 2 * self.data.shape[0]))
            data = torch.empty(rows, self.data.shape[1], dtype=self.data.dtype)
            data[: self.count] = self.data[: self.count]
            norms = torch.empty(rows, dtype=torch.float32)
            norms[: self.count] = self.norms[: self.count]
            self.data, self.norms = data, norms
        self.data[self.count] = row
        self.norms[self.count] = norm
        self.count += 1
        return self.count - 1


class ErrorBank:
    """One bank: ``num_cells`` cells of at most ``capacity`` error tensors (CPU, ``dtype``)."""

    def __init__(self, num_cells: int, capacity: int, dtype: torch.dtype = torch.bfloat16):
        if num_cells < 1 or capacity < 1:
            raise ValueError(f"num_cells and capacity must be >= 1; got {num_cells}, {capacity}")
        self.num_cells = num_cells
        self.capacity = capacity
        self.dtype = dtype
        self.shape: tuple[int, ...] | None = None
        self._cells: list[_Cell] | None = None

    def __len__(self) -> int:
        return sum(self.count(c) for c in range(self.num_cells))

    def count(self, cell: int) -> int:
        return 0 if self._cells is None else self._cells[cell].count

    def entries(self, cell: int) -> list[torch.Tensor]:
        """The stored errors of ``cell`` (views into the bank, in slot order)."""
        if self._cells is None or self.shape is None:
            return []
        c = self._cells[cell]
        return [c.data[i].view(self.shape) for i in range(c.count)]

    def _check_shape(self, error: torch.Tensor) -> None:
        if self.shape is None:
            self.shape = tuple(error.shape)
            numel = error.numel()
            self._cells = [_Cell(numel, self.dtype) for _ in range(self.num_cells)]
        elif tuple(error.shape) != self.shape:
            raise ValueError(
                f"error shape {tuple(error.shape)} differs from the bank's {self.shape}: every "
                "training sample must have the same frame count and size"
            )

    def add(self, cell: int, error: torch.Tensor) -> int:
        """Store ``error`` in ``cell``; returns the slot written. A full cell replaces the entry
        nearest (L2) to the new one, measured after rounding the new one to the bank dtype."""
        self._check_shape(error)
        assert self._cells is not None
        row = error.detach().to("cpu", self.dtype).reshape(-1)
        norm = float(row.float().square().sum())
        c = self._cells[cell]
        if c.count < self.capacity:
            return c.append(row, norm, self.capacity)
        slot = self._nearest_row(c, row, norm)
        c.data[slot] = row
        c.norms[slot] = norm
        return slot

    def nearest(self, cell: int, error: torch.Tensor) -> int:
        """Slot in ``cell`` whose entry has the smallest L2 distance to ``error``."""
        assert self._cells is not None
        row = error.detach().to("cpu", self.dtype).reshape(-1)
        return self._nearest_row(self._cells[cell], row, float(row.float().square().sum()))

    @staticmethod
    def _nearest_row(c: _Cell, row: torch.Tensor, norm: float, candidates: int = 8) -> int:
        # Screen every entry with ||a||^2 + ||b||^2 - 2 a.b (one matrix-vector product in the
        # bank dtype, ~10x faster than forming differences), then decide exactly in float32
        # among the closest few, so rounding in the screen cannot pick a farther entry.
        data = c.data[: c.count]
        dots = torch.mv(data, row).float()
        approx = c.norms[: c.count] + norm - 2.0 * dots
        k = min(candidates, c.count)
        idx = torch.topk(approx, k, largest=False).indices
        exact = torch.linalg.vector_norm(data[idx].float() - row.float(), dim=1)
        return int(idx[int(torch.argmin(exact))])

    def sample(self, cell: int, rng: random.Random) -> torch.Tensor | None:
        """A uniformly drawn entry of ``cell`` (or None if empty)."""
        n = self.count(cell)
        if n == 0:
            return None
        assert self._cells is not None and self.shape is not None
        return self._cells[cell].data[rng.randrange(n)].view(self.shape)

    def sample_any(self, rng: random.Random) -> torch.Tensor | None:
        """An entry drawn uniformly over ALL stored entries of all cells (or None)."""
        n = len(self)
        if n == 0:
            return None
        k = rng.randrange(n)
        for cell in range(self.num_cells):
            if k < self.count(cell):
                assert self._cells is not None and self.shape is not None
                return self._cells[cell].data[k].view(self.shape)
            k -= self.count(cell)
        raise AssertionError("unreachable")

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{f"{prefix}.{cell}": [n, *shape]}`` for every non-empty cell (bank dtype). The
        tensors are views of the bank (no copy: banks can be huge); save them before the next
        update."""
        if self._cells is None or self.shape is None:
            return {}
        return {
            f"{prefix}.{i}": c.data[: c.count].view(c.count, *self.shape)
            for i, c in enumerate(self._cells)
            if c.count
        }

    def load_state_dict(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        self.shape = None
        self._cells = None
        for key, stacked in sorted(state.items()):
            if not key.startswith(prefix + "."):
                continue
            cell = int(key[len(prefix) + 1 :])
            if not 0 <= cell < self.num_cells or stacked.shape[0] > self.capacity:
                raise ValueError(
                    f"bank entry {key!r} ({stacked.shape[0]} errors) does not fit a bank of "
                    f"{self.num_cells} cells x {self.capacity}"
                )
            for e in stacked:
                self.add(cell, e)


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
        return self.noise.count(self.cell(t)) > 0

    def __len__(self) -> int:
        return len(self.noise)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.noise.state_dict("noise"), **self.video.state_dict("video")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.noise.load_state_dict(state, "noise")
        self.video.load_state_dict(state, "video")

    def counts(self) -> Iterator[tuple[int, int]]:
        """(noise, video) entry counts per cell."""
        for c in range(self.noise.num_cells):
            yield self.noise.count(c), self.video.count(c)


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
