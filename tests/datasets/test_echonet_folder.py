"""The synthetic node regenerates only when its parameters or the generator change, never
over a folder the project did not generate; the dataset only renames a staged folder in."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.io import DatasetError

from cardiac_pipeline.datasets.echonet_folder import EchoNetFolderDataset
from cardiac_pipeline.echo import synthetic
from cardiac_pipeline.pipelines.synthetic.nodes import generate_synthetic_folder


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    made: list[dict] = []

    def fake_generate(root: Path, **params) -> None:
        made.append(params)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "FileList.csv").write_text(f"FileName,EF\nv{len(made)},55\n")

    monkeypatch.setattr(synthetic, "generate_dataset", fake_generate)
    return made


def _node_then_save(root: Path, params: dict) -> None:
    EchoNetFolderDataset(str(root)).save(generate_synthetic_folder(root, params))


def test_regenerates_only_when_params_or_generator_change(
    tmp_path: Path, calls: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "synthetic"
    _node_then_save(root, {"n_train": 4})
    _node_then_save(root, {"n_train": 4})
    assert len(calls) == 1
    _node_then_save(root, {"n_train": 5})
    assert len(calls) == 2
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    _node_then_save(root, {"n_train": 5})
    assert len(calls) == 3
    assert "v3" in (EchoNetFolderDataset(str(root)).load() / "FileList.csv").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_never_writes_over_a_real_dataset(tmp_path: Path, calls: list[dict]) -> None:
    real = tmp_path / "EchoNet-Dynamic"
    real.mkdir()
    (real / "FileList.csv").write_text("FileName,EF\nreal,60\n")
    _node_then_save(real, {"n_train": 4})
    assert calls == []
    assert (real / "FileList.csv").read_text() == "FileName,EF\nreal,60\n"
    # nor does the dataset rename a generated folder onto it
    staged = synthetic.stage_dataset(real, {"n_train": 1})
    with pytest.raises(DatasetError, match="did not generate"):
        EchoNetFolderDataset(str(real)).save(staged)
    assert (real / "FileList.csv").read_text() == "FileName,EF\nreal,60\n"
    assert not staged.exists()
    with pytest.raises(DatasetError, match="not a generated dataset"):
        EchoNetFolderDataset(str(real)).save(tmp_path)


def test_a_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def broken(root: Path, **params) -> None:
        (Path(root) / "Videos").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "generate_dataset", broken)
    with pytest.raises(RuntimeError):
        generate_synthetic_folder(tmp_path / "synthetic", {"n_train": 1})
    assert list(tmp_path.iterdir()) == []
