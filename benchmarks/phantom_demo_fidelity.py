"""Mask fidelity of the demo's synthetic pairs: Dice of a real-trained segmenter against each conditioning mask.

Run after `sonosynth demo --out DEMO` and `sonosynth segment train DEMO/data --out SEG --size 64 --net-size small
--max-steps 400 --val-every 100`:  python benchmarks/phantom_demo_fidelity.py DEMO SEG
"""

import sys

import numpy as np

from sonosynth.data.format import Dataset
from sonosynth.synthesis.fidelity import score_samples, segmenter_predictor


def main(demo: str, segrun: str) -> None:
    predict, k = segmenter_predictor(segrun)
    test = Dataset.open(f"{demo}/data").subset("test")
    real = np.array(score_samples([s.image for s in test], [s.mask for s in test], predict, k))
    synth = list(Dataset.open(f"{demo}/synthetic"))
    print("| pairs | n | fidelity Dice mean ± sd | median |\n|---|---|---|---|")
    for source in ("deform", "shape"):
        part = [s for s in synth if s.record.extra["mask_source"] == source]
        d = np.array(score_samples([s.image for s in part], [s.mask for s in part], predict, k))
        print(f"| {source} | {len(d)} | {d.mean():.3f} ± {d.std():.3f} | {np.median(d):.3f} |")
    print(f"| real test images (reference) | {len(real)} | {real.mean():.3f} ± {real.std():.3f} "
          f"| {np.median(real):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
