"""Samplers by name: ``ddim`` (the original release's), ``unipc`` and ``dpm++`` (DPM-Solver++).

Each is a diffusers scheduler built from the loaded pipeline's own scheduler config, so the noise
schedule (betas, prediction type, timestep spacing) stays the model's; only the solver changes.
DDIM runs with eta 0 and the multistep solvers are deterministic, so an image depends only on its
initial noise (its seed). UniPC and DPM-Solver++ reach DDIM-50 quality in about 20 steps.
"""

from __future__ import annotations

from typing import Any

from hoigen.diffusion.options import SCHEDULER_NAMES  # noqa: F401  (declared with the options)
from hoigen.errors import HoigenError


def make_scheduler(name: str, config: Any) -> Any:
    """A scheduler of kind ``name`` on the noise schedule of ``config`` (a scheduler config)."""
    from hoigen.diffusion.backend import quiet

    with quiet():
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

        if name == "ddim":
            return DDIMScheduler.from_config(config)
        if name == "unipc":
            return UniPCMultistepScheduler.from_config(config)
        if name == "dpm++":
            return DPMSolverMultistepScheduler.from_config(
                config, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
            )
    raise HoigenError(f"--scheduler must be one of {', '.join(SCHEDULER_NAMES)}, got {name!r}")


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap ``pipe.scheduler`` for the named sampler (same schedule); a no-op when it already is one."""
    kinds = {"ddim": "DDIMScheduler", "unipc": "UniPCMultistepScheduler", "dpm++": "DPMSolverMultistepScheduler"}
    if type(pipe.scheduler).__name__ == kinds.get(name):
        return
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
