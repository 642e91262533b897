"""Samplers by name. All share the training noise schedule; only the way of stepping differs.

- `dpm++` (default): DPM-Solver++ (2nd order multistep), good images in 20-25 steps.
- `dpm++sde`: its stochastic (SDE) form: fresh noise every step, like `ddpm`, in 20-50 steps.
- `unipc`: UniPC multistep, a similar few-step solver.
- `ddim`: deterministic DDIM, for comparison.
- `ddpm`: the ancestral sampler the model was trained for; needs ~1000 steps.
- `euler`: flow matching's Euler steps (diffusers' `FlowMatchEulerDiscreteScheduler`), for runs trained with
  `prediction_type: flow`, whose straight paths need few steps; `dpm++` and `unipc` sample those runs too (on
  flow sigmas), the others do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sonosynth.errors import SonosynthError

if TYPE_CHECKING:
    import torch

SCHEDULERS = ("dpm++", "dpm++sde", "unipc", "ddim", "ddpm", "euler")
FLOW_SCHEDULERS = ("euler", "dpm++", "unipc")  # those that sample a flow-matching run
DEFAULT_STEPS = {"dpm++": 25, "dpm++sde": 25, "unipc": 25, "ddim": 50, "ddpm": 1000, "euler": 8}


def _scheduler_classes() -> dict[str, Any]:
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    return {
        "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpm++sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "unipc": (UniPCMultistepScheduler, {}),
        "ddim": (DDIMScheduler, {}),
        "ddpm": (DDPMScheduler, {}),
        "euler": (FlowMatchEulerDiscreteScheduler, {}),
    }


def is_flow(config: Any) -> bool:
    """Whether a saved scheduler config is a flow-matching schedule (a run trained with `prediction_type: flow`)."""
    config = dict(config or {})
    return (config.get("prediction_type") == "flow_prediction" or bool(config.get("use_flow_sigmas"))
            or config.get("_class_name") == "FlowMatchEulerDiscreteScheduler"
            or ("shift" in config and "beta_schedule" not in config))


def _flow_scheduler(name: str, num_train_timesteps: int, shift: float) -> Any:
    if name not in FLOW_SCHEDULERS:
        raise SonosynthError(f"scheduler '{name}' steps a diffusion noise schedule; a flow-matching run samples with "
                             f"{', '.join(FLOW_SCHEDULERS)}")
    cls, defaults = _scheduler_classes()[name]
    if name == "euler":
        return cls(num_train_timesteps=num_train_timesteps, shift=shift)
    return cls(**defaults, num_train_timesteps=num_train_timesteps, use_flow_sigmas=True, flow_shift=shift,
               prediction_type="flow_prediction")


def make_scheduler(
    name: str,
    prediction_type: str | None = None,
    num_train_timesteps: int | None = None,
    config: dict[str, Any] | None = None,
) -> Any:
    """A diffusers scheduler by name.

    `config` is the training scheduler's config (e.g. `pipeline.scheduler.config`): it carries the
    beta schedule, so switching sampler keeps the noise schedule the model learned.
    `prediction_type` (epsilon | v_prediction | sample | flow) and `num_train_timesteps` override it. A flow
    schedule (`prediction_type` flow, or a flow run's saved config) takes only `FLOW_SCHEDULERS`.
    """
    classes = _scheduler_classes()
    if name not in classes:
        raise SonosynthError(f"unknown scheduler '{name}' (choose from {', '.join(SCHEDULERS)})")
    saved = dict(config or {})
    if prediction_type == "flow" or (prediction_type is None and is_flow(saved)):
        steps = int(num_train_timesteps or saved.get("num_train_timesteps", 1000))
        return _flow_scheduler(name, steps, float(saved.get("shift", saved.get("flow_shift", 1.0)) or 1.0))
    if name == "euler":
        raise SonosynthError("scheduler 'euler' samples flow-matching runs (prediction_type flow); this run is a "
                             "diffusion model: use dpm++, dpm++sde, unipc, ddim or ddpm")
    cls, defaults = classes[name]
    overrides: dict[str, Any] = dict(defaults)
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise SonosynthError(f"unknown prediction_type '{prediction_type}' (epsilon, v_prediction, sample)")
        overrides["prediction_type"] = prediction_type
    if num_train_timesteps is not None:
        overrides["num_train_timesteps"] = int(num_train_timesteps)
    if config is not None:
        return cls.from_config(dict(config), **overrides)
    overrides.setdefault("prediction_type", "epsilon")
    overrides.setdefault("num_train_timesteps", 1000)
    return cls(**overrides)


def probe_scheduler(scheduler: Any, where: str) -> None:
    """A few sampling steps of a copy of `scheduler` on a tiny zero sample: a saved noise schedule that cannot
    sample (no timesteps, betas of the wrong length, a field of the wrong type) is one line naming `where`
    when the model is loaded, not a traceback mid-generation."""
    import copy
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = copy.deepcopy(scheduler)
            probe.set_timesteps(4)
            sample = torch.zeros(1, 1, 8, 8)
            for t in probe.timesteps[:2]:
                sample = probe.step(torch.zeros_like(sample), t, sample).prev_sample
        finite = bool(torch.isfinite(sample).all())
    except Exception as exc:  # diffusers raises many kinds for a malformed schedule: all are this one problem
        raise SonosynthError(f"{where}: the saved noise schedule cannot sample ({' '.join(str(exc).split())[:200]})") \
            from None
    if not finite:
        raise SonosynthError(f"{where}: the saved noise schedule gives non-finite values")


def scheduler_name(scheduler: Any) -> str:
    """The short name of a scheduler instance (for provenance columns), or its class name."""
    config = getattr(scheduler, "config", {})
    for name, (cls, defaults) in _scheduler_classes().items():
        if type(scheduler) is cls and all(config.get(k, v) == v for k, v in defaults.items()):
            return name
    return type(scheduler).__name__


def prediction_to_epsilon(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                          prediction_type: str) -> torch.Tensor:
    """The noise a prediction implies, whatever the model was trained to predict."""
    alpha_bar = alpha_bar.to(x_t.dtype)
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * prediction + (1 - alpha_bar).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - alpha_bar.sqrt() * prediction) / (1 - alpha_bar).sqrt()
    raise SonosynthError(f"unknown prediction type '{prediction_type}'")
