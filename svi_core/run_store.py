"""The run directory: what makes a long generation resumable.

Layout::

    run_dir/
      manifest.json                 settings, input fingerprints, finished clips (the truth)
      .lock                         held by the process generating into the directory
      clips/clip_00000.safetensors  "latent": the clip's final NORMALISED latent [1, 16, T, h, w]
                                    float32; "motion": pixel carry only, the uint8 frames
                                    [m, H, W, 3] the next clip is conditioned on; "tail":
                                    drop_tail modes, the uint8 frames a following clip replaces
      segments/clip_00000.mp4       the frames this clip keeps in the stitched video
      segments/tail_00003.mp4       the last clip's tail, written when the video is joined
      segments/prefix.mp4           a run that extends a video: that video (copied or
                                    re-encoded once), joined in front of the clips

Every file is written to a temporary sibling and moved into place with ``os.replace``; the
manifest is rewritten last. The segment of clip k is encoded in a background thread while
clip k + 1 is generated (at most one write pending; its errors surface at the next commit or
:meth:`RunStore.flush`); the manifest lists clip k only once its segment is complete, with the
segment's size and SHA-256. A crash or a failing write leaves the previous manifest, which only
lists clips whose files are complete; stray files of an unfinished clip are overwritten on
resume. Resuming continues after the last finished clip and (on the same device) reproduces an
uninterrupted run exactly: the carry is restored bit for bit from the clip file.

Identity: the manifest holds the run's settings and input fingerprints (compared key by key
on reopening; keys an older version did not write take their default, so adding a setting
never orphans an existing run) and, per finished clip, the identity of its plan (seed, prompt,
per-clip conditions: see :mod:`svi_core.conditions`), so later clips may change but finished
ones never silently do.

The joined video is verified before it replaces the previous one: every segment against its
recorded size and hash (a damaged one is re-encoded from the clip's stored data when the
caller can, else named), and the result's frame count against the manifest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .errors import RunInUseError, RunMismatchError, RunStoreError
from .log import logger
from .video_io import (
    concat_segments,
    mp4_frame_count,
    read_last_frames,
    tmp_path_for,
    write_segment,
)

MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT_VERSION = 1
IDENTITY_VERSION = 2
"""Version of what the manifest's identity holds. 1: settings + inputs, compared exactly.
2: also per-clip plan identities and segment hashes; missing keys take their defaults."""

_MISSING = object()

NOT_RECORDED = "(not recorded)"
"""A default meaning "older versions did not record this; do not compare it" (e.g. content
hashes of model files, added after runs that only recorded file names and sizes)."""

CONTENT_SUFFIX = ".content"
"""Input keys ending in this hold content fingerprints (:func:`file_fingerprint`); a run
directory that did not record one is not compared on it (it could not have been)."""

_SAMPLE = 1 << 16
_SAMPLES = 16


def file_fingerprint(path: str | Path) -> str:
    """A cheap content fingerprint of a (possibly huge) model file or folder of shards.

    Files up to 64 MiB are hashed whole; larger ones by their size and 16 evenly spaced
    64 KiB samples including the first and last bytes (about 1 MiB read), which differs for
    any two different weight files in practice (fine-tunes change every tensor). A folder is
    fingerprinted file by file (sorted relative names). The file's own name is not part of
    it. Returns ``"<sha256 hex>"``.
    """
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(p) if p.is_dir() else ''}:{size}:".encode())
        with open(f, "rb") as fh:
            if size <= _SAMPLES * _SAMPLE * 4:
                while block := fh.read(1 << 20):
                    h.update(block)
                continue
            step = (size - _SAMPLE) / (_SAMPLES - 1)
            for i in range(_SAMPLES):
                fh.seek(int(i * step))
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


RepairFn = Callable[[int], torch.Tensor]
"""``repair(clip_index) -> uint8 [N, H, W, 3]``: a finished clip's kept frames, made again
from its stored data (e.g. its latent decoded by the backend) to replace a damaged segment."""


@dataclass(frozen=True)
class ClipRecord:
    """One finished clip in the manifest.

    Attributes:
        index: clip number k. seed: its seed. prompt_index: index into the prompt list.
        frames_kept: frames in ``segment``. tail_frames: frames in ``tail`` (0 if none).
        segment, tail, state: paths relative to the run directory (``tail`` may be None).
        plan: the clip's plan identity (:meth:`svi_core.conditions.ClipPlan.identity`);
            None in runs made before identity version 2.
        segment_bytes, segment_sha256: the segment as written (None before version 2).
    """

    index: int
    seed: int
    prompt_index: int
    frames_kept: int
    tail_frames: int
    segment: str
    tail: str | None
    state: str
    plan: dict[str, Any] | None = None
    segment_bytes: int | None = None
    segment_sha256: str | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ClipRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    """Fingerprint of a tensor's dtype, shape and bytes (e.g. the resized reference image)."""
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}:{tuple(t.shape)}:".encode()
    return sha256_bytes(head + t.view(torch.uint8).numpy().tobytes())


