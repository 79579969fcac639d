"""The pretraining corpus is generated straight into its clip store: the pretrain pipeline
opens it without ingesting or decoding, and a corpus missing a video stops the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardiac_pipeline.echo.synthetic import generate_dataset
from cardiac_pipeline.errors import UserError
from cardiac_pipeline.pipelines.pretrain.nodes import open_pretrain_corpus, pretraining_pairs

SHORT = {"frames_range": (30, 40), "min_beats": 1.0, "heart_rate_bpm": (100.0, 5.0)}
CORPUS = {"n_train": 3, "n_val": 0, "n_test": 0, "seed": 3, "site": "source", "workers": 1}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    generate_dataset(tmp_path, **CORPUS, site_overrides=SHORT, progress=False, output="clip_store")
    return tmp_path


def test_open_corpus_gives_every_video_with_its_report(corpus: Path) -> None:
    store, index = open_pretrain_corpus(corpus)
    assert len(index) == 3 and all(name in store for name in index["FileName"])
    pairs = pretraining_pairs(index, corpus)
    assert len(pairs) == 3 and pairs["Report"].str.contains("EJECTION FRACTION").all()
    assert store.load(pairs["FileName"][0]).shape[1:] == (1, 112, 112)


def test_a_video_missing_from_the_store_is_one_clear_error(corpus: Path) -> None:
    store, index = open_pretrain_corpus(corpus)
    store.entry_path(str(index["FileName"][1])).unlink()
    with pytest.raises(UserError, match="1 videos of FileList.csv have no clip store entry"):
        open_pretrain_corpus(corpus)
