"""The benchmark tasks, by name."""
from __future__ import annotations

from .base import Batch, Task
from .listops import ListOps
from .reconstruction import WordNetNouns, WordNetReconstruction
from .shakespeare import ShakespeareChar, ShakespeareSeq2Seq
from .wordnet import WordNetHierarchy

TASKS: dict[str, type[Task]] = {t.name: t for t in (ShakespeareChar, WordNetHierarchy, WordNetReconstruction, ListOps,
                                                ShakespeareSeq2Seq, WordNetNouns)}

__all__ = ["TASKS", "Batch", "Task"]