def sha256_json(value: Any) -> str:
    return sha256_bytes(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8"))


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextmanager
def disk_errors(what: str, keep: str) -> Iterator[None]:
    """Turn a full disk or a write refusal into a RunStoreError saying what is kept."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise RunStoreError(
                f"no space left on the device while writing {what}; {keep}. Free disk space "
                "and run again to continue"
            ) from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RunStoreError(
                f"cannot write {what} ({e.strerror}); {keep}. Make the folder writable or "
                "choose another one"
            ) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling + fsync + ``os.replace``."""
    tmp = tmp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(folder: Path, what: str) -> None:
    """Raise RunStoreError unless files can be created in ``folder`` (created if missing).

    Called before any model is loaded, so a read-only or missing output location is reported
    at once instead of after hours of generation.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".svi-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunStoreError(
            f"cannot write to {what} {folder} ({e.strerror or e}); make it writable or choose "
            "another folder"
        ) from None


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


class _RunLock:
    """An exclusive, non-blocking lock on ``run_dir/.lock`` (flock; msvcrt on Windows).

    The operating system releases it when the process ends, so a crashed run never leaves
    a stale lock behind.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if sys.platform == "win32":  # pragma: no cover - not on the CI platform
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            raise RunInUseError(
                f"run directory {self.path.parent} is in use by another run"
                + (f" ({holder})" if holder else "")
                + "; wait for it to finish, or use another run directory / run name"
            ) from None
        os.ftruncate(fd, 0)
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
        os.write(fd, info.encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                if sys.platform == "win32":  # pragma: no cover
                    import msvcrt

                    os.lseek(self._fd, 0, os.SEEK_SET)
                    msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


class RunStore:
    """A run directory bound to one set of settings and inputs, locked while open.

    Open it with :meth:`open` (it refuses a directory made with other settings or inputs,
    naming the first difference, and a directory another process is generating into) and
    :meth:`close` it when done (also a context manager).
    """

    def __init__(self, root: Path, manifest: dict[str, Any], lock: _RunLock) -> None:
        self.root = root
        self._manifest = manifest
        self._lock = lock
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: str | Path,
        settings: Mapping[str, Any],
        inputs: Mapping[str, str],
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> RunStore:
        """Create ``root`` or reopen it for the same ``settings`` and ``inputs``; lock it.

        Args:
            settings: JSON-able generation settings that change the clips (mode, size, fps,
                video quality, per-clip condition settings); the number of clips is NOT one
                (a run can be extended).
            inputs: fingerprints of the inputs (reference image, prompts, models, LoRAs).
            defaults: the value a setting or input had before it was recorded: a key missing
                from an older manifest (or from ``settings``/``inputs``) compares as this.

        Raises:
            RunStoreError: another run's directory (the first differing key is named), a
                damaged or foreign directory, a directory in use, or one that cannot be written.
        """
        root = Path(root)
        settings = json.loads(json.dumps(dict(settings)))  # normalise (tuples -> lists)
        inputs = dict(inputs)
        defaults = dict(defaults or {})
        path = root / MANIFEST
        if root.is_dir() and not path.is_file():
            foreign = [p.name for p in root.iterdir() if p.name != LOCK]
            if foreign:
                raise RunStoreError(
                    f"run directory {root} exists, is not empty and has no {MANIFEST}; "
                    "use an empty or new directory"
                )
        with disk_errors(f"the run directory {root}", "nothing was generated yet"):
            root.mkdir(parents=True, exist_ok=True)
            lock = _RunLock(root)
            lock.acquire()
        try:
            if path.is_file():
                store = cls(root, cls._read_manifest(root), lock)
                store.check_identity(settings, inputs, defaults)
                store._check_files()
                return store
            with disk_errors(f"the run directory {root}", "nothing was generated yet"):
                (root / "clips").mkdir(exist_ok=True)
                (root / "segments").mkdir(exist_ok=True)
                manifest = {
                    "format": FORMAT_VERSION,
                    "identity_version": IDENTITY_VERSION,
                    "settings": settings,
                    "inputs": inputs,
                    "clips": [],
                }
                store = cls(root, manifest, lock)
                store._write_manifest()
            return store
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def _read_manifest(root: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or not isinstance(manifest.get("clips"), list):
                raise ValueError("it is not a run manifest")
        except (OSError, ValueError) as e:
            raise RunStoreError(
                f"run directory {root} is damaged: {MANIFEST} cannot be read ({e}); delete the "
                "directory or use another run directory"
            ) from None
        if manifest.get("format") != FORMAT_VERSION:
            raise RunStoreError(
                f"run directory {root} has format {manifest.get('format')!r}, this version "
                f"reads {FORMAT_VERSION}; use another run directory"
            )
        version = manifest.get("identity_version", 1)
        if not isinstance(version, int) or version > IDENTITY_VERSION:
            raise RunStoreError(
                f"run directory {root} was made by a newer version (identity version "
                f"{version}, this one knows {IDENTITY_VERSION}); update the pack or use another "
                "run directory"
            )
        return manifest

    def check_identity(
        self, settings: Mapping[str, Any], inputs: Mapping[str, str], defaults: Mapping[str, Any]
    ) -> None:
        """Refuse when the run directory was made with other settings or inputs (keys missing
        on either side compare as their ``defaults`` entry)."""
        m = self._manifest
        settings, inputs = json.loads(json.dumps([dict(settings), dict(inputs)]))
        self._compare("setting", m.get("settings", {}), settings, defaults)
        self._compare("input", m.get("inputs", {}), inputs, defaults)

    def _compare(
        self, what: str, old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping
    ) -> None:
        for key in sorted(set(old) | set(new)):
            default = NOT_RECORDED if key.endswith(CONTENT_SUFFIX) else _MISSING
            a = old.get(key, defaults.get(key, default))
            b = new.get(key, defaults.get(key, default))
            if NOT_RECORDED in (a, b):
                continue
            if a != b:
                shown_a = "(not set)" if a is _MISSING else _describe(a)
                shown_b = "(not set)" if b is _MISSING else _describe(b)
                raise RunMismatchError(
                    f"run directory {self.root} was made with {what} {key}={shown_a}, this run "
                    f"has {key}={shown_b}; use the same {what}s to resume or extend, or another "
                    "run directory for a new video"
                )

    def check_plans(self, plan_of: Callable[[int], Mapping[str, Any]], upto: int) -> None:
        """Refuse when a finished clip below ``upto`` would now be made differently.

        ``plan_of(k)`` is clip k's plan identity in this run. Clips recorded without one (runs
        of identity version 1) are not compared.
        """
        for rec in self.records[:upto]:
            if rec.plan is None:
                continue
            now = json.loads(json.dumps(dict(plan_of(rec.index))))
            for key in sorted(set(rec.plan) | set(now)):
                a, b = rec.plan.get(key, _MISSING), now.get(key, _MISSING)
                if a != b:
                    shown_a = "(not set)" if a is _MISSING else _describe(a)
                    shown_b = "(not set)" if b is _MISSING else _describe(b)
                    raise RunMismatchError(
                        f"run directory {self.root}: clip {rec.index + 1} (index {rec.index}) "
                        f"is already made with {key}={shown_a}, this run gives it "
                        f"{key}={shown_b}. Finished clips cannot change: change only clips "
                        f"{self.clips_done + 1} and later (not made yet), or use another run "
                        "directory for a new video"
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
        return [ClipRecord.from_json(c) for c in self._manifest["clips"]]

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

    def last_frames(self, num_clips: int, count: int) -> torch.Tensor:
        """The last ``count`` frames of the video of the first ``num_clips`` clips, uint8
        ``[n, H, W, 3]`` (n = ``count``, or fewer for a shorter video): the last clip's stored
        tail (exact), then the ends of the last segments (decoded: a clip or two, never the
        whole video)."""
        recs = self.records[:num_clips]
        parts: list[torch.Tensor] = []
        need = count
        if recs and recs[-1].tail_frames:
            parts.append(self.load_state(recs[-1].index)["tail"][-need:])
            need -= parts[0].shape[0]
        for rec in reversed(recs):
            if need <= 0:
                break
            take = min(need, rec.frames_kept)
            try:
                frames = read_last_frames(self.root / rec.segment, take)
            except (OSError, ValueError) as e:
                raise RunStoreError(
                    f"run directory {self.root}: the segment {rec.segment} cannot be read ({e})"
                ) from None
            parts.insert(0, torch.from_numpy(frames))
            need -= take
        return torch.cat(parts)

    # ----- writing ------------------------------------------------------------------------

    def _keep_note(self) -> str:
        n = self.clips_done
        if n == 0:
            return f"no clip was finished yet in {self.root}"
        return f"the {n} finished clip(s) in {self.root} are kept"

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
        plan: Mapping[str, Any] | None = None,
        background: bool = True,
        extra_state: Mapping[str, torch.Tensor] | None = None,
    ) -> ClipRecord:
        """Persist a finished clip; it counts as done only once the manifest lists it.

        The clip file is written now; the segment (and then the manifest) in the background
        unless ``background`` is False. Waits for the previous clip's write first.

        Args:
            latent: the clip's final NORMALISED latent ``[1, 16, T, h, w]``.
            motion: pixel carry: uint8 ``[m, H, W, 3]`` for the next clip; None otherwise.
            kept: uint8 ``[N, H, W, 3]`` frames this clip contributes to the video.
            tail: drop_tail modes: uint8 frames a following clip replaces; None otherwise.
            plan: the clip's plan identity (recorded; compared on resume).
            extra_state: more tensors for the clip file (e.g. the drift guard's transfers),
                returned by :meth:`load_state` like the others.

        Returns:
            The clip's record (its segment size and hash are filled in the manifest once the
            segment is written).
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
        for key, value in (extra_state or {}).items():
            tensors[key] = value.detach().cpu().contiguous()
        state = f"clips/{name}.safetensors"
        with disk_errors(f"clip {index} to {self.root / state}", self._keep_note()):
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
            plan=None if plan is None else json.loads(json.dumps(dict(plan))),
        )
        frames = kept.detach().cpu().contiguous()
        keep = self._keep_note()

        def finish() -> None:
            seg = self.root / rec.segment
            with disk_errors(f"the video segment of clip {index} ({seg})", keep):
                write_segment(seg, frames, fps, crf)
                done = asdict(rec) | self._segment_facts(seg)
                self._write_manifest({**self._manifest, "clips": self._manifest["clips"] + [done]})

        self._run(finish, background)
        return rec

    @staticmethod
    def _segment_facts(path: Path) -> dict[str, Any]:
        return {"segment_bytes": path.stat().st_size, "segment_sha256": sha256_file(path)}

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
        """Flush, stop the writer thread and release the lock."""
        try:
            self.flush()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._lock.release()

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
        prefix = self.prefix
        if prefix is not None:
            files.insert(0, self.root / prefix["segment"])
        return files

    def video_frames(self, num_clips: int | None = None) -> int:
        recs = self.records[: num_clips if num_clips is not None else None]
        prefix = self.prefix
        before = int(prefix["frames"]) if prefix is not None else 0
        return before + sum(r.frames_kept for r in recs) + (recs[-1].tail_frames if recs else 0)

    # ----- a video the run continues (extend) -------------------------------------------

    @property
    def prefix(self) -> dict[str, Any] | None:
        """The video this run continues, joined in front of the clips, or None: ``segment``
        (path in the run directory), ``frames``, ``source`` (the video's content fingerprint),
        ``stream_copy`` (copied unchanged, or re-encoded), ``bytes`` and ``sha256`` of the
        segment as written."""
        value = self._manifest.get("prefix")
        return dict(value) if isinstance(value, Mapping) else None

    def prefix_problem(self) -> str | None:
        """Why the prefix segment cannot go into the video (None when intact or absent)."""
        prefix = self.prefix
        if prefix is None:
            return None
        path = self.root / prefix["segment"]
        if not path.is_file():
            return "it is missing"
        if path.stat().st_size != prefix["bytes"]:
            return f"it has {path.stat().st_size} bytes, {prefix['bytes']} were written"
        if sha256_file(path) != prefix["sha256"]:
            return "its content changed since it was written"
        return None

    def set_prefix(
        self, source: str, frames: int, write: Callable[[Path, Path], bool]
    ) -> dict[str, Any]:
        """Write the video this run continues as ``segments/prefix.mp4`` (when it is not
        there intact for the same ``source``) and record it in the manifest.

        ``write(target, folder) -> stream_copy`` writes the segment file ``target``
        atomically (``folder`` may hold temporary files) and says whether it copied the
        video unchanged; ``frames`` is its frame count. Only a run without finished clips may
        gain a prefix it did not have.

        Raises:
            RunStoreError: the run already has clips without this prefix, or another one.
        """
        self.flush()
        have = self.prefix
        if have is not None and have.get("source") != source:
            raise RunStoreError(
                f"run directory {self.root} continues another video; use the same video to "
                "resume, or another run directory"
            )
        if have is None and self.clips_done:
            raise RunStoreError(
                f"run directory {self.root} has {self.clips_done} clips that continue no video; "
                "use another run directory to extend a video"
            )
        if have is not None and self.prefix_problem() is None:
            return have
        if have is not None:
            logger.warning(
                "the prefix segment of %s is damaged (%s); writing it again",
                self.root,
                self.prefix_problem(),
            )
        seg = "segments/prefix.mp4"
        path = self.root / seg
        with disk_errors(f"the video to continue ({path})", self._keep_note()):
            copied = write(path, self.root / "segments")
            record = {
                "segment": seg,
                "frames": int(frames),
                "source": source,
                "stream_copy": bool(copied),
            } | {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            self._write_manifest({**self._manifest, "prefix": record})
        return record

    def _segment_problem(self, rec: ClipRecord) -> str | None:
        """Why clip ``rec``'s segment cannot go into the video, or None when it is intact."""
        path = self.root / rec.segment
        if not path.is_file():
            return "it is missing"
        if rec.segment_bytes is not None:
            size = path.stat().st_size
            if size != rec.segment_bytes:
                return f"it has {size} bytes, {rec.segment_bytes} were written"
            if sha256_file(path) != rec.segment_sha256:
                return "its content changed since it was written"
            return None
        try:
            frames = mp4_frame_count(path)
        except (OSError, ValueError) as e:
            return f"it cannot be read ({e})"
        if frames != rec.frames_kept:
            return f"it has {frames} frames, the manifest lists {rec.frames_kept}"
        return None

    def verify_segments(
        self, num_clips: int, repair: RepairFn | None = None, fps: float = 24.0, crf: int = 16
    ) -> int:
        """Check the segments of the first ``num_clips`` clips; re-encode damaged ones with
        ``repair`` (returns how many were re-encoded).

        Raises:
            RunStoreError: a damaged segment and no ``repair`` (the segment and clip named).
        """
        self.flush()
        fixed = 0
        for rec in self.records[:num_clips]:
            problem = self._segment_problem(rec)
            if problem is None:
                continue
            if repair is None:
                raise RunStoreError(
                    f"run directory {self.root}: the segment {rec.segment} of clip {rec.index} "
                    f"is damaged ({problem}); rerun the generation to re-encode it from the "
                    "clip's stored latent, or delete the run directory from this clip on"
                )
            logger.warning(
                "segment %s of clip %d is damaged (%s); re-encoding it from the clip's latent",
                rec.segment,
                rec.index,
                problem,
            )
            frames = repair(rec.index)
            if frames.shape[0] != rec.frames_kept:
                raise RunStoreError(
                    f"run directory {self.root}: clip {rec.index} made again has "
                    f"{frames.shape[0]} frames, not {rec.frames_kept}; start a new run directory"
                )
            self._rewrite_segment(rec, frames, fps, crf)
            fixed += 1
        return fixed

    def _rewrite_segment(self, rec: ClipRecord, frames: torch.Tensor, fps: float, crf: int) -> None:
        seg = self.root / rec.segment
        with disk_errors(f"the video segment {seg}", self._keep_note()):
            write_segment(seg, frames, fps, crf)
            clips = list(self._manifest["clips"])
            clips[rec.index] = asdict(rec) | self._segment_facts(seg)
            self._write_manifest({**self._manifest, "clips": clips})

    def build_video(
        self,
        out: str | Path,
        num_clips: int | None = None,
        fps: float = 24.0,
        crf: int = 16,
        *,
        repair: RepairFn | None = None,
    ) -> Path:
        """Join the finished clips' segments into ``out`` (stream copy, no re-encode).

        Every segment is verified first (re-encoded with ``repair`` when damaged); the last
        clip's tail segment is encoded here (``fps``/``crf`` as the segments) from its clip
        file when it does not exist or is damaged. The join is written beside ``out``, its
        frame count checked against the manifest, and only then moved over ``out``: a failed
        join (e.g. a full disk) keeps the previous video and every clip.

        Raises:
            RunStoreError: no finished clip, a damaged segment without ``repair``, or a join
                that fails or comes out with the wrong number of frames.
        """
        self.flush()
        recs = self.records[: num_clips if num_clips is not None else None]
        if not recs:
            raise RunStoreError(f"run directory {self.root} has no finished clip to join")
        self.verify_segments(len(recs), repair, fps, crf)
        problem = self.prefix_problem()
        if problem is not None:
            raise RunStoreError(
                f"run directory {self.root}: the video it continues (segments/prefix.mp4) is "
                f"damaged ({problem}); rerun with the same video to extend so it is written again"
            )
        last = recs[-1]
        if last.tail is not None:
            tail_path = self.root / last.tail
            ok = tail_path.is_file()
            if ok:
                try:
                    ok = mp4_frame_count(tail_path) == last.tail_frames
                except (OSError, ValueError):
                    ok = False
            if not ok:
                tail = self.load_state(last.index).get("tail")
                if tail is None:
                    raise RunStoreError(
                        f"run directory {self.root}: clip file {last.state} has no tail frames; "
                        "the run directory is damaged"
                    )
                with disk_errors(f"the last clip's tail {tail_path}", self._keep_note()):
                    write_segment(tail_path, tail, fps, crf)
        out = Path(out)
        expected = self.video_frames(len(recs))
        keep = f"the previous {out.name} (if any) is unchanged and {self._keep_note()}"
        try:
            with disk_errors(f"the video {out}", keep):
                concat_segments(self.segment_files(len(recs)), out, expected_frames=expected)
        except RunStoreError:
            raise
        except (RuntimeError, ValueError, OSError) as e:
            raise RunStoreError(
                f"joining {len(recs)} clips into {out} failed ({e}); {keep}. Check free disk "
                "space and run again to rebuild the video"
            ) from None
        return out


def fingerprint(value: Any) -> str:
    """A stable SHA-256 of a prompt item or any nesting of str / numbers / tensors / lists /
    tuples / sets / dicts / dataclasses (e.g. a ComfyUI CONDITIONING:
    ``[[tensor, {"pooled_output": tensor}]]``); an object with a ``fingerprint()`` method
    counts by its result. Other objects count by type name only."""
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
        elif hasattr(v, "fingerprint") and callable(v.fingerprint):
            h.update(b"F" + str(v.fingerprint()).encode("utf-8"))
        elif is_dataclass(v) and not isinstance(v, type):
            h.update(b"C" + type(v).__qualname__.encode())
            walk({f.name: getattr(v, f.name) for f in fields(v)})
        elif isinstance(v, (set, frozenset)):
            walk(sorted(v, key=str))
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
