"""The clip store: every video decoded once into a ``(F, C, H, W)`` uint8 ``.npy`` file.

Training reads a few frames per sample from a memory-mapped ``.npy`` instead of decoding a
whole AVI for every sample, so epochs never touch the video codec again.

Layout under ``root`` (one store per dataset and preprocessing: see ``store_key``)::

    clips/<FileName>.npy     (F, C, H, W) uint8; C = 1 for grey video, 3 for colour
    entries/<FileName>.json  the entry: shape, fps, source file identity, params, checksum
    manifest.csv             summary table of the last build (for people and the pipeline)

Trust rule: an entry exists only when its JSON exists, and the JSON is written (atomically)
after its ``.npy`` (also atomic: temp file, fsync, ``os.replace``). A run interrupted at any
point therefore leaves either a stray temp file (deleted by the next build) or a ``.npy``
without JSON (rebuilt by the next build), never an entry that a later run would trust.
Before an entry is rebuilt its old JSON is removed first, for the same reason.

A build skips a video whose entry matches the source file (resolved path, size, mtime) and
the preprocessing params; anything else is rebuilt. ``ClipStore.load`` checks cheaply
(file size, shape, dtype against the entry: one ``stat`` and the ``.npy`` header);
``ClipStore.verify`` also recomputes the SHA-1 of the pixels (reads the whole file).

A complete store is read without any lock. A build holds the store's lock
(``cardiac_pipeline.io.build_lock``): a second run that needs to build the same store waits
for the first (with a log line), then skips everything the first one decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cardiac_pipeline.echo.video import VideoReadError, probe_video, read_video
from cardiac_pipeline.io import LOCK_FILE, TMP_PREFIX, atomic_write, build_lock

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
"""Bump when the on-disk layout or the pixel pipeline changes: old entries are rebuilt."""

_CLIPS_DIR = "clips"
_ENTRIES_DIR = "entries"
_MANIFEST = "manifest.csv"
_GREY_CHUNK_FRAMES = 32  # frames compared per step in the grey test (bounds its memory)

Fit = Literal["stretch", "center_crop", "pad"]
OnError = Literal["raise", "skip"]

MANIFEST_COLUMNS = [
    "FileName",
    "path",
    "file",
    "frames",
    "channels",
    "height",
    "width",
    "fps",
    "grey",
    "source_height",
    "source_width",
    "nbytes",
    "checksum",
    "status",
]


class ClipStoreError(RuntimeError):
    """A missing, stale or corrupt store entry; the message names the file and the problem."""


@dataclass(frozen=True)
class PreprocessParams:
    """What turns a decoded video into a store entry; part of every entry's identity.

    size: working resolution (frames become size x size). fit: how a non-square frame
    becomes square: ``"stretch"`` (resize, keeps every pixel, distorts aspect),
    ``"center_crop"`` (central square, keeps aspect, loses the sides) or ``"pad"``
    (zero borders, keeps everything and the aspect). grey_tolerance: a video is grey when
    no pixel's R, G, B differ by more than this (MJPG decoding of grey video gives ~2).
    """

    size: int = 112
    fit: Fit = "stretch"
    grey_tolerance: int = 8

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.fit not in ("stretch", "center_crop", "pad"):
            raise ValueError(f"fit must be 'stretch', 'center_crop' or 'pad', got {self.fit!r}")
        if self.grey_tolerance < 0:
            raise ValueError(f"grey_tolerance must be >= 0, got {self.grey_tolerance}")


def store_key(echonet_root: str | os.PathLike, params: Mapping[str, Any]) -> str:
    """Short hash of the absolute dataset root, the preprocessing params and the format.

    The caller puts each dataset's store in its own folder named by this key, so two
    datasets (or two resolutions) never share entries.
    """
    payload = json.dumps(
        {
            "root": str(Path(echonet_root).expanduser().resolve()),
            "params": dict(params),
            "format": STORE_FORMAT,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _checksum(array: np.ndarray) -> str:
    return "sha1:" + hashlib.sha1(np.ascontiguousarray(array).data).hexdigest()


def _check_file_name(file_name: str) -> None:
    if (
        not isinstance(file_name, str)
        or not file_name
        or file_name.startswith(".")
        or "/" in file_name
        or "\\" in file_name
        or "\0" in file_name
    ):
        raise ClipStoreError(f"{file_name!r}: not usable as a store file name")


class ClipStore:
    """Read access to a clip store folder (see the module docstring for the layout).

    Entries are read lazily and cached; call ``refresh()`` after rebuilding the store
    while a ``ClipStore`` is open. Picklable, so DataLoader workers can share one.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._entries: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"ClipStore({str(self.root)!r})"

    # paths -----------------------------------------------------------------------------
    def npy_path(self, file_name: str) -> Path:
        _check_file_name(file_name)
        return self.root / _CLIPS_DIR / f"{file_name}.npy"

    def entry_path(self, file_name: str) -> Path:
        _check_file_name(file_name)
        return self.root / _ENTRIES_DIR / f"{file_name}.json"

    # entries ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget cached entries (after the store was rebuilt)."""
        self._entries.clear()

    def _read_entry(self, file_name: str) -> dict[str, Any]:
        path = self.entry_path(file_name)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClipStoreError(
                f"{file_name}: no entry in clip store {self.root} (not built, or its build "
                "was interrupted)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ClipStoreError(f"{path}: unreadable store entry ({exc})") from exc
        required = {"format", "frames", "channels", "height", "width", "nbytes", "checksum"}
        if not isinstance(entry, dict) or not required <= entry.keys():
            raise ClipStoreError(f"{path}: store entry lacks fields {sorted(required)}")
        if entry["format"] != STORE_FORMAT:
            raise ClipStoreError(
                f"{path}: store format {entry['format']}, this code reads {STORE_FORMAT}; "
                "rebuild the store"
            )
        return entry

    def entry(self, file_name: str) -> dict[str, Any]:
        """The entry of ``file_name`` (shape, fps, source, checksum); raises if absent."""
        if file_name not in self._entries:
            self._entries[file_name] = self._read_entry(file_name)
        return self._entries[file_name]

    def __contains__(self, file_name: object) -> bool:
        if not isinstance(file_name, str):
            return False
        try:
            self.entry(file_name)
        except ClipStoreError:
            return False
        return self.npy_path(file_name).is_file()

    def file_names(self) -> list[str]:
        """Names with an entry, sorted (a ``.npy`` without entry is not listed)."""
        folder = self.root / _ENTRIES_DIR
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(TMP_PREFIX))

    def __len__(self) -> int:
        return len(self.file_names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.file_names())

    def manifest(self) -> pd.DataFrame:
        """All entries as a table (``MANIFEST_COLUMNS`` less ``status``)."""
        rows = [_manifest_row(name, self.entry(name), status=None) for name in self.file_names()]
        columns = [c for c in MANIFEST_COLUMNS if c != "status"]
        return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)[columns]

    # reading ---------------------------------------------------------------------------
    def _open_checked(self, file_name: str, mmap: bool) -> tuple[np.ndarray, dict[str, Any]]:
        entry = self.entry(file_name)
        path = self.npy_path(file_name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ClipStoreError(f"{path}: clip file missing (entry exists)") from None
        if size != entry["nbytes"]:
            raise ClipStoreError(
                f"{path}: {size} bytes, entry says {entry['nbytes']} (truncated or replaced); "
                "rebuild the store"
            )
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ClipStoreError(f"{path}: not a readable .npy file ({exc})") from exc
        expected = (entry["frames"], entry["channels"], entry["height"], entry["width"])
        if array.shape != expected or array.dtype != np.uint8:
            raise ClipStoreError(
                f"{path}: array {array.shape} {array.dtype}, entry says {expected} uint8"
            )
        return array, entry

    def load(self, file_name: str, *, mmap: bool = True, checksum: bool = False) -> np.ndarray:
        """The ``(F, C, H, W)`` uint8 video of ``file_name``, memory-mapped read-only by default.

        Always checks file size, shape and dtype against the entry (cheap); ``checksum=True``
        also recomputes the pixel checksum (reads every byte). Raises ``ClipStoreError``.
        """
        array, entry = self._open_checked(file_name, mmap)
        if checksum and _checksum(array) != entry["checksum"]:
            raise ClipStoreError(
                f"{self.npy_path(file_name)}: checksum mismatch (corrupt); rebuild the store"
            )
        return array

    def verify(self, file_name: str) -> None:
        """Full check of one entry (size, header, shape, checksum); raises ``ClipStoreError``."""
        self.load(file_name, mmap=True, checksum=True)

    def verify_all(self, file_names: list[str] | None = None) -> dict[str, str]:
        """Fully check many entries; returns ``{FileName: problem}`` for the bad ones."""
        bad: dict[str, str] = {}
        for name in self.file_names() if file_names is None else file_names:
            try:
                self.verify(name)
            except ClipStoreError as exc:
                bad[name] = str(exc)
        return bad


def _manifest_row(file_name: str, entry: Mapping[str, Any], status: str | None) -> dict:
    return {
        "FileName": file_name,
        "path": entry.get("source_path"),
        "file": entry.get("file"),
        "frames": entry["frames"],
        "channels": entry["channels"],
        "height": entry["height"],
        "width": entry["width"],
        "fps": entry.get("fps"),
        "grey": entry.get("grey"),
        "source_height": entry.get("source_height"),
        "source_width": entry.get("source_width"),
        "nbytes": entry["nbytes"],
        "checksum": entry["checksum"],
        "status": status,
    }


# building --------------------------------------------------------------------------------


def is_grey(frames: np.ndarray, tolerance: int) -> bool:
    """True when no pixel of ``(F, H, W, 3)`` frames has channels differing by > tolerance."""
    for start in range(0, frames.shape[0], _GREY_CHUNK_FRAMES):
        chunk = frames[start : start + _GREY_CHUNK_FRAMES].astype(np.int16)
        if (
            np.abs(chunk[..., 0] - chunk[..., 1]).max() > tolerance
            or np.abs(chunk[..., 0] - chunk[..., 2]).max() > tolerance
        ):
            return False
    return True


def _square(frame: np.ndarray, fit: Fit) -> np.ndarray:
    height, width = frame.shape[:2]
    if height == width or fit == "stretch":
        return frame
    side = min(height, width) if fit == "center_crop" else max(height, width)
    if fit == "center_crop":
        top, left = (height - side) // 2, (width - side) // 2
        return frame[top : top + side, left : left + side]
    out = np.zeros((side, side, *frame.shape[2:]), dtype=frame.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = frame
    return out


def preprocess_frames(frames: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, bool]:
    """Decoded ``(F, H, W, 3)`` RGB -> ``((F, C, size, size) uint8, grey)``.

    Grey video keeps one channel (the rounded mean of R, G, B, which averages out MJPG
    chroma noise); frames not ``size x size`` are made square per ``params.fit`` and
    resized with ``cv2.INTER_AREA`` (the right filter for shrinking). Works frame by frame,
    so memory is the input plus the (smaller) output.
    """
    import cv2

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    grey = is_grey(frames, params.grey_tolerance)
    size = params.size
    out = np.empty((frames.shape[0], 1 if grey else 3, size, size), dtype=np.uint8)
    for start in range(0, frames.shape[0], _GREY_CHUNK_FRAMES):
        chunk = frames[start : start + _GREY_CHUNK_FRAMES]
        if grey:
            chunk = _grey_mean(chunk)
        if chunk.shape[1:3] == (size, size):  # already square at size: no per-frame work
            target = out[start : start + len(chunk)]
            target[:] = chunk[:, None] if grey else chunk.transpose(0, 3, 1, 2)
            continue
        for i, frame in enumerate(chunk, start):
            frame = _square(frame, params.fit)
            if frame.shape[:2] != (size, size):
                frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
            out[i] = frame[None] if grey else frame.transpose(2, 0, 1)
    return out, grey


def _grey_mean(frames: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, H, W)``: the rounded mean of R, G and B."""
    total = frames[..., 0].astype(np.uint16)
    total += frames[..., 1]
    total += frames[..., 2]
    total += 1
    total //= 3
    return total.astype(np.uint8)


def _source_identity(path: str | os.PathLike) -> dict[str, Any]:
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    return {
        "source_path": str(resolved),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
    }


def _is_current(
    store: ClipStore, file_name: str, path: str, params: dict, verify_existing: bool
) -> bool:
    """True when a trusted entry matches this source file and these params."""
    try:
        entry = store.entry(file_name)
        identity = _source_identity(path)
    except (ClipStoreError, OSError):
        return False
    if entry.get("params") != params or any(entry.get(k) != v for k, v in identity.items()):
        return False
    try:
        store.load(file_name, checksum=verify_existing)
    except ClipStoreError as exc:
        logger.warning("rebuilding: %s", exc)
        return False
    return True


def write_entry(
    store: ClipStore,
    file_name: str,
    video: np.ndarray,
    *,
    fps: float,
    grey: bool,
    source: Mapping[str, Any],
    params: Mapping[str, Any],
    fsync: bool,
) -> dict[str, Any]:
    """Store ``(F, C, H, W)`` uint8 ``video`` as ``file_name``'s entry; returns the entry.

    The ``.npy`` is written first and the entry JSON last (both atomically), after the old
    entry is removed: see the trust rule above. ``source`` describes where the pixels came
    from (decoded file identity and size, or a generator's), ``params`` how they were made.
    """
    npy_path, entry_path = store.npy_path(file_name), store.entry_path(file_name)
    for stale in (entry_path, npy_path):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    atomic_write(npy_path, lambda f: np.save(f, video, allow_pickle=False), fsync=fsync)
    entry = {
        "format": STORE_FORMAT,
        "file_name": file_name,
        "file": f"{_CLIPS_DIR}/{file_name}.npy",
        "frames": int(video.shape[0]),
        "channels": int(video.shape[1]),
        "height": int(video.shape[2]),
        "width": int(video.shape[3]),
        "dtype": "uint8",
        "fps": float(fps),
        "grey": bool(grey),
        **source,
        "params": dict(params),
        "nbytes": npy_path.stat().st_size,
        "checksum": _checksum(video),
    }
    payload = json.dumps(entry, indent=1, sort_keys=True).encode()
    atomic_write(entry_path, lambda f: f.write(payload), fsync=fsync)
    return entry


def _build_entry(task: dict[str, Any]) -> dict[str, Any]:
    """Decode one video and write its entry; runs in a worker. Returns the entry or an error."""
    file_name, path = task["file_name"], task["path"]
    store = ClipStore(task["root"])
    params = PreprocessParams(**task["params"])
    try:
        identity = _source_identity(path)  # before decoding: a file changed meanwhile is stale
        frames = read_video(path)
        fps = task["fps"]
        if fps is None:
            fps = probe_video(path).fps
        source_height, source_width = frames.shape[1:3]
        video, grey = preprocess_frames(frames, params)
        del frames
        return write_entry(
            store,
            file_name,
            video,
            fps=float(fps),
            grey=grey,
            source={"source_height": int(source_height), "source_width": int(source_width)}
            | identity,
            params=task["params"],
            fsync=task["fsync"],
        )
    except (VideoReadError, ClipStoreError, OSError, ValueError) as exc:
        return {"file_name": file_name, "error": f"{path}: {exc}"}


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one video per worker process; no thread oversubscription


def _fps_hint(row: Mapping[str, Any]) -> float | None:
    value = row.get("FPS")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def build_clip_store(
    index: pd.DataFrame,
    root: str | os.PathLike,
    *,
    size: int = 112,
    fit: Fit = "stretch",
    grey_tolerance: int = 8,
    workers: int = 2,
    progress: bool = True,
    on_error: OnError = "raise",
    verify_existing: bool = False,
    fsync: bool = True,
) -> pd.DataFrame:
    """Decode every video of ``index`` once into the store at ``root``; return its manifest.

    index: the video index (``FileName``, ``path``; ``FPS`` used when present, else read
    from the file). Videos whose entry matches the source file and params are skipped
    (``status="skipped"``), others are decoded (``status="built"``), one video at a time
    per worker process (``workers <= 1``: in this process), so memory does not grow with
    the dataset. ``verify_existing`` also checksums skipped entries. ``on_error="raise"``
    stops at the first video that fails (entries done so far stay valid); ``"skip"`` logs
    it, leaves it out of the manifest and lists it in ``manifest.attrs["failures"]``.
    The manifest (``MANIFEST_COLUMNS``, index order) is also written to
    ``root/manifest.csv`` when something was built. A complete store is read without the
    build lock; otherwise the build waits for any other process building this store.
    """
    missing = {"FileName", "path"} - set(index.columns)
    if missing:
        raise ValueError(f"video index lacks columns {sorted(missing)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    names = index["FileName"].astype(str)
    duplicated = names[names.duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(f"video index has duplicate FileNames: {duplicated[:10]}")
    for name in names:
        _check_file_name(name)
    params = asdict(PreprocessParams(size=size, fit=fit, grey_tolerance=grey_tolerance))

    root = Path(root)
    store = ClipStore(root)
    rows = index.to_dict("records")
    if all(
        _is_current(store, str(r["FileName"]), str(r["path"]), params, verify_existing)
        for r in rows
    ):  # complete: read as it is, without the build lock (another run may hold it)
        logger.info("clip store %s: all %d videos decoded before; reused", root.name, len(rows))
        manifest = pd.DataFrame(
            [_manifest_row(n, store.entry(n), "skipped") for n in names], columns=MANIFEST_COLUMNS
        )
        manifest.attrs["failures"] = []
        return manifest
    with build_lock(root / LOCK_FILE, f"clip store {root.name}"):
        store.refresh()  # the build waited for may have rewritten entries read above
        return _build_locked(
            store, rows, params, workers, progress, on_error, verify_existing, fsync
        )


def _build_locked(
    store: ClipStore,
    rows: list[dict[str, Any]],
    params: dict[str, Any],
    workers: int,
    progress: bool,
    on_error: OnError,
    verify_existing: bool,
    fsync: bool,
) -> pd.DataFrame:
    """``build_clip_store``'s work, under the store's build lock."""
    from tqdm.auto import tqdm

    root = store.root
    (root / _CLIPS_DIR).mkdir(parents=True, exist_ok=True)
    (root / _ENTRIES_DIR).mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    failures: list[tuple[str, str]] = []
    for folder in (root / _CLIPS_DIR, root / _ENTRIES_DIR, root):
        for stale in folder.glob(f"{TMP_PREFIX}*"):  # left by an interrupted build
            stale.unlink(missing_ok=True)

    tasks = []
    with tqdm(total=len(rows), desc="clip store", unit="video", disable=not progress) as bar:
        for row in rows:
            name, path = str(row["FileName"]), str(row["path"])
            if _is_current(store, name, path, params, verify_existing):
                results[name] = _manifest_row(name, store.entry(name), "skipped")
                bar.update()
            else:
                tasks.append(
                    {
                        "file_name": name,
                        "path": path,
                        "fps": _fps_hint(row),
                        "root": str(root),
                        "params": params,
                        "fsync": fsync,
                    }
                )

        def handle(result: dict[str, Any]) -> None:
            name = result["file_name"]
            if "error" in result:
                if on_error == "raise":
                    raise ClipStoreError(f"clip store {root}: {result['error']}")
                logger.warning("clip store: skipped %s", result["error"])
                failures.append((name, result["error"]))
            else:
                results[name] = _manifest_row(name, result, "built")
            bar.update()

        if tasks and workers > 1:
            context = multiprocessing.get_context("spawn")  # no forked torch/decord state
            with context.Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
                for result in pool.imap_unordered(_build_entry, tasks):
                    handle(result)
        else:
            for task in tasks:
                handle(_build_entry(task))

    names = [str(row["FileName"]) for row in rows]
    manifest = pd.DataFrame([results[n] for n in names if n in results], columns=MANIFEST_COLUMNS)
    atomic_write(root / _MANIFEST, lambda f: manifest.to_csv(f, index=False), fsync=fsync)
    manifest.attrs["failures"] = failures
    return manifest
