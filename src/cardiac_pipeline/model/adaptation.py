"""The adaptation modes as one table: ``training.adaptation`` names a row.

Each mode says what it trains on (frame features of the frozen trunk, or clips), which
parameter groups train, which stages run (``cached``: ``fit`` on frame features;
``full`` / ``lora``: ``fit`` on clips), and what the benchmark and the ``train`` (torchrun)
entry point do with it. The mode string is compared here only: the rest of the code asks
the row (``adaptation(name).needs_frame_features``, ``.stages``, ...). A new mode is a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardiac_pipeline.errors import UserError

CACHED_STAGE = "cached"  # the head on frame features (trunk frozen, text tower not run)


@dataclass(frozen=True)
class Adaptation:
    """One ``training.adaptation`` mode."""

    name: str
    stages: tuple[str, ...]  # run in order; the last one's selected weights are the model
    trains: str  # parameter groups that train (docs/method.md's table)
    learn_prompts: bool  # the text tower is not run: the prompt embeddings are parameters
    adapters: bool  # LoRA adapters on the towers (model/lora.py), the towers' weights frozen
    any_model: bool  # trains any module given (the R(2+1)D baseline), not only CardiacCLIP
    benchmark: str  # what a benchmark CardiacCLIP method does under it
    train_entry: str  # what ``python -m cardiac_pipeline train`` (torchrun) does under it

    @property
    def needs_frame_features(self) -> bool:
        """Whether it trains on (and may predict from) the frame-feature store."""
        return CACHED_STAGE in self.stages

    def stage_folder(self, stage: str) -> str:
        """The stage's sub-folder of the run's work folder ('' = the folder itself)."""
        return stage if len(self.stages) > 1 or stage == CACHED_STAGE else ""


ADAPTATIONS: dict[str, Adaptation] = {}


def register_adaptation(mode: Adaptation) -> Adaptation:
    """Add a row to the table (its ``name`` becomes a ``training.adaptation`` choice)."""
    ADAPTATIONS[mode.name] = mode
    return mode


register_adaptation(
    Adaptation(
        name="cached",
        stages=(CACHED_STAGE,),
        trains="EchoZoom's norm and projection, MFL, prompt embeddings (head, mfl)",
        learn_prompts=True,
        adapters=False,
        any_model=False,
        benchmark="trains on the shared frame-feature store; predicts from it",
        train_entry="needs the frame-feature store (the fewshot pipeline builds it)",
    )
)
register_adaptation(
    Adaptation(
        name="full",
        stages=("full",),
        trains="both towers, MFL, head (image_tower, text_tower, mfl, head)",
        learn_prompts=False,
        adapters=False,
        any_model=True,
        benchmark="trains on clips; the random-init and R(2+1)D methods always use it",
        train_entry="trains on clips across the ranks (DDP)",
    )
)
register_adaptation(
    Adaptation(
        name="cached_then_full",
        stages=(CACHED_STAGE, "full"),
        trains="cached's groups, then every group from there (LP-FT)",
        learn_prompts=True,
        adapters=False,
        any_model=False,
        benchmark="the cached stage on the shared store, then full on clips",
        train_entry="needs the frame-feature store for its first stage",
    )
)
register_adaptation(
    Adaptation(
        name="lora",
        stages=("lora",),
        trains="LoRA adapters of both towers (training.lora), MFL, head",
        learn_prompts=False,
        adapters=True,
        any_model=False,
        benchmark="trains on clips with adapters; no frame-feature store",
        train_entry="trains on clips across the ranks (DDP), towers frozen but adapters",
    )
)

ADAPTATION_MODES: tuple[str, ...] = tuple(ADAPTATIONS)
# A random trunk's frozen features carry nothing to adapt to: the whole network trains.
RANDOM_START = "full"


def adaptation(name: str) -> Adaptation:
    """The row of ``training.adaptation: name``; one line naming the choices otherwise."""
    if name not in ADAPTATIONS:
        raise UserError(
            f"training.adaptation: {name!r} is not a mode; use one of {', '.join(ADAPTATIONS)}"
        )
    return ADAPTATIONS[name]


def for_random_start(mode: Adaptation) -> Adaptation:
    """The mode a run from random weights uses instead of ``mode``."""
    return ADAPTATIONS[RANDOM_START]


def predicts_from_features(name: str | None) -> bool:
    """Whether a checkpoint adapted in mode ``name`` may predict from the frame-feature
    store: every stage trained on it, so its trunk is the store's (older checkpoints: None)."""
    mode = ADAPTATIONS.get(str(name))
    return mode is not None and set(mode.stages) == {CACHED_STAGE}
