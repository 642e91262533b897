"""`sonosynth demo`: the whole product on built-in data, in one command, on a CPU.

Stages (each writes its own folder under OUT and is skipped when already complete, so a run
interrupted with Ctrl-C resumes where it stopped):

1. phantom   simulate a fetal-head dataset (OUT/data)            -> sonosynth.phantom
2. split     subject-wise train/val/test                          -> sonosynth.data.splits
   (--latent: autoencoder, a KL autoencoder on image patches (OUT/autoencoder-patches), then its
    decoder on whole images (OUT/autoencoder)                       -> sonosynth.autoencoder)
3. train     a mask-conditioned diffusion model (OUT/model-run)   -> sonosynth.diffusion.train
             (--latent: on the autoencoder's latents, at twice the side)
4. generate  synthetic pairs from deformed and shape-model masks  -> sonosynth.synthesis.generate
5. evaluate  segmenters on k real subjects, with and without them -> sonosynth.evaluation.downstream
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from sonosynth.data.format import Dataset
from sonosynth.devices import resolve_device
from sonosynth.settings import Config
from sonosynth.training.run import RunFolder

DATA, AUTOENCODER, RUN, SYNTH, REPORT = "data", "autoencoder", "model-run", "synthetic", "report"


@dataclass
class DemoConfig(Config):
    """Sizes of each stage; `full()` fits in about 20 CPU minutes, `fast()` in about 3."""

    what: ClassVar[str] = "demo"
    renamed: ClassVar[dict[str, str]] = {"image_size": "size", "model_size": "net_size", "train_steps": "max_steps"}

    n_cases: int = 160
    phantom_size: str = "96x64"  # width x height, like HC18's 800x540 aspect
    net_size: str = "small"
    size: int = 64
    generator_size: int | None = None  # the diffusion model's side; None: size
    max_steps: int = 1200
    batch_size: int = 8
    n_deform: int = 60
    n_shape: int = 60
    sample_steps: int = 20
    k: int = 5
    seeds: int = 2
    segment_net: str = "small"
    segment_steps: int = 400
    autoencoder_steps: int = 0  # > 0: latent diffusion on an autoencoder trained this many steps (`latent()`)
    autoencoder_channels: tuple[int, ...] = (32, 64, 64)  # one width per level: 4x downsampling
    seed: int = 0
    device: str = "auto"
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def full(cls, **overrides) -> DemoConfig:
        return cls(**overrides)

    @classmethod
    def fast(cls, **overrides) -> DemoConfig:
        settings = dict(
            n_cases=40,
            net_size="tiny",
            size=32,
            max_steps=40,
            batch_size=4,
            n_deform=8,
            n_shape=8,
            sample_steps=8,
            seeds=1,
            segment_net="tiny",
            segment_steps=40,
        )
        settings.update(overrides)
        return cls(**settings)

    def latent(self) -> DemoConfig:
        """The same demo as latent diffusion: an autoencoder on the phantom images, the denoiser on its latents,
        images at twice the side (the segmenters stay at `size`, so the evaluation costs the same)."""
        fast = self.net_size == "tiny"
        width, height = (int(v) for v in self.phantom_size.split("x"))
        return replace(self, phantom_size=f"{2 * width}x{2 * height}", generator_size=2 * self.size,
                       autoencoder_steps=60 if fast else 600,
                       autoencoder_channels=(8, 16) if fast else self.autoencoder_channels)

    @property
    def generator_side(self) -> int:
        return self.generator_size or self.size


@contextmanager
def _stage(name: str, config: DemoConfig, log: Callable[[str], None]) -> Iterator[None]:
    """Time one stage into `config.timings` and say so."""
    log(f"stage {name}: started")
    started = time.perf_counter()
    yield
    config.timings[name] = time.perf_counter() - started
    log(f"stage {name}: done in {config.timings[name]:.1f} s")


def run_demo(out: str | Path, config: DemoConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) every stage of the demo under `out`; returns the report folder."""
    resolve_device(config.device)  # fail before any stage starts
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    with _stage("phantom", config, log):
        data = out / DATA
        if not (data / "manifest.csv").is_file():
            from sonosynth.phantom.dataset import write_phantom_dataset
            from sonosynth.progress import progress_bar

            with progress_bar(total=config.n_cases, desc="phantom cases", unit="case") as bar:
                write_phantom_dataset(data, "fetal-head", config.n_cases, config.phantom_size, config.seed,
                                      overwrite=True, progress=bar.update)

    with _stage("split", config, log):
        if not any(r.split for r in Dataset.open(data).records):
            from sonosynth.data.splits import SplitConfig, split_dataset

            split_dataset(data, SplitConfig(by="subject", val=0.15, test=0.25, seed=config.seed))

    autoencoder = None
    if config.autoencoder_steps:
        with _stage("autoencoder", config, log):
            autoencoder = out / AUTOENCODER
            _train_autoencoder(data, autoencoder, config)  # each finished part is skipped

    with _stage("train", config, log):
        run = out / RUN
        if not RunFolder(run).has_model:
            _train_diffusion(data, run, config, autoencoder)

    with _stage("generate", config, log):
        synthetic = out / SYNTH
        if not (synthetic / "manifest.csv").is_file():
            _generate(run, data, synthetic, config)

    with _stage("evaluate", config, log):
        from sonosynth.evaluation.downstream import DownstreamConfig, run_downstream
        from sonosynth.segmentation.common import SegmentationConfig

        downstream = DownstreamConfig(
            ks=[str(config.k)],
            seeds=config.seeds,
            arms=["real", "real+synthetic"],
            segmentation=SegmentationConfig(
                size=config.size, net=config.segment_net, max_steps=config.segment_steps, seed=config.seed
            ),
        )
        report = run_downstream(data, out / REPORT, downstream, synthetic_path=synthetic, command="sonosynth demo",
                                device=config.device)

    config.timings["total"] = time.perf_counter() - started
    (out / "demo-timings.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return report


def _train_autoencoder(data: Path, run: Path, config: DemoConfig) -> None:
    from sonosynth.autoencoder.config import AutoencoderConfig
    from sonosynth.autoencoder.train import train_patches_then_whole

    steps, side = config.autoencoder_steps, config.generator_side
    ae_config = AutoencoderConfig(
        datasets=[str(data)], size=side, patch_size=min(64, side // 2), channels=config.autoencoder_channels,
        batch_size=config.batch_size, learning_rate=2e-4, max_steps=steps, adversarial_start=steps // 2,
        checkpoint_every=max(10, steps // 6), sample_every=max(10, steps // 2), seed=config.seed,
    )
    train_patches_then_whole(ae_config, run, decoder_steps=max(10, steps // 4), device=config.device)


def _train_diffusion(data: Path, run: Path, config: DemoConfig, autoencoder: Path | None = None) -> None:
    from sonosynth.diffusion.config import TrainConfig
    from sonosynth.diffusion.train import train
    from sonosynth.models.configs import ModelConfig

    train_config = TrainConfig(
        dataset=str(data),
        model=ModelConfig(kind="spade", size=config.net_size),
        autoencoder=None if autoencoder is None else str(autoencoder),
        size=config.generator_side,
        batch_size=config.batch_size,
        max_steps=config.max_steps,
        warmup_steps=min(100, config.max_steps // 10),
        checkpoint_every=max(10, config.max_steps // 6),
        sample_every=max(10, config.max_steps // 2),
        seed=config.seed,
    )
    resume = RunFolder(run).has_checkpoints
    train(train_config, run, resume=resume, device=config.device)


def _generate(run: Path, data: Path, synthetic: Path, config: DemoConfig) -> None:
    """Deformed and shape-model masks with widened sizes (the recommended recipe), merged into one dataset."""
    from sonosynth.synthesis.generate import GenerateConfig, generate_from_sources, recommended_widening
    from sonosynth.synthesis.masks import ShapeModelConfig

    hc_widen, size_widen = recommended_widening(Dataset.open(data))
    generate_from_sources(
        run, data, synthetic, {"deform": config.n_deform, "shape": config.n_shape},
        GenerateConfig(steps=config.sample_steps, seed=config.seed, device=config.device,
                       shape=ShapeModelConfig(size_widen=size_widen)),
        shape_hc_widen=hc_widen,
    )


def results_table(report: Path) -> str:
    return (report / "results.md").read_text()
