"""Training checkpoints as safetensors + JSON (no pickle), written atomically, the last K kept.

```
RUN/checkpoints/step-000120/
  model.safetensors       raw weights (state_dict of the denoiser; a Stable Diffusion run: what it trains)
  ema.safetensors         EMA shadow weights, by parameter name (runs without EMA have none)
  optimizer.safetensors   optimizer state tensors, flattened as state.<param>.<name>
  rng-rank<R>.safetensors torch (and CUDA) generator states of each process
  state.json              step, optimizer/LR-scheduler/EMA/grad-scaler scalars, RNG scalars; written last
```
A checkpoint is built in `step-XXXXXX.tmp` and renamed when complete, so a run killed while
writing leaves at most a `.tmp` folder, which is ignored and cleaned up by the next write.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sonosynth.errors import SonosynthError
from sonosynth.files import Inputs, guard_output, read_json_object, write_json_atomic, writing
from sonosynth.training.run import CHECKPOINTS_DIR

STATE_JSON = "state.json"
T = TypeVar("T")
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place, with state.json), oldest first."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_JSON).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Create (afresh) the temporary folder a checkpoint is written into."""
    tmp = Path(run_dir) / CHECKPOINTS_DIR / f"{checkpoint_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp: Path, state: dict[str, Any], keep: int) -> Path:
    """Write state.json last, rename the folder into place and drop all but the newest `keep`."""
    write_json_atomic(tmp / STATE_JSON, state, indent=1)
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    if final.exists():  # the same step written again (e.g. the end of a resumed run): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    rotate_checkpoints(final.parent.parent, keep)
    return final


def rotate_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest `keep`, and stale `.tmp` folders."""
    found = list_checkpoints(run_dir)
    for _, path in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(path, ignore_errors=True)
    folder = Path(run_dir) / CHECKPOINTS_DIR
    for path in folder.glob("step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return read_json_object(checkpoint / STATE_JSON, "checkpoint state")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors needs contiguous, non-shared CPU tensors."""
    with writing(path):
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SonosynthError(f"{path}: missing from the checkpoint")
    return load_file(str(path), device=str(device))


# ---- optimizer state: tensors into safetensors, the rest into JSON ------------------------------


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---- random number generator states -------------------------------------------------------------


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The process-global generators (dropout and library code may use them)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"].to("cpu", torch.uint8))
    cuda = sorted((int(k.split(".")[1]), v) for k, v in tensors.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v.to("cpu", torch.uint8) for _, v in cuda])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---- the training state, as the loop saves and restores it ----------------------------------------


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # e.g. the LR lambdas, which are rebuilt from the config


def checkpoint_to_resume(run_dir: Path, config: Any, fingerprint: str, must_match: tuple[str, ...]) -> Path | None:
    """The latest complete checkpoint, after checking that `config` (a training config; `must_match` names its
    fields that may not change on resume) and the training pairs are those it was written with."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return None
    state = read_state(checkpoint)
    saved = type(config).from_dict(state["config"], origin=str(checkpoint))
    differing = [name for name in must_match
                 if _normalised(getattr(saved, name)) != _normalised(getattr(config, name))]
    if differing:
        details = ", ".join(f"{n}: {_normalised(getattr(saved, n))!r} -> {_normalised(getattr(config, n))!r}"
                            for n in differing)
        raise SonosynthError(f"{checkpoint}: cannot resume, the config changed ({details})")
    if state.get("dataset_fingerprint") != fingerprint:
        scans = f" or the unannotated scans of {config.unannotated}" if getattr(config, "unannotated", None) else ""
        raise SonosynthError(f"{checkpoint}: cannot resume, the training pairs of {config.dataset}{scans} changed")
    return checkpoint


def _normalised(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def save_training_state(accelerator: Any, run_dir: Path, step: int, model: Any, ema: Any, optimizer: Any,
                        lr_scheduler: Any, config: Any, fingerprint: str) -> None:
    """One checkpoint of everything exact resume needs: every process writes its RNG state, the main
    process the weights, EMA, optimizer and state.json (last, so a complete folder means a usable one)."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        begin_checkpoint(run_dir, step)
    accelerator.wait_for_everyone()
    tmp = Path(run_dir) / CHECKPOINTS_DIR / f"{checkpoint_name(step)}.tmp"
    rng_tensors, rng_meta = capture_rng_state()
    save_tensors(tmp / f"rng-rank{rank}.safetensors", rng_tensors)
    rng_metas = gather_object([rng_meta]) if world > 1 else [rng_meta]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        names = [n for n, _ in model.named_parameters()]
        save_tensors(tmp / "model.safetensors", model.state_dict())
        if ema is not None:
            save_tensors(tmp / "ema.safetensors", dict(zip(names, ema.shadow_params, strict=True)))
        opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        state = {
            "step": step,
            "world_size": world,
            "dataset_fingerprint": fingerprint,
            "config": config.to_dict(),
            "optimizer": opt_meta,
            "lr_scheduler": jsonable(lr_scheduler.state_dict()),
            "ema": None if ema is None else {k: v for k, v in ema.state_dict().items() if k != "shadow_params"},
            "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": {str(r): meta for r, meta in enumerate(rng_metas)},
        }
        finish_checkpoint(tmp, state, config.keep_checkpoints)
    accelerator.wait_for_everyone()


