"""What every benchmark task provides to the runner."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class Batch:
    tensors: tuple[Tensor, ...]
    tokens: int  # tokens processed by one forward pass (for tokens/s)


class Task:
    """A task: data, a model built on the shared backbone for one geometry, a training loss and metrics.

    ``metric`` names the headline metric of :meth:`evaluate` (compared across geometries), ``higher_is_better``
    its direction, ``sweep`` the config key swept by the suite (e.g. ``head_dim``) or ``None``.
    """

    name: ClassVar[str]
    data_kind: ClassVar[str | None] = None     # "text" | "closure" | None (generated)
    default_data: ClassVar[Path | None] = None
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    curve_metric: ClassVar[str]                # the metric recorded at every evaluation (curves)
    sweep: ClassVar[str | None] = None

    def __init__(self, config: dict[str, Any], data_path: Path | None, device: torch.device) -> None:
        self.config = config
        self.data_path = Path(data_path) if data_path is not None else self.default_data
        self.device = device

    def model_config(self, geometry: str, **overrides: Any):
        """The backbone's ``TransformerConfig`` from the task config: identical for every geometry."""
        from geoattn.models import TransformerConfig

        c = self.config
        fields = dict(
            vocab_size=self.vocab_size, d_model=c.get("d_model"), n_heads=c.get("n_heads"), n_layers=c["n_layers"],
            d_ff=c.get("d_ff"), dropout=c.get("dropout", 0.0), max_len=c.get("max_len"),
            positional=c.get("positional", "learned"), bias=c.get("bias", True), geometry=geometry,
            geometry_params=dict(c.get("geometry_params", {})), backend=c.get("backend", "auto"),
        )
        fields.update(overrides)
        return TransformerConfig(**fields)

    vocab_size: int

    STRETCHED: ClassVar[tuple[str, ...]] = ("iters", "lr_decay_iters", "warmup_iters", "eval_interval")

    @classmethod
    def resolve_budget(cls, config: dict[str, Any], data_path: str | Path | None) -> dict[str, Any]:
        """The config with its budget in the runner's terms (``iters``, ``eval_interval``): a ``stretch`` factor
        multiplies the steps of the whole schedule (:attr:`STRETCHED`: the same schedule, stretched); a task
        that states its budget otherwise (``wordnet-reconstruction``: epochs of its data) converts it here."""
        factor = config.get("stretch")
        if factor is None:
            return config
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"stretch must be an int ≥ 1 (the factor on the schedule's steps), got {factor!r}")
        return dict(config, **{k: config[k] * factor for k in cls.STRETCHED if k in config})

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to resume this task's batch stream besides the generator (none by default)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""

    def build_model(self, geometry: str) -> nn.Module:
        raise NotImplementedError

    def train_batch(self, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def evaluate_during(self, model: nn.Module) -> dict[str, float]:
        """An evaluation of the learning curve before the final one (the same as :meth:`evaluate` unless the
        task makes it cheaper)."""
        return self.evaluate(model)
