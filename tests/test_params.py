"""Parameter checks: a misspelt or retired key stops the run and says what was meant."""

from __future__ import annotations

import pytest

from cardiac_pipeline.params import check_keys


def test_unknown_key_is_named_with_the_closest_known_one() -> None:
    with pytest.raises(
        ValueError, match=r"'training'.*'lerning_rate' \(did you mean 'learning_rate'"
    ):
        check_keys("training", {"lerning_rate": 1.0, "epochs": 2}, ["learning_rate", "epochs"])


def test_known_keys_and_an_absent_section_pass() -> None:
    check_keys("training", {"epochs": 2}, ["epochs", "batch_size"])
    check_keys("training", None, ["epochs"])
    check_keys("training", {}, [])


def test_retired_key_says_where_it_went() -> None:
    with pytest.raises(ValueError, match="'eval_batch_size' is now evaluation.batch_size"):
        check_keys(
            "training",
            {"eval_batch_size": 4},
            ["epochs"],
            moved={"eval_batch_size": "evaluation.batch_size"},
        )


def test_a_section_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected a mapping"):
        check_keys("clips", [1, 2], ["frames"])


def test_shipped_run_files_name_real_parameters() -> None:
    """``kedro run --config conf/runs/*.yml`` files must not rot as parameters move."""
    from pathlib import Path

    import yaml
    from kedro.config import OmegaConfigLoader

    root = Path(__file__).resolve().parents[1]
    params = OmegaConfigLoader(str(root / "conf"), base_env="base", default_run_env="base")[
        "parameters"
    ]
    run_files = sorted((root / "conf" / "runs").glob("*.yml"))
    assert run_files

    def check(overrides: dict, known: dict, path: str) -> None:
        for key, value in overrides.items():
            assert key in known, f"{path}{key} is not a parameter in conf/base"
            if isinstance(value, dict):
                check(value, known[key], f"{path}{key}.")

    for run_file in run_files:
        run = yaml.safe_load(run_file.read_text())["run"]
        check(run.get("params", {}), params, f"{run_file.name}: ")