def restore_weights(checkpoint: Path, model: Any, ema: Any) -> dict[str, Any]:
    """Weights and EMA (unless None) into the (not yet prepared) model; returns the checkpoint's state."""
    state = read_state(checkpoint)
    model.load_state_dict(load_tensors(checkpoint / "model.safetensors"))
    if ema is None:
        return state
    names = [n for n, _ in model.named_parameters()]
    shadow = load_tensors(checkpoint / "ema.safetensors")
    ema.load_state_dict({**state["ema"], "shadow_params": [shadow[n] for n in names]})
    return state


def restore_optimization(checkpoint: Path, state: dict[str, Any], optimizer: Any, lr_scheduler: Any,
                         accelerator: Any) -> None:
    """Optimizer, LR schedule, grad scaler and this process's RNG state (after `accelerator.prepare`)."""
    optimizer.load_state_dict(unflatten_optimizer_state(
        load_tensors(checkpoint / "optimizer.safetensors", accelerator.device), state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if accelerator.scaler is not None and state.get("grad_scaler"):
        accelerator.scaler.load_state_dict(state["grad_scaler"])
    rank = accelerator.process_index
    rng_file = checkpoint / f"rng-rank{rank}.safetensors"
    if rng_file.is_file():
        restore_rng_state(load_tensors(rng_file), state["rng"][str(rank)])


def load_init_weights(model: Any, weights_file: Path, source: str) -> None:
    """Start `model` from the weights of an earlier run (`--init`): every tensor must be there, with its shape."""
    if not weights_file.is_file():
        raise SonosynthError(f"{source}: no {weights_file.name} to start from (not a finished run?)")
    weights = load_file(str(weights_file))
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    reshaped = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        example = (reshaped or missing or unexpected)[0]
        raise SonosynthError(f"{source}: its weights do not fit this model ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. {example}); "
                             "--init needs the same network and labels")
    model.load_state_dict(weights)


def ema_copy(model: Any, ema: Any) -> Any:
    """A copy of the model holding the EMA weights (the training model is left untouched)."""
    import copy

    averaged = copy.deepcopy(model)
    ema.copy_to(averaged.parameters())
    return averaged.eval()


# ---- a training run's lifecycle --------------------------------------------------------------------


def train_cleanly(run_dir: Path, body: Callable[[list[bool]], T], inputs: Inputs = ()) -> T:
    """Run `body(looping)` (a training loop that appends to `looping` once it starts stepping); on failure
    (an error, a non-finite loss, Ctrl-C) remove what it created unless a checkpoint survives, and say so.

    The run folder first passes the output guard: it may not be, hold or lie inside one of `inputs` (the
    training data, an autoencoder, a base or init model). Before the first checkpoint nothing is left behind:
    a new run folder disappears, an existing one keeps only what was there before. After one, the run is
    kept and the error says to continue with --resume.
    """
    import sys

    guard_output(run_dir, inputs)
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    looping: list[bool] = []
    try:
        return body(looping)
    except BaseException as exc:
        note = _after_failure(run_dir, before, bool(looping))
        if isinstance(exc, SonosynthError) and note:
            raise SonosynthError(f"{exc}; {note}") from None
        if note:
            print(f"note: {note}", file=sys.stderr)
        raise


def _after_failure(run_dir: Path, before: set[Path] | None, looping: bool) -> str:
    """Remove what a failed call created unless a checkpoint survives; say what is left (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0 or not run_dir.is_dir():
        return ""
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        return f"{run_dir} keeps checkpoint {latest.name}: continue with --resume" if looping else ""
    created = [run_dir] if before is None else sorted(set(run_dir.iterdir()) - before)
    for path in created:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return f"nothing was kept in {run_dir} (no checkpoint yet)" if created else ""
