"""The synthetic dataset is regenerated when its parameters or the generator change, never
over a folder the project did not generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardiac_pipeline.datasets.echonet_folder import EchoNetFolderDataset, SyntheticRequest
from cardiac_pipeline.echo import synthetic


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    made: list[dict] = []

    def fake_generate(root: Path, **params) -> None:
        made.append(params)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "FileList.csv").write_text(f"FileName,EF\nv{len(made)},55\n")

    monkeypatch.setattr(synthetic, "generate_dataset", fake_generate)
    return made


def test_regenerates_only_when_params_or_generator_change(
    tmp_path: Path, calls: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = EchoNetFolderDataset(str(tmp_path / "synthetic"))
    dataset.save(SyntheticRequest({"n_train": 4}))
    dataset.save(SyntheticRequest({"n_train": 4}))
    assert len(calls) == 1
    dataset.save(SyntheticRequest({"n_train": 5}))
    assert len(calls) == 2
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    dataset.save(SyntheticRequest({"n_train": 5}))
    assert len(calls) == 3
    assert "v3" in (dataset.load() / "FileList.csv").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_never_writes_over_a_real_dataset(tmp_path: Path, calls: list[dict]) -> None:
    real = tmp_path / "EchoNet-Dynamic"
    real.mkdir()
    (real / "FileList.csv").write_text("FileName,EF\nreal,60\n")
    EchoNetFolderDataset(str(real)).save(SyntheticRequest({"n_train": 4}))
    assert calls == []
    assert (real / "FileList.csv").read_text() == "FileName,EF\nreal,60\n"
