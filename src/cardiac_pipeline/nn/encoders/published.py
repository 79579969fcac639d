"""Reading the weights of a published echo model: one-line errors that name the file and the fix.

Users copy these files over by hand, so the usual mistakes are a wrong path, a file of
another model, or a checkpoint re-saved in another layout. Every check here says which of
those it is before a tensor is copied.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cardiac_pipeline.errors import UserError
from cardiac_pipeline.nn.encoders.base import InputSpec

#: where the architecture data of the published models lives (not open_clip configs)
ENCODER_CONFIG_DIR = Path(__file__).resolve().parents[2] / "model_configs" / "encoders"

#: published layouts told apart by a key only they have: (test, what the file is, its backbone)
_SIGNATURES: tuple[tuple[Callable[[Mapping[str, Any]], bool], str, str], ...] = (
    (lambda s: "weights" in s and len(s) <= 3, "PanEcho's panecho.pt", "panecho"),
    (lambda s: "encoder.time_encoder.pe" in s, "PanEcho's panecho.pt", "panecho"),
    (
        lambda s: (
            "text_projection.weight" in s and "backbone.bert.embeddings.word_embeddings.weight" in s
        ),
        "EchoPrime's echo_prime_text_encoder.pt",
        "echoprime",
    ),
    (
        lambda s: "conv_proj.weight" in s and "pos_encoding.class_token" in s,
        "EchoPrime's echo_prime_encoder.pt",
        "echoprime",
    ),
    (
        lambda s: any(str(k).startswith("visual.") for k in s),
        "an open_clip (EchoCLIP-style) checkpoint",
        "echoclip",
    ),
)


def load_encoder_config(name: str) -> dict[str, Any]:
    """A JSON file of ``model_configs/encoders`` (keys starting with ``_`` are comments)."""
    data = json.loads((ENCODER_CONFIG_DIR / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def recognise(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """(what the file is, the backbone name for it) when ``state`` is a known published layout."""
    for test, what, backbone in _SIGNATURES:
        if test(state):
            return what, backbone
    return None


#: published folders told apart by a file only they have: (file, what the folder is, its backbone)
_FOLDER_SIGNATURES: tuple[tuple[str, str, str], ...] = (
    ("open_clip_config.json", "an open_clip (EchoCLIP-style) folder", "echoclip"),
    ("weights/echo_prime_encoder.pt", "EchoPrime's model_data folder", "echoprime"),
)


def describe(path: Path) -> tuple[str, str] | None:
    """(what ``path`` is, the backbone name for it) when it is a known published file or folder."""
    if path.is_dir():
        for name, what, backbone in _FOLDER_SIGNATURES:
            if (path / name).is_file():
                return what, backbone
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a checkpoint at all: the caller says what was expected
        return None
    return recognise(checkpoint) if isinstance(checkpoint, Mapping) else None


def require_path(path: Path, what: str, fix: str, folder: bool = False, backbone: str = "") -> Path:
    """``path`` when it is the expected file (or folder); else one line saying what it is.

    A folder of another published model is refused even where a folder is expected.
    """
    if not path.exists():
        raise UserError(f"{what}: {path} not found. Fix: {fix}")
    right_kind = path.is_dir() if folder else path.is_file()
    found = describe(path) if path.is_dir() or not right_kind else None
    if right_kind and (found is None or found[1] == backbone):
        return path
    if found is None:
        found = ("a folder" if path.is_dir() else "a file", backbone)
    other = f"use backbone.name: {found[1]} for it, or " if found[1] != backbone else ""
    raise UserError(f"{path} is {found[0]}, not {what}. Fix: {other}{fix}")


def read_checkpoint(path: Path, what: str, fix: str) -> Mapping[str, Any]:
    """The mapping saved in ``path`` (``torch.load(weights_only=True)``), or a UserError."""
    require_path(path, what, fix)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{what}: cannot read {path} ({first}). Fix: {fix}") from error
    if not isinstance(checkpoint, Mapping):
        raise UserError(
            f"{what}: {path} holds a {type(checkpoint).__name__}, not a state dict. Fix: {fix}"
        )
    return checkpoint


def load_published(
    state: Mapping[str, Any],
    model: nn.Module,
    path: Path,
    what: str,
    backbone: str,
    fix: str,
) -> None:
    """Load ``state`` into ``model`` (strict) after checking it has exactly its keys and shapes.

    ``what`` names the expected file as ``recognise`` does ("EchoPrime's
    echo_prime_encoder.pt"); a file recognisably of another model says which one it is and
    which backbone name takes it.
    """
    expected = model.state_dict()
    found = recognise(state)
    if found is not None and found[0] != what:
        other = f"use backbone.name: {found[1]} for it, or " if found[1] != backbone else ""
        raise UserError(f"{path} is {found[0]}, not {what}. Fix: {other}{fix}")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise UserError(
            f"{what}: {path} is not in the published layout ({len(missing)} keys missing, e.g. "
            f"{missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]}). Fix: {fix}"
        )
    shapes = {k: tuple(getattr(state[k], "shape", ())) for k in expected}
    wrong = [k for k, v in expected.items() if shapes[k] != tuple(v.shape)]
    if wrong:
        key = wrong[0]
        raise UserError(
            f"{what}: {path} has {len(wrong)} tensors of another shape (e.g. {key!r}: "
            f"{shapes[key]}, expected {tuple(expected[key].shape)}); it is "
            f"another variant of the model. Fix: {fix}"
        )
    model.load_state_dict(state, strict=True)


def check_clip(video: torch.Tensor, spec: InputSpec, name: str) -> None:
    """ValueError unless ``video`` is [B, 3, clip_frames, size, size] (a clip encoder's input)."""
    expected = (3, spec.clip_frames, spec.size, spec.size)
    if tuple(video.shape[1:]) != expected:
        shape = ", ".join(map(str, expected))
        raise ValueError(f"{name} takes clips [B, {shape}], got {list(video.shape)}")
