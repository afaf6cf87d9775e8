"""The run directory: what makes a long generation resumable.

Layout::

    run_dir/
      manifest.json                 settings, input fingerprints, finished clips (the truth)
      clips/clip_00000.safetensors  "latent": the clip's final NORMALISED latent [1, 16, T, h, w]
                                    float32; "motion": pixel carry only, the uint8 frames
                                    [m, H, W, 3] the next clip is conditioned on; "tail":
                                    drop_tail modes, the uint8 frames a following clip replaces
      segments/clip_00000.mp4       the frames this clip keeps in the stitched video
      segments/tail_00003.mp4       the last clip's tail, written when the video is joined

Every file is written to a temporary sibling and moved into place with ``os.replace``; the
manifest is rewritten last. The segment of clip k is encoded in a background thread while
clip k + 1 is generated (at most one write pending; its errors surface at the next commit or
:meth:`RunStore.flush`); the manifest lists clip k only once its segment is complete. A crash or a failing write leaves the previous manifest, which only
lists clips whose files are complete; stray files of an unfinished clip are overwritten on
resume. Resuming continues after the last finished clip and (on the same device) reproduces an
uninterrupted run exactly: the carry is restored bit for bit from the clip file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .errors import RunStoreError
from .log import logger
from .video_io import concat_segments, tmp_path_for, write_segment

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClipRecord:
    """One finished clip in the manifest.

    Attributes:
        index: clip number k. seed: its seed. prompt_index: index into the prompt list.
        frames_kept: frames in ``segment``. tail_frames: frames in ``tail`` (0 if none).
        segment, tail, state: paths relative to the run directory (``tail`` may be None).
    """

    index: int
    seed: int
    prompt_index: int
    frames_kept: int
    tail_frames: int
    segment: str
    tail: str | None
    state: str


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    """Fingerprint of a tensor's dtype, shape and bytes (e.g. the resized reference image)."""
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}:{tuple(t.shape)}:".encode()
    return sha256_bytes(head + t.view(torch.uint8).numpy().tobytes())


