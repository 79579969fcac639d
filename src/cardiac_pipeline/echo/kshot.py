"""The few-shot protocol: which videos train, validate and test for a given (k, seed).

k-shot = k TRAIN videos per integer LVEF level (``floor(EF)``); a level with fewer than k
videos gives all it has. Validation is a fixed subset of VAL (``val_size`` videos drawn with
``val_seed``, the same for every k and seed, so validation MAE is comparable across runs),
and testing uses the full TEST split. ``calibration_size`` further VAL videos, outside the
validation subset and likewise fixed by ``val_seed``, calibrate the conformal prediction
interval: the validation subset also picks the epoch, so its errors are optimistic.

Each level's videos are shuffled by a generator seeded with ``(seed, level)`` and the first
k are taken. Hence, for one seed, the k-shot sets are nested (1-shot within 2-shot within
4-shot ...), and adding or removing videos of one level leaves the other levels' picks alone.

Output (contract "k-shot split"): ``FileName, EF, Split, role, k, seed``, role in
``train``/``val``/``calibration``/``test``, sorted by role then FileName.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cardiac_pipeline.echo.discs import strip_video_suffix
from cardiac_pipeline.errors import UserError

SPLIT_COLUMNS = ["FileName", "EF", "Split", "role", "k", "seed"]
ROLES = ("train", "val", "calibration", "test")
EVALUATED_ROLES = ROLES[1:]  # the roles a benchmark method predicts
_ROLE_OF_SPLIT = {"TRAIN": "train", "VAL": "val", "TEST": "test"}


def ef_level(ejection_fraction: pd.Series) -> pd.Series:
    """Integer LVEF level of each video: ``floor(EF)``."""
    return np.floor(ejection_fraction.astype(float)).astype(int)


def _check_index(index: pd.DataFrame) -> None:
    missing = {"FileName", "EF", "Split"} - set(index.columns)
    if missing:
        raise ValueError(f"video index lacks columns {sorted(missing)}")
    if index["FileName"].duplicated().any():
        dups = index.loc[index["FileName"].duplicated(), "FileName"].unique().tolist()
        raise ValueError(f"video index has duplicate FileNames: {dups[:10]}")


def _finish(frame: pd.DataFrame, k: int | None, seed: int | None) -> pd.DataFrame:
    out = frame.loc[:, ["FileName", "EF", "Split", "role"]].copy()
    out["k"] = pd.array([k] * len(out), dtype="Int64")
    out["seed"] = pd.array([seed] * len(out), dtype="Int64")
    out["role"] = pd.Categorical(out["role"], categories=list(ROLES), ordered=True)
    out = out.sort_values(["role", "FileName"], kind="stable").reset_index(drop=True)
    out["role"] = out["role"].astype(str)
    return out[SPLIT_COLUMNS]


def k_shot_split(
    index: pd.DataFrame,
    *,
    k: int,
    seed: int,
    val_size: int | None = 600,
    val_seed: int = 0,
    calibration_size: int | None = 0,
) -> pd.DataFrame:
    """The (k, seed) split of a video index with TRAIN/VAL/TEST in its ``Split`` column.

    val_size: size of the fixed validation subset (all of VAL when None or when VAL is
    smaller); it depends on ``val_seed`` only, never on k or seed. calibration_size: VAL
    videos outside it (all of them when None, as many as there are when fewer) with role
    ``calibration``, also fixed by ``val_seed``; 0 for none.
    """
    _check_index(index)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if seed < 0 or val_seed < 0:
        raise ValueError(f"seeds must be >= 0, got seed={seed}, val_seed={val_seed}")
    split = index["Split"].astype(str).str.upper()
    unknown = sorted(set(split) - set(_ROLE_OF_SPLIT))
    if unknown:
        raise UserError(
            f"FileList.csv has Split values {unknown}; the k-shot protocol needs TRAIN/VAL/TEST: "
            "give the split with --params=fewshot.split_file=/path/split.csv (FileName,Split)"
        )
    frame = index.assign(Split=split).sort_values("FileName", kind="stable")

    train = frame[frame["Split"] == "TRAIN"]
    if train.empty:
        raise UserError(
            "the video index has no usable TRAIN video (none in FileList.csv's Split, or all "
            "rejected at ingestion: see video_rejects); give the split with "
            "--params=fewshot.split_file=/path/split.csv (FileName,Split)"
        )
    if train["EF"].isna().any():
        bad = train.loc[train["EF"].isna(), "FileName"].tolist()
        raise ValueError(f"TRAIN videos without EF: {bad[:10]}")
    levels = ef_level(train["EF"])
    if (levels < 0).any():
        raise ValueError(f"negative EF in TRAIN: {train.loc[levels < 0, 'FileName'].tolist()[:10]}")
    picked = []
    for level, group in train.groupby(levels, sort=True):
        order = np.random.default_rng([seed, int(level)]).permutation(len(group))
        picked.append(group.iloc[np.sort(order[:k])])
    train_pick = pd.concat(picked) if picked else train.iloc[:0]

    val, calibration = _validation_subsets(
        frame[frame["Split"] == "VAL"], val_size, val_seed, calibration_size
    )
    test = frame[frame["Split"] == "TEST"]

    chosen = pd.concat([train_pick, val, test])
    chosen = chosen.assign(role=chosen["Split"].map(_ROLE_OF_SPLIT))
    chosen = pd.concat([chosen, calibration.assign(role="calibration")])
    return _finish(chosen, k, seed)


def _validation_subsets(
    val: pd.DataFrame, val_size: int | None, val_seed: int, calibration_size: int | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation subset and the calibration subset (disjoint) of the VAL videos."""
    rest = val.iloc[:0]
    if val_size is not None and len(val) > val_size:
        keep = np.random.default_rng(val_seed).choice(len(val), size=val_size, replace=False)
        chosen = np.zeros(len(val), dtype=bool)
        chosen[keep] = True
        val, rest = val.iloc[np.flatnonzero(chosen)], val.iloc[np.flatnonzero(~chosen)]
    if calibration_size is not None and len(rest) > calibration_size:
        keep = np.random.default_rng([val_seed, 1]).choice(
            len(rest), size=calibration_size, replace=False
        )
        rest = rest.iloc[np.sort(keep)]
    return val, rest


