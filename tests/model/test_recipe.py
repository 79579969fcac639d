"""The recipe's run key: what makes a resumable training run reusable."""

from __future__ import annotations

from pathlib import Path

from cardiac_pipeline.model.recipe import run_key, weights_fingerprint


def test_run_key_follows_the_weights_file_not_only_its_path(tmp_path: Path) -> None:
    weights = tmp_path / "pretrained_backbone.pt"
    arch = {"backbone": {"name": "echo-vit-tiny", "pretrained": str(weights)}}
    assert weights_fingerprint(arch) is None  # not written yet
    weights.write_bytes(b"first pretraining")
    first = weights_fingerprint(arch)
    weights.write_bytes(b"second pretraining")  # re-pretrained in place: same path
    second = weights_fingerprint(arch)
    assert first and second and first != second
    assert run_key(arch, first) != run_key(arch, second)
    assert weights_fingerprint({"backbone": {"name": "echo-vit-tiny", "pretrained": None}}) is None
