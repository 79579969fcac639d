import numpy as np
import pandas as pd
import pytest

from cardiac_pipeline.echo.kshot import SPLIT_COLUMNS, k_shot_split, read_split_file


@pytest.fixture
def file_list() -> pd.DataFrame:
    """FileList-like index: uneven TRAIN counts per EF level (many levels with 1-2 videos)."""
    rng = np.random.default_rng(0)
    splits = ["TRAIN"] * 300 + ["VAL"] * 50 + ["TEST"] * 40
    ef = np.concatenate([rng.normal(55, 12, 300).clip(7, 97), rng.uniform(10, 85, 90)])
    return pd.DataFrame(
        {
            "FileName": [f"0X{i:04X}" for i in range(len(splits))],
            "path": [f"/data/Videos/0X{i:04X}.avi" for i in range(len(splits))],
            "EF": ef,
            "Split": splits,
        }
    )


def train_names(split: pd.DataFrame) -> set[str]:
    return set(split.loc[split["role"] == "train", "FileName"])


def test_one_shot_takes_one_video_per_integer_ef_level(file_list):
    split = k_shot_split(file_list, k=1, seed=0)
    assert list(split.columns) == SPLIT_COLUMNS
    train = split[split["role"] == "train"]
    levels_in_train = np.floor(file_list.loc[file_list["Split"] == "TRAIN", "EF"]).astype(int)
    assert len(train) == levels_in_train.nunique()
    assert np.floor(train["EF"]).astype(int).is_unique
    assert (train["Split"] == "TRAIN").all()
    assert (split["k"] == 1).all() and (split["seed"] == 0).all()


def test_k_shot_caps_at_what_each_level_has(file_list):
    train_all = file_list[file_list["Split"] == "TRAIN"]
    per_level = np.floor(train_all["EF"]).astype(int).value_counts()
    assert per_level.min() < 4 < per_level.max()  # the fixture exercises the cap
    split = k_shot_split(file_list, k=4, seed=0)
    train = split[split["role"] == "train"]
    assert len(train) == int(np.minimum(per_level, 4).sum())
    got = np.floor(train["EF"]).astype(int).value_counts()
    pd.testing.assert_series_equal(
        got.sort_index(), np.minimum(per_level, 4).sort_index(), check_names=False
    )


def test_same_seed_same_split_other_seed_other_split(file_list):
    a = k_shot_split(file_list, k=2, seed=5)
    b = k_shot_split(file_list.sample(frac=1, random_state=1), k=2, seed=5)  # row order
    pd.testing.assert_frame_equal(a, b)
    c = k_shot_split(file_list, k=2, seed=6)
    assert train_names(a) != train_names(c)


def test_k_shot_sets_are_nested_for_one_seed(file_list):
    one, two, eight = (train_names(k_shot_split(file_list, k=k, seed=3)) for k in (1, 2, 8))
    assert one < two < eight


def test_val_subset_is_fixed_across_k_and_seed_and_test_is_complete(file_list):
    def val(s):
        return list(s.loc[s["role"] == "val", "FileName"])

    a = k_shot_split(file_list, k=1, seed=0, val_size=20)
    b = k_shot_split(file_list, k=8, seed=9, val_size=20)
    assert len(val(a)) == 20 and val(a) == val(b)
    assert val(k_shot_split(file_list, k=1, seed=0, val_size=20, val_seed=1)) != val(a)
    assert len(val(k_shot_split(file_list, k=1, seed=0))) == 50  # fewer than 600: all
    test = set(a.loc[a["role"] == "test", "FileName"])
    assert test == set(file_list.loc[file_list["Split"] == "TEST", "FileName"])


def test_unspecified_split_is_refused_with_a_pointer(file_list):
    index = file_list.assign(Split="UNSPECIFIED")
    with pytest.raises(ValueError, match="fewshot.split_file"):
        k_shot_split(index, k=1, seed=0)


def test_read_split_file_reproduces_a_published_split(file_list, tmp_path):
    chosen = file_list.iloc[[0, 1, 2, 310, 360]]
    path = tmp_path / "FileList_1shot.csv"
    text = "FileName,EF,Split\n" + "".join(
        f"{n}.avi,{ef},{s.lower() if i == 0 else s}\n"
        for i, (n, ef, s) in enumerate(
            zip(chosen["FileName"], chosen["EF"], chosen["Split"], strict=True)
        )
    )
    path.write_text(text, encoding="utf-8-sig")  # published copies start with a BOM
    split = read_split_file(path, file_list, k=1, seed=0)
    assert list(split.columns) == SPLIT_COLUMNS
    assert set(split["FileName"]) == set(chosen["FileName"])
    assert split.set_index("FileName")["role"].to_dict() == dict(
        zip(chosen["FileName"], ["train", "train", "train", "val", "test"], strict=True)
    )
    np.testing.assert_allclose(
        split.set_index("FileName").loc[chosen["FileName"], "EF"], chosen["EF"]
    )


def test_read_split_file_names_unknown_videos_and_bad_splits(file_list, tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("FileName,Split\n0X0000,TRAIN\n0XDEAD,TRAIN\n0XBEEF,TEST\n")
    with pytest.raises(ValueError, match=r"2 FileNames not in the video index.*0XDEAD.*0XBEEF"):
        read_split_file(path, file_list)
    path.write_text("FileName,Split\n0X0000,TRAINING\n")
    with pytest.raises(ValueError, match="TRAINING"):
        read_split_file(path, file_list)
    path.write_text("FileName,Split\n0X0000,TRAIN\n0X0000.avi,VAL\n")
    with pytest.raises(ValueError, match="more than once"):
        read_split_file(path, file_list)


def test_calibration_subset_is_other_val_videos_fixed_across_k_and_seed(file_list):
    def names(s, role):
        return list(s.loc[s["role"] == role, "FileName"])

    plain = k_shot_split(file_list, k=1, seed=0, val_size=20)
    a = k_shot_split(file_list, k=1, seed=0, val_size=20, calibration_size=12)
    b = k_shot_split(file_list, k=4, seed=7, val_size=20, calibration_size=12)
    assert names(a, "val") == names(plain, "val")  # holding videos out leaves VAL alone
    assert len(names(a, "calibration")) == 12 and names(a, "calibration") == names(b, "calibration")
    assert not set(names(a, "calibration")) & set(names(a, "val"))
    assert set(names(a, "calibration")) <= set(
        file_list.loc[file_list["Split"] == "VAL", "FileName"]
    )
    rest = k_shot_split(file_list, k=1, seed=0, val_size=20, calibration_size=None)
    assert len(names(rest, "calibration")) == 30  # 50 VAL: the other 30
    assert names(plain, "calibration") == []  # 0, the default: none


def test_calibration_rows_fall_back_to_val_without_a_calibration_subset(file_list):
    from cardiac_pipeline.echo.kshot import calibration_rows

    held_out = k_shot_split(file_list, k=1, seed=0, val_size=20, calibration_size=12)
    assert (calibration_rows(held_out)["role"] == "calibration").all()
    assert len(calibration_rows(held_out)) == 12
    plain = k_shot_split(file_list, k=1, seed=0, val_size=20)
    assert (calibration_rows(plain)["role"] == "val").all() and len(calibration_rows(plain)) == 20
