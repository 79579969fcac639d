"""Versioned folder datasets: a run loads the version it saved, not another run's later one."""

from __future__ import annotations

import pandas as pd
from kedro.io.core import Version

from cardiac_pipeline.datasets.partitioned import VersionedCSVFolderDataset


def test_two_runs_at_once_each_load_what_they_saved(tmp_path) -> None:
    path = str(tmp_path / "metrics")

    def run(version: str, member: str | None = None) -> VersionedCSVFolderDataset:
        return VersionedCSVFolderDataset(path, Version(None, version), member=member)

    first, second = run("2026-01-01T00.00.00.000Z"), run("2026-01-01T00.00.00.001Z")
    first.save({"k1_seed0": pd.DataFrame({"mae": [1.0]})})
    second.save({"k1_seed0": pd.DataFrame({"mae": [2.0]})})  # later: the latest on disk
    assert first.load()["k1_seed0"]["mae"].tolist() == [1.0]
    assert run("2026-01-01T00.00.00.000Z", "k1_seed0").load()["mae"].tolist() == [1.0]
    # a run that saved nothing here (a later evaluation) reads the latest
    assert run("2026-01-02T00.00.00.000Z", "k1_seed0").load()["mae"].tolist() == [2.0]
