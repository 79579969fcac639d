"""Load time and cached-feature throughput of each backbone on this CPU, as ratios.

For each of the default small backbone (``echo-convnext-tiny``, conf/base) and the three
foundation models (``echoclip``, ``echoprime``, ``panecho``), random weights are written in
the published layout at full size (EchoCLIP's folder with ConvNeXt-B-W, EchoPrime's
model_data/weights with MViT-v2-S and a BERT-base text encoder plus a tokenizer folder,
PanEcho's panecho.pt), then timed:

- load: ``recipe.build_cardiac_clip`` as the fewshot pipeline calls it (reading the
  weights, building the backbone and CardiacCLIP around it, text tower included);
- feature build: ``features.build_feature_store`` over a handful of synthetic videos
  (the frozen trunk of the cached adaptation modes), reported in videos per second.

Each backbone takes its run file's ``cardiac_clip`` section (conf/runs/<name>.yml; the
default small one conf/base's: EchoZoom [1, 2]); all share one clip spec (every 2nd frame
at 30 fps) so that the same frames are encoded. Ratios are against the default small
backbone in the same process: timings on a shared machine are noisy, ratios less so.

    python benchmarks/backbone_throughput.py --videos 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
import yaml

from cardiac_pipeline.echo.clips import ClipSpec
from cardiac_pipeline.echo.clipstore import ClipStore, build_clip_store
from cardiac_pipeline.echo.echonet import build_video_index
from cardiac_pipeline.echo.synthetic import generate_dataset
from cardiac_pipeline.model.backbone import register_model_configs
from cardiac_pipeline.model.features import build_feature_store, feature_store_key, key_digest
from cardiac_pipeline.model.recipe import build_cardiac_clip
from cardiac_pipeline.nn.encoders import create_encoder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "echo-convnext-tiny"
ECHOCLIP_ARCH = "echo-convnext-b-w"  # EchoCLIP's ConvNeXt-B-W, 512-d
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
BIOMEDBERT_VOCAB = 28895


def write_default(folder: Path) -> dict[str, Any]:
    """The default small CLIP's weights as a checkpoint file (what pretrain leaves)."""
    register_model_configs()
    path = folder / "pretrained_backbone.pt"
    torch.save(open_clip.create_model(DEFAULT).state_dict(), path)
    return {"name": DEFAULT, "pretrained": str(path)}


def write_echoclip(folder: Path) -> dict[str, Any]:
    """The mkaichristensen/echo-clip folder layout: open_clip_config.json + weights."""
    register_model_configs()
    config = {
        "model_cfg": open_clip.get_model_config(ECHOCLIP_ARCH),
        "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD},
    }
    target = folder / "echo-clip"
    target.mkdir()
    (target / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.model.CLIP(**config["model_cfg"])
    torch.save(model.state_dict(), target / "open_clip_pytorch_model.bin")
    return {"name": "echoclip", "pretrained": str(target)}


def write_echoprime(folder: Path) -> dict[str, Any]:
    """model_data/weights/echo_prime_{encoder,text_encoder}.pt and a tokenizer folder."""
    tokenizer = folder / "biomedbert"
    tokenizer.mkdir()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(BIOMEDBERT_VOCAB - len(special))]
    (tokenizer / "vocab.txt").write_text("\n".join(special + words) + "\n")
    source = create_encoder("echoprime", tokenizer=str(tokenizer))
    weights = folder / "model_data" / "weights"
    weights.mkdir(parents=True)
    torch.save(source.video.state_dict(), weights / "echo_prime_encoder.pt")
    torch.save(source.text.state_dict(), weights / "echo_prime_text_encoder.pt")
    return {"name": "echoprime", "pretrained": str(weights.parent), "tokenizer": str(tokenizer)}


def write_panecho(folder: Path) -> dict[str, Any]:
    """panecho.pt: ``{"weights": state dict}`` of the whole multi-task model."""
    path = folder / "panecho.pt"
    torch.save({"weights": create_encoder("panecho").state_dict()}, path)
    return {"name": "panecho", "pretrained": str(path)}


WRITERS = {
    DEFAULT: write_default,
    "echoclip": write_echoclip,
    "echoprime": write_echoprime,
    "panecho": write_panecho,
}


def cardiac_clip_section(name: str) -> dict[str, Any]:
    """The run file's ``cardiac_clip`` section (conf/base's for the default backbone)."""
    if name == DEFAULT:
        return {"scales": [1, 2]}
    run = yaml.safe_load((ROOT / "conf" / "runs" / f"{name}.yml").read_text())["run"]
    return dict(run["params"]["cardiac_clip"])


def synthetic_store(folder: Path, videos: int) -> tuple[ClipStore, list[str]]:
    generate_dataset(
        folder / "echonet", n_train=videos, n_val=0, n_test=0, seed=0, workers=1, progress=False
    )
    index, _ = build_video_index(folder / "echonet", min_frames=8, progress=False)
    build_clip_store(index, folder / "store", size=112, workers=1, progress=False)
    return ClipStore(folder / "store"), sorted(index["FileName"].astype(str))


def measure(name: str, folder: Path, store: ClipStore, names: list[str]) -> dict[str, float]:
    backbone = WRITERS[name](folder)
    arch = {"backbone": backbone, "cardiac_clip": cardiac_clip_section(name)}
    started = time.perf_counter()
    model = build_cardiac_clip(arch, seed=0)
    load_s = time.perf_counter() - started
    spec = ClipSpec(frames=16, period=2, target_fps=30)
    key = feature_store_key(model, store, spec, name, "fp32")
    manifest = build_feature_store(
        model, store, folder / key_digest(key), names, spec, key=key, device="cpu", progress=False
    )
    seconds = float(manifest.attrs["seconds"])
    return {"load_s": load_s, "videos_per_s": len(names) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [DEFAULT, *(n for n in args.backbones if n != DEFAULT)]
    with tempfile.TemporaryDirectory(prefix="backbone_throughput_") as tmp:
        store, videos = synthetic_store(Path(tmp) / "data", args.videos)
        results = {}
        for name in names:
            (Path(tmp) / name).mkdir()
            results[name] = measure(name, Path(tmp) / name, store, videos)
    base = results[DEFAULT]
    print(f"{args.videos} synthetic videos, {args.threads} threads, torch {torch.__version__}")
    print("| backbone | load s | load x default | videos/s | throughput x default |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['load_s']:.2f} | {r['load_s'] / base['load_s']:.1f} | "
            f"{r['videos_per_s']:.3f} | {r['videos_per_s'] / base['videos_per_s']:.3f} |"
        )


if __name__ == "__main__":
    main()
