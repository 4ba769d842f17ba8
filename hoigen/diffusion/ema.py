"""An exponential moving average of the trained weights (optional, ``--ema-decay``).

``shadow = decay * shadow + (1 - decay) * weight`` after every optimiser step, with the usual
warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` so early averages are not dominated by the
random start. The averaged weights are what ``hoigen train`` saves (and validates with) when EMA is
on. ``state_dict``/``load_state_dict`` let ``accelerate`` checkpoint it with the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class ParameterEMA:
    """EMA of a list of parameters (kept in float32 on the parameters' device)."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.parameters = list(parameters)
        self.decay = float(decay)
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in self.parameters]
        self._backup: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.mul_(decay).add_(param.detach().float(), alpha=1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the averaged weights into the model (``swap_out`` restores the live ones)."""
        self._backup = [p.detach().clone() for p in self.parameters]
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            param.copy_(shadow.to(param.dtype))

    @torch.no_grad()
    def swap_out(self) -> None:
        if self._backup is None:
            return
        for backup, param in zip(self._backup, self.parameters, strict=True):
            param.copy_(backup)
        self._backup = None

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow = [s.to(p.device).float() for s, p in zip(state["shadow"], self.parameters, strict=True)]
