"""The MLflow hook: mlflow.yml read strictly, the experiment opens on its training runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from kedro.config import OmegaConfigLoader
from mlflow.tracking import MlflowClient

from cardiac_pipeline import hooks, tracking


def _context(project: Path) -> SimpleNamespace:
    loader = OmegaConfigLoader(
        str(project / "conf"),
        base_env="base",
        default_run_env="local",
        config_patterns={"mlflow": ["mlflow*", "mlflow*/**"]},
    )
    return SimpleNamespace(config_loader=loader, project_path=project)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "local").mkdir()
    yield tmp_path
    tracking.configure(Path.cwd())


def test_no_mlflow_yml_means_the_defaults(project):
    hook = hooks.MlflowTrackingHook()
    hook.after_context_created(_context(project))
    assert hook._config == hooks.DEFAULT_MLFLOW_CONFIG


def test_a_user_mlflow_yml_is_merged_over_the_defaults(project):
    (project / "conf" / "local" / "mlflow.yml").write_text("experiment_name: mine\n")
    hook = hooks.MlflowTrackingHook()
    hook.after_context_created(_context(project))
    assert hook._config == {**hooks.DEFAULT_MLFLOW_CONFIG, "experiment_name": "mine"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("enabled: [true\n  x: 1\n", "cannot be read"),
        ("- a\n- b\n", "cannot be read|expected a mapping"),
        ("trackin_uri: sqlite:///x.db\n", "did you mean 'tracking_uri'"),
        ("enabled: yes please\n", "enabled must be true or false"),
        ("log_paths: everything\n", "log_paths 'everything' is not one of hash, basename, full"),
    ],
)
def test_a_malformed_mlflow_yml_stops_with_one_line_naming_the_file(project, text, message):
    (project / "conf" / "local" / "mlflow.yml").write_text(text)
    with pytest.raises(hooks.MlflowConfigError, match=message) as error:
        hooks.MlflowTrackingHook().after_context_created(_context(project))
    assert str(error.value).startswith("conf/local/mlflow.yml: ")
    assert "\n" not in str(error.value)


def test_new_and_existing_experiments_open_on_model_training(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    old = client.create_experiment("made-before", artifact_location=(tmp_path / "a").as_uri())
    chosen = client.create_experiment("chosen", tags={hooks.EXPERIMENT_KIND_TAG: "finetuning"})
    for name in ("fresh", "made-before", "chosen"):
        config = {**hooks.DEFAULT_MLFLOW_CONFIG, "experiment_name": name}
        config["artifact_location"] = str(tmp_path / "artifacts")
        hooks.setup_mlflow(config, tmp_path)

    def kind(experiment_id: str) -> str:
        return client.get_experiment(experiment_id).tags.get(hooks.EXPERIMENT_KIND_TAG)

    fresh = client.get_experiment_by_name("fresh").experiment_id
    assert kind(fresh) == kind(old) == hooks.EXPERIMENT_KIND == "custom_model_development"
    assert kind(chosen) == "finetuning"  # a kind chosen in the UI is kept


def test_the_log_says_where_to_see_the_runs_without_a_full_path(project):
    tracking.configure(project)
    server = hooks.ui_hint("http://127.0.0.1:5000/", "3")
    assert server == "see http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    local = hooks.ui_hint(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", "1")
    assert "--backend-store-uri sqlite:///mlruns/mlflow.db" in local
    assert str(project) not in local


def test_a_fewshot_run_ends_with_its_summary_printed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from kedro.io import DataCatalog, MemoryDataset
    from kedro_datasets.text import TextDataset

    from tests.reporting.test_terminal import summary

    monkeypatch.chdir(tmp_path)
    table = TextDataset(filepath="data/fewshot_summary.md")
    table.save("| method | ... |")
    catalog = DataCatalog(
        datasets={
            "fewshot_summary": MemoryDataset(summary(ood=False)),
            "fewshot_summary_table": table,
        }
    )
    outputs = {"fewshot_summary", "fewshot_summary_table", "fewshot.k1_seed0.predictions"}
    pipeline = SimpleNamespace(all_outputs=lambda: outputs)  # a model's predictions: no screen
    hook = hooks.EndOfRunHook()
    hook.after_context_created(SimpleNamespace(params={"evaluation": {"ci_level": 0.9}}))
    hook.after_pipeline_run({}, pipeline, catalog)

    lines = capsys.readouterr().out.strip().splitlines()
    lines = lines[lines.index("Few-shot summary (TEST set)") :]  # after any catalog log line
    assert lines[0] == "Few-shot summary (TEST set)" and "MAE ± SD (90% CI)" in lines[1]
    assert lines[-1] == "Full table: data/fewshot_summary.md"
    assert all(len(line) <= 100 for line in lines) and len(lines) == 3 + 9 + 1
    assert all(row.split()[-1] == "–" for row in lines[3:-1])  # no OOD column in this table