def calibration_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that calibrate a conformal interval: role ``calibration``, else ``val``.

    A split without a calibration subset (``calibration_size: 0``, a user's split file)
    falls back to the validation videos, whose errors the epoch choice made optimistic.
    """
    calibration = table[table["role"] == "calibration"]
    return calibration if len(calibration) else table[table["role"] == "val"]


def read_split_table(path: str | os.PathLike) -> tuple[pd.Series, pd.Series]:
    """FileNames (video suffix stripped) and roles (train/val/test) of a split CSV.

    Checks what needs no video index: the file reads as CSV, has ``FileName`` and
    ``Split``, every Split is TRAIN/VAL/TEST, no FileName twice, at least one TRAIN row.
    Each problem is a ``UserError`` naming the file and the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"fewshot.split_file {str(path)!r}: file not found; give a CSV of FileName,Split "
            "(TRAIN, VAL or TEST per video)"
        )
    try:
        table = pd.read_csv(path, encoding="utf-8-sig", dtype={"FileName": str, "Split": str})
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot read split file ({' '.join(str(exc).split())}); "
            "it must be a CSV of FileName,Split"
        ) from None
    missing = {"FileName", "Split"} - set(table.columns)
    if missing:
        raise UserError(
            f"{path}: split file lacks columns {sorted(missing)}; it must be a CSV of "
            f"FileName,Split (has {list(table.columns)})"
        )
    names = table["FileName"].astype(str).str.strip().map(strip_video_suffix)
    roles = table["Split"].astype(str).str.strip().str.upper().map(_ROLE_OF_SPLIT)
    if roles.isna().any():
        bad = table.loc[roles.isna(), ["FileName", "Split"]].head(10).to_dict("records")
        raise UserError(f"{path}: Split must be TRAIN, VAL or TEST; bad rows: {bad}")
    duplicated = names[names.duplicated()].unique().tolist()
    if duplicated:
        raise UserError(f"{path}: FileNames listed more than once: {duplicated[:10]}")
    if not (roles == "train").any():
        raise UserError(f"{path}: no row has Split TRAIN; the model needs training videos")
    return names, roles


def read_split_file(
    path: str | os.PathLike,
    index: pd.DataFrame,
    *,
    k: int | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """A published or hand-made split (FileList-like CSV: ``FileName, Split``) as a k-shot split.

    Reproduces that split exactly: its rows are the split, ``Split`` (TRAIN/VAL/TEST, any
    case) gives the role. ``EF`` and the output ``Split`` come from the index, not the file.
    FileNames may carry a ``.avi``/``.mp4`` suffix. k and seed are recorded when given
    (else missing). Unknown FileNames, duplicates and other Split values are errors that
    name the rows.
    """
    path = Path(path)
    _check_index(index)
    names, roles = read_split_table(path)
    known = set(index["FileName"].astype(str))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(
            f"{path}: {len(unknown)} FileNames not in the video index (missing or rejected "
            f"videos, see video_rejects): {unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    by_name = index.assign(FileName=index["FileName"].astype(str)).set_index("FileName")
    chosen = pd.DataFrame(
        {
            "FileName": names.to_numpy(),
            "EF": by_name.loc[names, "EF"].to_numpy(),
            "Split": by_name.loc[names, "Split"].astype(str).str.upper().to_numpy(),
            "role": roles.to_numpy(),
        }
    )
    return _finish(chosen, k, seed)
