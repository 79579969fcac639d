"""Training loop and multi-clip prediction on a tiny learnable toy (fake model, fake data)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cardiac_pipeline.model.train import (
    TrainConfig,
    fit,
    load_model_weights,
    predict_videos,
    resolve_device,
    seed_everything,
)
from tests.conftest import loop_config

N_BINS = 5
BIN_EDGES = torch.tensor([30.0, 45.0, 55.0, 70.0])


@dataclass
class FakeOutput:
    """Same field names as CardiacCLIPOutput."""

    ef: torch.Tensor
    logits: torch.Tensor | None
    attention: torch.Tensor
    video_embedding: torch.Tensor


class FakeClipModel(nn.Module):
    """Frame brightness -> small MLP -> attention pooling over time -> EF and bin logits."""

    def __init__(self, dropout: float = 0.1, with_logits: bool = True) -> None:
        super().__init__()
        self.frame = nn.Linear(1, 8)
        self.drop = nn.Dropout(dropout)
        self.attn = nn.Linear(8, 1)
        self.ef_head = nn.Linear(8, 1)
        self.cls = nn.Linear(8, N_BINS) if with_logits else None

    def forward(self, clips: torch.Tensor) -> FakeOutput:
        assert clips.dtype == torch.uint8 and clips.ndim == 5
        x = (clips.float().mean(dim=(2, 3, 4)).unsqueeze(-1) - 165.0) / 50.0  # [B, T, 1]
        h = self.drop(torch.tanh(self.frame(x)))
        a = torch.softmax(self.attn(h).squeeze(-1), dim=1)  # [B, T]
        v = (a.unsqueeze(-1) * h).sum(dim=1)
        ef = 50.0 + 20.0 * self.ef_head(v).squeeze(-1)
        logits = self.cls(v) if self.cls is not None else None
        return FakeOutput(ef=ef, logits=logits, attention=a, video_embedding=v)


def fake_param_groups(model: FakeClipModel, lrs: dict[str, float]) -> list[dict]:
    groups = {
        "image_tower": list(model.frame.parameters()),
        "text_tower": [],
        "mfl": list(model.attn.parameters()),
        "head": list(model.ef_head.parameters())
        + (list(model.cls.parameters()) if model.cls is not None else []),
    }
    return [{"params": p, "lr": lrs[name], "name": name} for name, p in groups.items()]


def fake_loss(output, ef_target, *, w_ce=1.0, w_kl=1.0, w_l1=1.0):
    l1 = (output.ef.float() - ef_target).abs().mean()
    ce = F.cross_entropy(output.logits.float(), torch.bucketize(ef_target, BIN_EDGES))
    loss = w_l1 * l1 / 10.0 + w_ce * ce  # L1 in tens of EF points
    return loss, {"l1": float(l1.detach()), "ce": float(ce.detach())}


class ToyEchoDataset(Dataset):
    """Videos whose brightness encodes EF; train: one random clip, eval: N spaced clips."""

    def __init__(
        self,
        n_videos: int,
        *,
        mode: str,
        data_seed: int = 0,
        frames: int = 16,
        clip_len: int = 4,
        n_clips: int = 3,
        size: int = 4,
        labelled: bool = True,
    ) -> None:
        rng = np.random.default_rng(data_seed)
        self.ef = rng.uniform(20, 80, n_videos).astype(np.float32)
        t = np.arange(frames)
        videos = []
        for i, ef in enumerate(self.ef):
            level = 40 + 2.5 * ef + 15 * np.sin(2 * np.pi * t / 8 + i)
            pixels = level[:, None, None, None] + rng.normal(0, 8, (frames, 1, size, size))
            videos.append(np.clip(pixels, 0, 255).astype(np.uint8))
        self.videos = videos
        self.mode, self.clip_len, self.n_clips = mode, clip_len, n_clips
        self.labelled = labelled
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def eval_identity(self) -> dict:
        return {"ef": self.ef.tolist(), "clip_len": self.clip_len, "n_clips": self.n_clips}

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        video = self.videos[i]
        ef = torch.tensor(self.ef[i] if self.labelled else np.nan, dtype=torch.float32)
        last_start = video.shape[0] - self.clip_len
        if self.mode == "train":
            rng = np.random.default_rng([self.epoch, i])
            start = int(rng.integers(0, last_start + 1))
            clip = torch.from_numpy(video[start : start + self.clip_len].copy())
            return {"clip": clip, "ef": ef, "file_name": f"v{i:02d}"}
        starts = np.linspace(0, last_start, self.n_clips).round().astype(np.int64)
        idx = starts[:, None] + np.arange(self.clip_len)[None, :]
        return {
            "clip": torch.from_numpy(video[idx].copy()),
            "ef": ef,
            "file_name": f"v{i:02d}",
            "frame_indices": torch.from_numpy(idx),
        }


LRS = {"image_tower": 5e-2, "text_tower": 5e-2, "mfl": 5e-2, "head": 5e-2}


def make_config(**overrides) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 2, "lrs": dict(LRS), "seed": 1, "device": "cpu"}
    base.update({"select_start": False, "max_batches_per_epoch": None})  # the plain loop
    base.update(overrides)
    return loop_config(**base)


def run_fit(tmp: Path, config: TrainConfig, *, model_seed: int = 0, **kwargs):
    torch.manual_seed(model_seed)
    model = FakeClipModel()
    result = fit(
        model,
        ToyEchoDataset(16, mode="train"),
        ToyEchoDataset(6, mode="eval", data_seed=1),
        config,
        tmp,
        loss_fn=kwargs.pop("loss_fn", fake_loss),
        param_groups_fn=fake_param_groups,
        progress=False,
        **kwargs,
    )
    return model, result


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def harmful_loss(output, ef_target, **_weights):
    """Every step moves away from the labels."""
    l1 = (output.ef.float() - ef_target).abs().mean()
    return -l1, {"l1": float(l1.detach())}


def test_loss_decreases_and_history_is_complete(tmp_path: Path) -> None:
    logged: list[tuple[int, dict]] = []
    _, result = run_fit(
        tmp_path, make_config(epochs=6), on_epoch_end=lambda e, m: logged.append((e, m))
    )
    h = result.history
    assert list(h["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert h["train_loss"].iloc[-1] < 0.8 * h["train_loss"].iloc[0]
    assert h["train_l1"].iloc[-1] < 0.5 * h["train_l1"].iloc[0]
    assert h["val_mae"].iloc[-1] < 0.5 * h["val_mae"].iloc[0]
    for col in ["train_l1", "train_ce", "val_mae", "lr", "lr_head", "seconds", "clips_per_s"]:
        assert col in h.columns
    assert ((h["data_wait_share"] >= 0) & (h["data_wait_share"] <= 1)).all()
    assert (h["clips_per_s"] > 0).all()
    # cosine schedule over 6 epochs of 8 steps, lr logged at each epoch's first step
    expected = [LRS["head"] * 0.5 * (1 + math.cos(math.pi * 8 * e / 48)) for e in range(6)]
    np.testing.assert_allclose(h["lr"], expected, rtol=1e-9)
    assert [e for e, _ in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[2][1]["val_mae"] == h["val_mae"].iloc[2]


def test_max_batches_per_epoch_caps_every_epoch(tmp_path: Path) -> None:
    """16 videos in batches of 2 are 8 steps; the cap makes each epoch 3 (schedule too)."""
    seen: list[str] = []

    def spy_loss(output, ef, **weights):
        seen.append("batch")
        return fake_loss(output, ef, **weights)

    _, result = run_fit(tmp_path, make_config(epochs=3, max_batches_per_epoch=3), loss_fn=spy_loss)
    assert len(seen) == 9
    expected = [LRS["head"] * 0.5 * (1 + math.cos(math.pi * 3 * e / 9)) for e in range(3)]
    np.testing.assert_allclose(result.history["lr"], expected, rtol=1e-9)
    with pytest.raises(ValueError, match="max_batches_per_epoch"):
        make_config(max_batches_per_epoch=0)


def test_interrupted_run_resumes_to_identical_result(tmp_path: Path) -> None:
    config = make_config(epochs=3)
    _, full = run_fit(tmp_path / "full", config)

    class Crash(RuntimeError):
        pass

    def crash_after_first(epoch: int, metrics: dict) -> None:
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run_fit(tmp_path / "resumed", config, on_epoch_end=crash_after_first)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 1

    seen: list[int] = []
    # a different model seed proves the weights come from the checkpoint, not the init
    _, resumed = run_fit(
        tmp_path / "resumed", config, model_seed=99, on_epoch_end=lambda e, m: seen.append(e)
    )
    assert seen == [2, 3]
    cols = ["epoch", "train_loss", "train_l1", "val_mae", "lr"]
    pd.testing.assert_frame_equal(resumed.history[cols], full.history[cols])
    a, b = weights(full.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        resumed.selected_epoch == full.selected_epoch
        and resumed.selected_val_mae == full.selected_val_mae
    )


def test_finished_run_returns_stored_result_without_training(tmp_path: Path) -> None:
    config = make_config(epochs=2)
    _, first = run_fit(tmp_path, config)
    mtime = first.last_checkpoint.stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("training ran again")

    model, again = run_fit(tmp_path, config, model_seed=5, loss_fn=must_not_train)
    pd.testing.assert_frame_equal(again.history, first.history)
    assert first.last_checkpoint.stat().st_mtime_ns == mtime
    best = weights(first.selected_checkpoint)
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    run_fit(tmp_path, make_config(epochs=1))
    with pytest.raises(ValueError, match="seed"):
        run_fit(tmp_path, make_config(epochs=2, seed=2))


def test_same_seed_same_metrics_other_seed_differs(tmp_path: Path) -> None:
    cols = ["train_loss", "val_mae"]
    _, a = run_fit(tmp_path / "a", make_config(epochs=2, seed=3))
    _, b = run_fit(tmp_path / "b", make_config(epochs=2, seed=3))
    _, c = run_fit(tmp_path / "c", make_config(epochs=2, seed=4))
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])
    assert not np.allclose(a.history["train_loss"], c.history["train_loss"])


def test_worker_processes_give_the_same_run(tmp_path: Path) -> None:
    cols = ["train_loss", "val_mae"]
    _, serial = run_fit(tmp_path / "serial", make_config(epochs=2, num_workers=0))
    _, workers = run_fit(tmp_path / "workers", make_config(epochs=2, num_workers=2))
    pd.testing.assert_frame_equal(serial.history[cols], workers.history[cols])


def test_gradient_accumulation_matches_large_batch(tmp_path: Path) -> None:
    def train(batch_size: int, accum: int, out: Path) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = FakeClipModel(dropout=0.0)
        cfg = make_config(epochs=1, batch_size=batch_size, grad_accum_steps=accum)
        fit(
            model,
            ToyEchoDataset(16, mode="train"),
            None,
            cfg,
            out,
            loss_fn=fake_loss,
            param_groups_fn=fake_param_groups,
            progress=False,
        )
        return weights(out / "last.pt")

    big, small = train(8, 1, tmp_path / "big"), train(4, 2, tmp_path / "small")
    one_step = train(16, 1, tmp_path / "one")
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(one_step[k], big[k]) for k in big)


def test_selected_checkpoint_is_min_val_mae_epoch(tmp_path: Path) -> None:
    # this lr overshoots after epoch 2, so the best epoch is not the last one
    _, result = run_fit(tmp_path, make_config(epochs=5, seed=1, lrs={k: 0.1 for k in LRS}))
    h = result.history
    best_row = h.loc[h["val_mae"].idxmin()]
    assert result.selected_epoch < 5
    assert result.selected_epoch == int(best_row["epoch"])
    assert result.selected_val_mae == best_row["val_mae"]
    ckpt = torch.load(result.selected_checkpoint, weights_only=True)
    assert ckpt["epoch"] == result.selected_epoch
    last = weights(result.last_checkpoint)
    assert any(not torch.equal(ckpt["model"][k], last[k]) for k in last)
    # the stored weights reproduce the recorded validation MAE
    model = load_model_weights(FakeClipModel(), result.selected_checkpoint)
    preds, _ = predict_videos(
        model, ToyEchoDataset(6, mode="eval", data_seed=1), device="cpu", progress=False
    )
    mae = (preds["EF_pred"] - preds["EF_true"]).abs().mean()
    assert mae == pytest.approx(result.selected_val_mae, rel=1e-6)


def test_select_epoch_last_keeps_the_schedule_end_not_the_val_minimum(tmp_path: Path) -> None:
    config = {"epochs": 5, "seed": 1, "lrs": {k: 0.1 for k in LRS}}  # best epoch < 5 (above)
    _, best = run_fit(tmp_path / "best", make_config(**config))
    model, last = run_fit(tmp_path / "last", make_config(**config, select_epoch="last"))
    assert best.selected_epoch < 5 and last.selected_epoch == 5
    assert last.selected_val_mae == last.history["val_mae"].iloc[-1] >= best.selected_val_mae
    assert all(
        torch.equal(model.state_dict()[k], v) for k, v in weights(last.last_checkpoint).items()
    )
    # training is the same: only which epoch is kept differs
    pd.testing.assert_series_equal(best.history["val_mae"], last.history["val_mae"])

    # the start still competes with the end, and wins when adaptation only hurts
    _, kept = run_fit(
        tmp_path / "kept",
        make_config(select_start=True, select_epoch="last"),
        loss_fn=harmful_loss,
    )
    assert kept.selected_epoch == 0
    with pytest.raises(ValueError, match="select_epoch"):
        make_config(select_epoch="first")
    with pytest.raises(ValueError, match="patience"):
        make_config(select_epoch="last", patience=2)


def test_select_start_keeps_the_start_when_adaptation_only_hurts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in FakeClipModel().state_dict().items()}
    _, plain = run_fit(tmp_path / "plain", make_config(), loss_fn=harmful_loss)
    model, kept = run_fit(tmp_path / "kept", make_config(select_start=True), loss_fn=harmful_loss)
    assert plain.selected_epoch >= 1
    assert kept.selected_epoch == 0 and kept.selected_val_mae < kept.history["val_mae"].min()
    assert all(torch.equal(model.state_dict()[k], start[k]) for k in start)
    # scoring the start does not change training: same losses and validation, epoch by epoch
    pd.testing.assert_series_equal(plain.history["train_loss"], kept.history["train_loss"])
    pd.testing.assert_series_equal(plain.history["val_mae"], kept.history["val_mae"])
    # the start loses once an epoch is better, as in a normal run
    _, learning = run_fit(tmp_path / "learning", make_config(epochs=4, select_start=True))
    assert learning.selected_epoch >= 1


def test_start_score_is_computed_once_per_start_weights(tmp_path: Path, monkeypatch) -> None:
    from cardiac_pipeline.model import train as train_module
    from cardiac_pipeline.model.prediction_cache import PredictionCache

    passes: list[str] = []
    run_videos = train_module._run_videos

    def counting_run_videos(*args, **kwargs):
        passes.append(kwargs["desc"])
        return run_videos(*args, **kwargs)

    monkeypatch.setattr(train_module, "_run_videos", counting_run_videos)
    cache = PredictionCache(tmp_path / "predictions", {"arch": "fake"})
    config = make_config(select_start=True)
    _, first = run_fit(tmp_path / "first", config, prediction_cache=cache)
    assert passes.count("val 0") == 1
    _, again = run_fit(tmp_path / "again", config, prediction_cache=cache)  # same start
    assert passes.count("val 0") == 1 and passes.count("val 1") == 2  # only epoch 0 reused
    assert (again.selected_epoch, again.selected_val_mae) == (
        first.selected_epoch,
        first.selected_val_mae,
    )
    learned = ["epoch", "train_loss", "val_mae", "val_rmse", "lr"]
    pd.testing.assert_frame_equal(first.history[learned], again.history[learned])
    run_fit(tmp_path / "other", config, model_seed=5, prediction_cache=cache)  # other start
    assert passes.count("val 0") == 2


def test_runs_stored_before_a_new_config_field_still_resume(tmp_path: Path) -> None:
    run_fit(tmp_path, make_config(epochs=1, schedule_epochs=2))
    last = tmp_path / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["select_start"]  # as written before the field existed
    torch.save(ckpt, last)
    _, result = run_fit(tmp_path, make_config(epochs=2, schedule_epochs=2))
    assert list(result.history["epoch"]) == [1, 2]


def test_early_stopping_stops_after_patience(tmp_path: Path) -> None:
    frozen = {k: 0.0 for k in LRS}  # nothing learns: val MAE never improves after epoch 1
    _, result = run_fit(tmp_path, make_config(epochs=10, lrs=frozen, patience=2))
    assert result.stopped_early and list(result.history["epoch"]) == [1, 2, 3]
    assert result.selected_epoch == 1
    _, again = run_fit(tmp_path, make_config(epochs=10, lrs=frozen, patience=2))
    assert again.stopped_early and len(again.history) == 3


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    _, result = run_fit(tmp_path, make_config(epochs=1))
    last = torch.load(result.last_checkpoint, weights_only=True)
    best = torch.load(result.selected_checkpoint, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "history", "config"} <= set(last)
    assert set(last["rng"]) >= {"python", "numpy", "torch", "cuda"}
    assert last["history"]["epoch"] == [1]
    assert best["config"]["seed"] == 1


def test_predict_videos_averages_clips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FakeClipModel()
    dataset = ToyEchoDataset(3, mode="eval", n_clips=4, data_seed=2)
    dataset.ef[1] = np.nan  # an unlabelled video
    preds, attention = predict_videos(model, dataset, device="cpu", batch_size=2, progress=False)

    assert list(preds["FileName"]) == ["v00", "v01", "v02"]
    assert math.isnan(preds.loc[1, "EF_true"])
    assert model.training  # training mode restored
    model.eval()
    for i in range(3):
        item = dataset[i]
        with torch.no_grad():
            out = model(item["clip"])
        row = preds.iloc[i]
        assert row["n_clips"] == 4
        assert row["EF_pred"] == pytest.approx(float(out.ef.double().mean()), rel=1e-6)
        assert row["EF_clip_sd"] == pytest.approx(
            float(out.ef.double().std(unbiased=False)), rel=1e-5
        )
        probs = torch.softmax(out.logits, dim=-1).mean(0)
        got = row[[f"p_bin_{k}" for k in range(N_BINS)]].to_numpy(dtype=float)
        np.testing.assert_allclose(got, probs.numpy(), rtol=1e-5)
        entry = attention[f"v{i:02d}"]
        np.testing.assert_allclose(entry["attention"], out.attention.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(entry["frame_indices"], item["frame_indices"].numpy())
        pooled = out.video_embedding.double().mean(0).numpy()  # what OOD scores use
        np.testing.assert_allclose(entry["video_embedding"], pooled, rtol=1e-5, atol=1e-6)
    assert preds["EF_clip_sd"].gt(0).all()  # the clips really differ


def test_predict_videos_without_logits_and_train_mode_rejected() -> None:
    model = FakeClipModel(with_logits=False)
    preds, _ = predict_videos(
        model, ToyEchoDataset(2, mode="eval"), device="cpu", clip_chunk=2, progress=False
    )
    assert not any(c.startswith("p_bin_") for c in preds.columns)
    with pytest.raises(ValueError, match="eval mode"):
        predict_videos(model, ToyEchoDataset(2, mode="train"), device="cpu", progress=False)


def test_seed_and_device_helpers() -> None:
    seed_everything(7)
    a = (np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    seed_everything(7)
    assert (np.random.rand(), torch.rand(1).item()) == a  # noqa: NPY002
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="optimizer"):
        loop_config(optimizer="sgd")


def test_one_schedule_for_pretraining_and_adaptation() -> None:
    from cardiac_pipeline.model import pretrain
    from cardiac_pipeline.model.train import lr_factor

    assert pretrain.lr_factor is lr_factor and pretrain.resolve_device is resolve_device
    floor = lr_factor(total_steps=10, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert [floor(s) for s in (0, 1)] == pytest.approx([0.5, 1.0])
    assert floor(6) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert floor(10) == pytest.approx(0.1) and floor(50) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(10, 0, "step")  # type: ignore[arg-type]
