"""The prediction cache returns exactly what was computed, and only for the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cardiac_pipeline.model import prediction_cache
from cardiac_pipeline.model.prediction_cache import PredictionCache, weights_digest


def _table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "FileName": ["0X1", "0X2", "0X3"],
            "EF_true": rng.uniform(10, 90, 3),
            "EF_pred": rng.uniform(10, 90, 3) / 3.0,  # values with no short decimal form
            "n_clips": np.array([1, 2, 3]),
        }
    )


class Counter:
    def __init__(self, table: pd.DataFrame) -> None:
        self.table, self.calls = table, 0

    def __call__(self) -> pd.DataFrame:
        self.calls += 1
        return self.table


def test_same_weights_and_context_compute_once_and_return_identical_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    compute = Counter(_table())
    cache = PredictionCache(tmp_path, {"arch": "linear"})
    first = cache.get_or_compute(model, {"dataset": "val"}, compute)
    second = PredictionCache(tmp_path, {"arch": "linear"}).get_or_compute(
        model, {"dataset": "val"}, compute
    )
    assert compute.calls == 1
    pd.testing.assert_frame_equal(second, first, check_exact=True)
    assert second["EF_pred"].to_numpy().tobytes() == _table()["EF_pred"].to_numpy().tobytes()


def test_other_weights_context_scope_or_code_recompute(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    compute = Counter(_table())
    cache = PredictionCache(tmp_path, {"arch": "linear"})
    cache.get_or_compute(model, {"dataset": "val"}, compute)
    cache.get_or_compute(model, {"dataset": "test"}, compute)  # other videos
    cache.scoped({"arch": "other"}).get_or_compute(model, {"dataset": "val"}, compute)
    with torch.no_grad():
        model.bias.add_(1e-6)  # one parameter nudged
    cache.get_or_compute(model, {"dataset": "val"}, compute)
    assert compute.calls == 4
    monkeypatch.setattr(prediction_cache, "code_digest", lambda: "edited model code")
    cache.get_or_compute(model, {"dataset": "val"}, compute)
    assert compute.calls == 5


def test_weights_digest_sees_buffers_and_names() -> None:
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(2)
    before = weights_digest(norm)
    norm.running_mean.add_(1.0)
    assert weights_digest(norm) != before


def test_unreadable_entry_is_an_error_naming_the_file(tmp_path: Path) -> None:
    model = torch.nn.Linear(1, 1)
    cache = PredictionCache(tmp_path)
    cache.get_or_compute(model, {}, Counter(_table()))
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=rf"{entry.name}: unreadable prediction cache"):
        cache.get_or_compute(model, {}, Counter(_table()))
    # nothing half-written beside it; the entry's build lock stays (empty: released)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{entry.stem}.lock", entry.name]
