"""One factory for the CLIP backbone: small offline configs, EchoCLIP, or saved checkpoints.

Architectures are open_clip JSON files in ``cardiac_pipeline/model_configs`` registered with
open_clip's own factory (``open_clip.add_model_config``); nothing of open_clip is forked.

Registered architectures (all with open_clip's CLIP BPE tokenizer, 77 tokens):

- ``echo-vit-tiny``: open_clip VisionTransformer (112 px, patch 16, width 128, 3 layers,
  4 heads, average pooling; 0.7 M), 3-layer width-128 text transformer, 128-d embedding.
  The CPU default (``clip_arch`` in conf/base/globals.yml): the fastest to train of the
  small towers.
- ``echo-convnext-tiny``: timm ConvNeXt (depths 1-1-2-1, widths 32-256, 1.0 M parameters,
  registered in timm as ``echo_convnext_tiny``), same text tower; the ConvNeXt family of
  EchoCLIP at CPU size (about 1.4x the ViT's training cost).
- ``echo-convnext-atto``: the same with timm's stock ``convnext_atto`` tower (3.4 M, ~3x).
- ``echo-convnext-b-w``: EchoCLIP-sized (timm ConvNeXt-Base tower, 1024 features, 12-layer
  width-512 text transformer, 512-d embedding); random init, for GPU users.

The weights never come from the network: ``hf-hub:`` ids are looked up in the local Hugging
Face cache only, and every missing file raises an error that says how to fix it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import timm
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
ECHOCLIP_HF_ID = "hf-hub:mkaichristensen/echo-clip"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PARAMETERS_FILE = "conf/local/parameters.yml"

# timm ConvNeXt small enough for 2 CPU cores; a real ConvNeXt (timm's class and builder).
ECHO_CONVNEXT_TINY_ARGS: dict[str, Any] = {
    "depths": (1, 1, 2, 1),
    "dims": (32, 64, 128, 256),
    "conv_mlp": True,
}


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "initialized randomly" warning: weights are loaded after it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_notice() -> Iterator[None]:
    """open_clip warns on every model built without its own weights (root logger); the
    factory says instead where the weights came from."""
    root, notice = logging.getLogger(), _RandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


class BackboneWeightsNotFound(FileNotFoundError):
    """Raised when pretrained weights are not on this machine; the message says how to fix it."""


class Backbone(NamedTuple):
    """An open_clip CLIP model with what it needs around it (unpacks as a 4-tuple)."""

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _echo_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm entry point for the small ConvNeXt (no pretrained weights exist for it)."""
    if pretrained:
        raise ValueError("echo_convnext_tiny has no pretrained timm weights; use pretrained=False.")
    return timm.create_model(
        "convnext_atto", pretrained=False, **{**ECHO_CONVNEXT_TINY_ARGS, **kwargs}
    )


_echo_convnext_tiny.__name__ = "echo_convnext_tiny"


def register_model_configs(config_dir: Path = MODEL_CONFIG_DIR) -> list[str]:
    """Register our JSON architectures with open_clip (and our timm variant); idempotent."""
    if not timm.is_model("echo_convnext_tiny"):
        timm.models.register_model(_echo_convnext_tiny)
    names = sorted(p.stem for p in Path(config_dir).glob("*.json"))
    if not names:
        raise FileNotFoundError(f"No open_clip model configs (*.json) found in {config_dir}")
    if not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(Path(config_dir))
    return names


def list_backbones() -> list[str]:
    """Names of the offline architectures this project ships."""
    return register_model_configs()


def brings_own_weights(source: Any) -> bool:
    """A backbone source that carries its weights (``hf-hub:...``, ``local-dir:...``)."""
    return str(source or "").startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))


def _hf_cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_hf_hub_offline(hub_id: str, cache_dir: str | Path | None = None) -> Path:
    """Find the folder of an ``hf-hub:org/repo`` model in the local Hugging Face cache.

    Never downloads (``local_files_only``). Raises ``BackboneWeightsNotFound`` with the fix
    when the model is not cached.
    """
    repo_id = hub_id.removeprefix(HF_HUB_PREFIX)
    from huggingface_hub import snapshot_download

    folder: Path | None = None
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception as error:  # LocalEntryNotFoundError, offline errors, bad cache layout
        logger.debug("hf-hub lookup of %s failed: %s", repo_id, error)
    if folder is None or not (folder / "open_clip_config.json").is_file():
        name = repo_id.rsplit("/", 1)[-1]
        raise BackboneWeightsNotFound(
            f"Backbone '{HF_HUB_PREFIX}{repo_id}' is not in the local Hugging Face cache "
            f"({_hf_cache_dir(cache_dir)}), and this project never downloads.\n"
            "Fix: on a machine with internet run\n"
            f"    huggingface-cli download {repo_id} --local-dir {name}\n"
            f"  (or: hf download {repo_id} --local-dir {name}), copy the folder '{name}' "
            "(it holds open_clip_config.json and the weights) to this machine, then set in "
            f"{PARAMETERS_FILE}:\n"
            "    backbone:\n"
            f"      pretrained: local-dir:/path/to/{name}\n"
            "Alternatively copy that machine's Hugging Face cache folder "
            f"'models--{repo_id.replace('/', '--')}' into {_hf_cache_dir(cache_dir)}."
        )
    return folder