def sha256_json(value: Any) -> str:
    return sha256_bytes(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling + fsync + ``os.replace``."""
    tmp = tmp_path_for(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


class RunStore:
    """A run directory bound to one set of settings and inputs.

    Open it with :meth:`open`; it refuses a directory made with other settings or inputs
    (``RunStoreError`` naming the first difference).
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self._manifest = manifest
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    # ----- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls, root: str | Path, settings: Mapping[str, Any], inputs: Mapping[str, str]
    ) -> RunStore:
        """Create ``root`` or reopen it for the same ``settings`` and ``inputs``.

        Args:
            settings: JSON-able generation settings that change the clips (mode, size, fps,
                video quality); the number of clips is NOT one (a run can be extended).
            inputs: fingerprints of the inputs (reference image, prompts, models, LoRAs).
        """
        root = Path(root)
        settings = json.loads(json.dumps(dict(settings)))  # normalise (tuples -> lists)
        inputs = dict(inputs)
        path = root / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise RunStoreError(
                    f"run directory {root}: {MANIFEST} cannot be read ({e}); delete the "
                    "directory or use another --run-dir"
                ) from None
            if manifest.get("format") != FORMAT_VERSION:
                raise RunStoreError(
                    f"run directory {root} has format {manifest.get('format')!r}, this version "
                    f"writes {FORMAT_VERSION}; use another --run-dir"
                )
            cls._compare(root, "setting", manifest.get("settings", {}), settings)
            cls._compare(root, "input", manifest.get("inputs", {}), inputs)
            store = cls(root, manifest)
            store._check_files()
            logger.info("resuming run %s after %d finished clips", root, store.clips_done)
            return store
        if root.exists() and any(root.iterdir()):
            raise RunStoreError(
                f"run directory {root} exists, is not empty and has no {MANIFEST}; "
                "use an empty or new directory"
            )
        (root / "clips").mkdir(parents=True, exist_ok=True)
        (root / "segments").mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT_VERSION, "settings": settings, "inputs": inputs, "clips": []}
        store = cls(root, manifest)
        store._write_manifest()
        return store

    @staticmethod
    def _compare(root: Path, what: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                raise RunStoreError(
                    f"run directory {root} was made with {what} {key}={_describe(old.get(key))}, "
                    f"this run has {key}={_describe(new.get(key))}; use the same {what}s to "
                    "resume or extend, or another run directory for a new video"
                )

    def _check_files(self) -> None:
        for rec in self.records:
            for rel in (rec.segment, rec.state):
                if rel is not None and not (self.root / rel).is_file():
                    raise RunStoreError(
                        f"run directory {self.root} is damaged: clip {rec.index} lists {rel}, "
                        "which is missing; restore it or start a new run directory"
                    )

    # ----- reading ------------------------------------------------------------------------

    @property
    def records(self) -> list[ClipRecord]:
        return [ClipRecord(**c) for c in self._manifest["clips"]]

    @property
    def clips_done(self) -> int:
        return len(self._manifest["clips"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._manifest["settings"])

    def load_state(self, index: int) -> dict[str, torch.Tensor]:
        """Clip ``index``'s saved tensors: ``latent`` (+ ``motion`` for pixel carry)."""
        rec = self.records[index]
        try:
            return load_file(str(self.root / rec.state))
        except Exception as e:  # safetensors raises several kinds
            raise RunStoreError(
                f"run directory {self.root}: clip file {rec.state} cannot be read ({e}); "
                "delete the run directory's clips from this one on, or start a new run"
            ) from None

    # ----- writing ------------------------------------------------------------------------

    def commit_clip(
        self,
        *,
        index: int,
        seed: int,
        prompt_index: int,
        latent: torch.Tensor,
        motion: torch.Tensor | None,
        kept: torch.Tensor,
        tail: torch.Tensor | None,
        fps: float,
        crf: int,
        background: bool = True,
    ) -> ClipRecord:
        """Persist a finished clip; it counts as done only once the manifest lists it.

        The clip file is written now; the segment (and then the manifest) in the background
        unless ``background`` is False. Waits for the previous clip's write first.

        Args:
            latent: the clip's final NORMALISED latent ``[1, 16, T, h, w]``.
            motion: pixel carry: uint8 ``[m, H, W, 3]`` for the next clip; None otherwise.
            kept: uint8 ``[N, H, W, 3]`` frames this clip contributes to the video.
            tail: drop_tail modes: uint8 frames a following clip replaces; None otherwise.
        """
        self.flush()
        if index != self.clips_done:
            raise RunStoreError(
                f"run directory {self.root}: clip {index} committed after {self.clips_done} "
                "finished clips; clips must be committed in order"
            )
        name = f"clip_{index:05d}"
        tensors = {"latent": latent.detach().float().cpu().contiguous()}
        if motion is not None:
            tensors["motion"] = motion.detach().cpu().contiguous()
        has_tail = tail is not None and tail.shape[0] > 0
        if has_tail:
            tensors["tail"] = tail.detach().cpu().contiguous()
        state = f"clips/{name}.safetensors"
        atomic_write_bytes(self.root / state, save(tensors))
        rec = ClipRecord(
            index=index,
            seed=seed,
            prompt_index=prompt_index,
            frames_kept=int(kept.shape[0]),
            tail_frames=int(tail.shape[0]) if has_tail else 0,
            segment=f"segments/{name}.mp4",
            tail=f"segments/tail_{index:05d}.mp4" if has_tail else None,
            state=state,
        )
        frames = kept.detach().cpu().contiguous()

        def finish() -> None:
            write_segment(self.root / rec.segment, frames, fps, crf)
            self._write_manifest(
                {**self._manifest, "clips": self._manifest["clips"] + [asdict(rec)]}
            )

        self._run(finish, background)
        return rec

    def _run(self, job: Callable[[], None], background: bool) -> None:
        if not background:
            job()
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svi-writer")
        self._pending = self._executor.submit(job)

    def flush(self) -> None:
        """Wait for the pending background write; re-raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Flush and stop the writer thread (the store can still be used afterwards)."""
        try:
            self.flush()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _write_manifest(self, manifest: dict[str, Any] | None = None) -> None:
        new = manifest if manifest is not None else self._manifest
        data = json.dumps(new, indent=1, ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(self.root / MANIFEST, data)
        self._manifest = new

    # ----- the video ----------------------------------------------------------------------

    def segment_files(self, num_clips: int | None = None) -> list[Path]:
        """Segments of the stitched video of the first ``num_clips`` finished clips (all by
        default): every clip's kept frames, then the last clip's tail."""
        recs = self.records[: num_clips if num_clips is not None else None]
        files = [self.root / r.segment for r in recs]
        if recs and recs[-1].tail is not None:
            files.append(self.root / recs[-1].tail)
        return files

    def video_frames(self, num_clips: int | None = None) -> int:
        recs = self.records[: num_clips if num_clips is not None else None]
        return sum(r.frames_kept for r in recs) + (recs[-1].tail_frames if recs else 0)

    def build_video(
        self, out: str | Path, num_clips: int | None = None, fps: float = 24.0, crf: int = 16
    ) -> Path:
        """Join the finished clips' segments into ``out`` (stream copy, no re-encode).

        The last clip's tail segment is encoded here (``fps``/``crf`` as the segments) from
        its clip file when it does not exist yet.
        """
        self.flush()
        recs = self.records[: num_clips if num_clips is not None else None]
        if not recs:
            raise RunStoreError(f"run directory {self.root} has no finished clip to join")
        last = recs[-1]
        if last.tail is not None and not (self.root / last.tail).is_file():
            tail = self.load_state(last.index).get("tail")
            if tail is None:
                raise RunStoreError(
                    f"run directory {self.root}: clip file {last.state} has no tail frames; "
                    "the run directory is damaged"
                )
            write_segment(self.root / last.tail, tail, fps, crf)
        return concat_segments(self.segment_files(len(recs)), out)


def fingerprint(value: Any) -> str:
    """A stable SHA-256 of a prompt item or any nesting of str / numbers / tensors / lists /
    tuples / dicts (e.g. a ComfyUI CONDITIONING: ``[[tensor, {"pooled_output": tensor}]]``).
    Other objects count by type name only."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            h.update(b"T" + sha256_tensor(v).encode())
        elif isinstance(v, (str, int, float, bool)) or v is None:
            h.update(b"J" + json.dumps(v).encode("utf-8"))
        elif isinstance(v, (list, tuple)):
            h.update(b"L%d" % len(v))
            for x in v:
                walk(x)
        elif isinstance(v, Mapping):
            h.update(b"D%d" % len(v))
            for k in sorted(v, key=str):
                h.update(str(k).encode("utf-8"))
                walk(v[k])
        else:
            h.update(b"O" + type(v).__qualname__.encode())

    walk(value)
    return h.hexdigest()


def input_fingerprints(
    reference: torch.Tensor,
    prompts: Sequence[Any],
    extra: Mapping[str, str] | None = None,
    *,
    negative: Any = None,
) -> dict[str, str]:
    """Fingerprints of a run's inputs: the resized reference (uint8), the prompt items, a
    non-default negative, plus ``extra`` (model and LoRA files; may override any entry)."""
    out = {"reference": sha256_tensor(reference), "prompts": fingerprint(list(prompts))}
    if negative is not None:
        out["negative"] = fingerprint(negative)
    out.update(extra or {})
    return out
