"""End to end through Kedro: synthetic -> ingestion -> preprocessing -> fewshot on toy sizes."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch

from tests.conftest import base_recipe

TINY = {
    "synthetic": {"generate": {"n_train": 16, "n_val": 4, "n_test": 6, "seed": 7, "workers": 1}},
    "ingestion": {"workers": 1},
    "preprocessing": {"workers": 1},
    "fewshot": {"shots": [1], "seeds": [0, 1], "val_size": 4},
    "cardiac_clip": {"scales": [1, 2]},
    "clips": {"frames": 4, "period": 4, "val_clips": 1},
    "training": {"epochs": 1},
    "evaluation": {"n_clips": 2, "attention_plot_videos": 2},
    "pretrain": {
        "arch": "echo-vit-tiny",
        "corpus": {"n_train": 8, "n_val": 0, "n_test": 0, "workers": 1},
        "epochs": 1,
        "batch_size": 4,
        "frames": 2,
    },
}


@pytest.mark.slow
def test_fewshot_pipeline_tracks_one_mlflow_run_per_split(kedro_project, capsys):
    kedro_project.set_params(TINY)
    kedro_project.run("fewshot")
    root = kedro_project.path

    # the last screen: the summary for a 100-column terminal, one whole line per row
    out = capsys.readouterr().out
    screen = out[out.rindex("Few-shot summary (TEST set)") :].strip().splitlines()
    assert all(len(line) <= 100 for line in screen)
    assert screen[1].split()[:3] == ["method", "k", "n"] and screen[1].endswith("OOD")
    rows = [line.split()[:2] for line in screen[3:-1]]
    assert ["cardiac_clip", "1"] in rows and ["zero_shot", "any"] in rows
    assert screen[-1].startswith("Full table: data/08_reporting/fewshot_summary.md/")

    metrics = pd.read_csv(
        next((root / "data/08_reporting/fewshot_metrics.csv").glob("*/fewshot_metrics.csv"))
    )
    cardiac = metrics[metrics["method"] == "cardiac_clip"]
    assert sorted(cardiac["split"]) == ["k1_seed0", "k1_seed1"]
    assert cardiac["mae"].between(0, 100).all()
    # MFL's weights summarised against mean pooling (1.0): entropy in (0, 1], peak in [1, T]
    assert cardiac["mfl_entropy"].between(0, 1 + 1e-6).all()
    assert cardiac["mfl_peak"].between(1 - 1e-6, 4).all()
    assert (metrics["method"] == "mean_predictor").sum() == 2
    assert (metrics["method"] == "val_median_predictor").sum() == 2

    runs = mlflow.search_runs(search_all_experiments=True)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(children["tags.k"] + "-" + children["tags.seed"]) == ["1-0", "1-1"]
    assert children["metrics.test_mae"].notna().all()
    assert children["metrics.val_mae"].notna().all()  # per-epoch metric logged during training

    assert {"mae_ci_low", "mae_ci_high", "coverage_90"} <= set(metrics.columns)
    assert cardiac["ood_share"].between(0, 1).all()  # share of TEST flagged, per model
    assert children["metrics.test_ood_share"].notna().all()
    assert (metrics["method"] == "zero_shot").sum() == 2  # the backbone's, on the same TEST

    predictions = root / "data/07_model_output/fewshot_predictions"
    table = pd.read_csv(next(predictions.glob("*/fewshot_predictions/k1_seed0.csv")))
    assert len(table) == 6 and table["EF_pred"].between(0, 100).all()
    assert (table["EF_lower"] <= table["EF_pred"]).all()
    assert (table["EF_pred"] <= table["EF_upper"]).all()
    assert {"EF_pred_zero_shot", "EF_pred_val_median_predictor"} <= set(table.columns)
    assert table["out_of_distribution"].isin([0.0, 1.0]).all()

    summary = pd.read_csv(
        next((root / "data/08_reporting/fewshot_summary.csv").glob("*/fewshot_summary.csv"))
    )
    assert {"ood_share_mean", "coverage_90_ef_lt_40_mean"} <= set(summary.columns)
    zero = summary[summary["method"] == "zero_shot"]
    assert len(zero) == 1 and zero["n"].iloc[0] == 1  # no labels: one model, not n = 2
    markdown = next((root / "data/08_reporting/fewshot_summary.md").glob("*/*.md")).read_text()
    assert "| zero_shot | any | 1 |" in markdown

    # the default backbone.pretrained ("pretrain") adapts the pretrain pipeline's CLIP
    model = next((root / "data/06_models/fewshot_models").glob("*/fewshot_models/k1_seed0.pt"))
    stored = torch.load(model, map_location="cpu", weights_only=True)
    backbone = stored["arch"]["backbone"]
    assert stored["interval"]["alpha"] == 0.1 and stored["interval"]["n_val"] == 4
    # 4 VAL videos are too few for a finite 90% interval (needs >= 9)
    assert stored["interval"]["half_width"] == float("inf")
    assert stored["ood"]["n"] == 4 and stored["ood"]["score"] == "mahalanobis_ledoit_wolf"
    assert backbone["pretrained"].endswith("pretrained_backbone.pt")
    assert backbone["name"] == "echo-vit-tiny"  # the checkpoint's arch
    assert list((root / "data/08_reporting/fewshot_plots/k1_seed0").glob("*/*/mfl_attention.png"))


EVALUATION = base_recipe(evaluation={"bootstrap_resamples": 200}).evaluation


def test_summarise_fewshot_counts_references_once_and_reports_coverage() -> None:
    import numpy as np

    from cardiac_pipeline.pipelines.fewshot.nodes import summarise_fewshot

    rng = np.random.default_rng(0)
    true = rng.uniform(20, 75, 50)
    zero_shot = true + rng.normal(0, 8, 50)
    rows, predictions = [], {}
    for k in (1, 2):
        for seed in (0, 1):
            name = f"k{k}_seed{seed}"
            pred = true + rng.normal(0, 6, 50)
            predictions[name] = pd.DataFrame(
                {
                    "FileName": [f"v{i}" for i in range(50)],
                    "EF_true": true,
                    "EF_pred": pred,
                    "covered": (np.abs(pred - true) <= 10).astype(float),
                    "out_of_distribution": (np.arange(50) < 2).astype(float),  # 2 of 50
                    "EF_pred_zero_shot": zero_shot,
                    "EF_pred_val_median_predictor": 58.0,
                }
            )
            for method in ("cardiac_clip", "zero_shot", "val_median_predictor"):
                rows.append({"split": name, "method": method, "k": k, "seed": seed})
    long = pd.concat([table.assign(split=name) for name, table in predictions.items()])
    summary, markdown, _ = summarise_fewshot(pd.DataFrame(rows), long, EVALUATION)
    model = summary[summary["method"] == "cardiac_clip"]
    assert (model["n"] == 2).all() and model["coverage_90_mean"].between(0.8, 1).all()
    for method in ("zero_shot", "val_median_predictor"):
        assert f"| {method} | any | 1 |" in markdown  # once, not at each k with ± 0.00
    assert markdown.count("| cardiac_clip |") == 2 and "nan" not in markdown

    # coverage by LVEF range: each range's share of covered videos (seed-averaged)
    first = predictions["k1_seed0"].assign(split="k1_seed0")
    low = first[first["EF_true"] < 40]
    both = [predictions[f"k1_seed{s}"] for s in (0, 1)]
    expected = np.mean([t.loc[t["EF_true"] < 40, "covered"].mean() for t in both])
    k1 = model[model["k"] == 1].iloc[0]
    assert len(low) > 5 and k1["coverage_90_ef_lt_40_mean"] == pytest.approx(expected)
    for name in ("coverage_90_ef_40_55", "coverage_90_ef_gt_55"):
        assert k1[f"{name}_ci_low"] <= k1[f"{name}_mean"] <= k1[f"{name}_ci_high"]
    assert model["ood_share_mean"].tolist() == pytest.approx([0.04, 0.04])
    assert summary.loc[summary["method"] == "zero_shot", "ood_share_mean"].isna().all()
    assert "OOD share" in markdown and "coverage_90 EF<40" in markdown


def test_test_metrics_give_the_share_flagged_and_coverage_by_range() -> None:
    import numpy as np

    from cardiac_pipeline.echo.ood import describe
    from cardiac_pipeline.pipelines.fewshot.nodes import _metrics_with_ci, _video_means, _with_ood

    rng = np.random.default_rng(1)
    description = describe(rng.normal(size=(100, 4)), quantile=0.99)
    names = [f"v{i}" for i in range(40)]
    embeddings = rng.normal(size=(40, 4))
    embeddings[:4] += 50.0  # four videos of another site
    attention = {n: {"video_embedding": e} for n, e in zip(names, embeddings, strict=True)}
    true = np.linspace(20, 80, 40)
    table = pd.DataFrame({"FileName": names, "EF_true": true, "EF_pred": true + 3.0})
    table = table.assign(covered=(np.arange(40) % 2).astype(float))
    table = _with_ood(table, attention, description)
    metrics = _metrics_with_ci(
        table,
        table["EF_pred"],
        {"n_resamples": 50, "bootstrap_seed": 0, "level": 0.95},
        _video_means(table, "coverage_90"),
    )
    assert metrics["ood_share"] >= 4 / 40 and metrics["ood_share"] < 0.3
    assert table.loc[:3, "out_of_distribution"].eq(1.0).all()
    low = table["EF_true"] < 40
    assert metrics["coverage_90_ef_lt_40"] == pytest.approx(table.loc[low, "covered"].mean())
    assert metrics["ood_share_ci_low"] <= metrics["ood_share"] <= metrics["ood_share_ci_high"]

    without = _with_ood(
        table.drop(columns=["out_of_distribution", "ood_score", "ood_percentile"]), attention, None
    )
    plain = _metrics_with_ci(
        without,
        without["EF_pred"],
        {"n_resamples": 50, "bootstrap_seed": 0, "level": 0.95},
        _video_means(without, "coverage_90"),
    )
    assert np.isnan(plain["ood_share"]) and plain["coverage_90"] == pytest.approx(0.5)