def _find_weights(folder: Path) -> Path | None:
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def check_local_dir(folder: str | Path) -> Path:
    """Check that a ``local-dir:`` folder has an open_clip config and weights; return it."""
    folder = Path(str(folder).removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    fix = (
        "Fix: point backbone.pretrained in "
        f"{PARAMETERS_FILE} at a folder that holds open_clip_config.json and the weights "
        "(for EchoCLIP: `huggingface-cli download mkaichristensen/echo-clip --local-dir echo-clip` "
        "on a machine with internet, then copy the folder here)."
    )
    if not folder.is_dir():
        raise BackboneWeightsNotFound(f"Backbone folder not found: {folder}. {fix}")
    if not (folder / "open_clip_config.json").is_file():
        raise BackboneWeightsNotFound(
            f"Backbone folder {folder} has no open_clip_config.json. {fix}"
        )
    if _find_weights(folder) is None:
        raise BackboneWeightsNotFound(
            f"Backbone folder {folder} has no weights file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}). {fix}"
        )
    return folder


def load_backbone_state_dict(path: str | Path, arch: str | None = None) -> dict[str, torch.Tensor]:
    """Read a backbone state dict from a ``.pt``/``.pth``/``.bin``/``.safetensors`` file.

    Accepts a bare state dict or ``{"arch": name, "state_dict": ...}`` (what
    ``save_backbone_checkpoint`` writes); when both ``arch`` values are known they must match.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneWeightsNotFound(
            f"Backbone checkpoint not found: {path}. Fix: set backbone.pretrained in "
            f"{PARAMETERS_FILE} to an existing checkpoint file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}), to local-dir:/folder, or to null for a "
            "randomly initialised backbone."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: Any = load_file(str(path), device="cpu")
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"Could not read backbone checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"Backbone checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict."
        )
    if "state_dict" in checkpoint:
        saved_arch = checkpoint.get("arch")
        if arch is not None and saved_arch is not None and saved_arch != arch:
            raise ValueError(
                f"Backbone checkpoint {path} was saved for architecture '{saved_arch}', "
                f"not '{arch}'. Fix: set backbone.name to '{saved_arch}' in {PARAMETERS_FILE}."
            )
        checkpoint = checkpoint["state_dict"]
    state_dict = dict(checkpoint)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def save_backbone_checkpoint(model: nn.Module, arch: str, path: str | Path) -> Path:
    """Save a backbone as ``{"arch": arch, "state_dict": ...}`` (readable by ``create_backbone``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save({"arch": arch, "state_dict": state_dict}, path)
    return path


def _model_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", OPENAI_DATASET_STD))
    return mean, std


def create_backbone(
    name: str,
    pretrained: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    *,
    seed: int | None = None,
    hf_cache_dir: str | Path | None = None,
    load_weights: bool = True,
) -> Backbone:
    """Build the CLIP backbone, offline, from one of these sources.

    - ``name`` a registered architecture (``echo-convnext-tiny`` ...) and ``pretrained``
      None: random init (``seed`` makes it reproducible).
    - ``name`` an architecture and ``pretrained`` a checkpoint file (.pt/.pth/.bin/.safetensors,
      a state dict or ``{"arch", "state_dict"}``): loaded strictly.
    - ``local-dir:/folder`` (open_clip_config.json + weights), given as ``name`` or as
      ``pretrained`` (then it wins and ``name`` is only used in messages).
    - ``hf-hub:org/repo`` (e.g. EchoCLIP, ``hf-hub:mkaichristensen/echo-clip``): looked up in
      the local Hugging Face cache only, then loaded as a ``local-dir:``.

    A ``name`` with a schema plus a checkpoint file loads the folder's model, then the file
    (a fine-tuned EchoCLIP). ``load_weights=False`` builds the architecture (and tokenizer,
    mean, std) of any of these with random weights: the from-scratch ablation of EchoCLIP.
    Returns ``Backbone(model, tokenizer, mean, std)``.
    """
    register_model_configs()
    pretrained = None if pretrained is None or str(pretrained) == "" else str(pretrained)
    if not load_weights and not brings_own_weights(pretrained):
        pretrained = None
    if brings_own_weights(pretrained):
        source, weights_file = pretrained, None
    else:
        source, weights_file = name, pretrained
    if weights_file is not None and not brings_own_weights(source):
        suffix = Path(weights_file).suffix
        if suffix not in CHECKPOINT_SUFFIXES and not Path(weights_file).is_file():
            raise ValueError(
                f"backbone.pretrained '{weights_file}' is neither a checkpoint file "
                f"({', '.join(CHECKPOINT_SUFFIXES)}) nor a local-dir:/hf-hub: source; open_clip "
                "pretrained tags are not supported because they need the network. Fix it in "
                f"{PARAMETERS_FILE}."
            )

    if source.startswith(HF_HUB_PREFIX):
        source = LOCAL_DIR_PREFIX + str(resolve_hf_hub_offline(source, hf_cache_dir))
    if source.startswith(LOCAL_DIR_PREFIX):
        source = LOCAL_DIR_PREFIX + str(check_local_dir(source))
    elif source not in open_clip.list_models():
        raise ValueError(
            f"Unknown backbone '{source}'. Registered: {list_backbones()}; or use "
            f"'{ECHOCLIP_HF_ID}', 'local-dir:/folder'."
        )

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        with _without_random_init_notice():
            model = open_clip.create_model(
                source,
                pretrained=None,
                load_weights=load_weights,
                device="cpu",
                pretrained_image=False,
                pretrained_text=False,
            )
    if weights_file is not None:  # always None when not load_weights
        state_dict = load_backbone_state_dict(
            weights_file, arch=None if brings_own_weights(source) else source
        )
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"Backbone checkpoint {weights_file} does not fit architecture '{name}': {error}"
            ) from error
    origin = weights_file or (source if brings_own_weights(source) and load_weights else None)
    logger.info("backbone %s: %s", name, f"weights from {origin}" if origin else "random init")
    model = model.to(device)
    tokenizer = open_clip.get_tokenizer(source)
    mean, std = _model_mean_std(model)
    return Backbone(model=model, tokenizer=tokenizer, mean=mean, std=std)
