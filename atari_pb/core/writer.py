"""A run directory's human-readable outputs: config.yaml (what actually ran), metrics.jsonl and
TensorBoard events. Only the writing process (rank 0) is `active`; the others write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


class RunWriter:
    def __init__(self, out: str | Path, active: bool = True, resume_step: int | None = None):
        self.out = Path(out)
        self.active = active
        self.tb = None
        if not active:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = self.out / METRICS
        if resume_step is not None and metrics.exists():  # drop what a killed run logged after its checkpoint
            kept = [ln for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
            metrics.write_text("".join(ln + "\n" for ln in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.out / "tb"), purge_step=resume_step)

    def config(self, cfg: Any, command: str) -> None:
        """config.yaml: the resolved configuration (a dataclass) under a comment naming the command."""
        if self.active:
            (self.out / CONFIG).write_text(f"# {command}\n" + OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
