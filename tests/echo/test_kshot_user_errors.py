"""k-shot splits from data that cannot give one: a UserError that says to give a split file."""

from __future__ import annotations

import pandas as pd
import pytest

from cardiac_pipeline.echo.kshot import k_shot_split, read_split_table
from cardiac_pipeline.errors import UserError


def test_no_usable_train_video_asks_for_a_split_file() -> None:
    index = pd.DataFrame({"FileName": ["a", "b"], "EF": [40.0, 60.0], "Split": ["TEST", "VAL"]})
    with pytest.raises(UserError, match=r"no usable TRAIN video.*fewshot.split_file"):
        k_shot_split(index, k=1, seed=0)


def test_split_file_without_train_rows_is_refused(tmp_path) -> None:
    path = tmp_path / "split.csv"
    path.write_text("FileName,Split\na.avi,TEST\nb,val\n")
    with pytest.raises(UserError, match="no row has Split TRAIN"):
        read_split_table(path)
    path.write_text("FileName,Split\na.avi,TRAIN\nb,val\n")
    names, roles = read_split_table(path)
    assert names.tolist() == ["a", "b"] and roles.tolist() == ["train", "val"]
