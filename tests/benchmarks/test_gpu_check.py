"""benchmarks/gpu_check.py: importable on CPU, and each backbone preset at its published size."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location(
    "gpu_check", PROJECT_ROOT / "benchmarks" / "gpu_check.py"
)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_help_names_the_backbones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        gpu_check.parse_args(["--help"])
    assert done.value.code == 0
    assert "echoprime" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "arch", "head", "scales"),
    [
        ("echoclip", "echo-convnext-b-w", "prompt", [1, 2]),
        ("echoprime", "echoprime", "linear", [1]),
        ("panecho", "panecho", "linear", [1]),
    ],
)
def test_presets_take_the_published_input(name: str, arch: str, head: str, scales: list) -> None:
    args = gpu_check.with_preset(gpu_check.parse_args(["--backbone", "all"]), name)
    assert (args.arch, args.head, args.scales) == (arch, head, scales)
    assert (args.frames, args.size) == (16, 224)


def test_a_tokenizer_gives_echoprime_its_prompt_head() -> None:
    args = gpu_check.parse_args(["--backbone", "echoprime", "--tokenizer", "/t"])
    assert gpu_check.with_preset(args, "echoprime").head == "prompt"
