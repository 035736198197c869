"""Attention maps of a trained ViT on a few Fashion-MNIST test images: the `mode=attention` picture.

Writes the first N test images as PNG files into a temporary folder, then runs, as a user would,

    python run.py task=vit mode=predict run_dir=RUN image=<that folder> attention_png=OUT

which prints each image's top-5 classes and draws the class token's attention rollout over the patches (mean
pooling: the average over all patches) beside each image in OUT.

    SUITE_DATA=/work/shared/data python bench/vit_attention.py RUN [--out attention.png] [--n 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="attention.png")
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    data = np.load(Path(os.environ.get("SUITE_DATA", "/work/shared/data")) / "fashion_mnist" / "fashion_mnist.npz")
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.n):
            Image.fromarray(data["x_test"][i]).save(Path(folder) / f"test_{i:02d}_label{data['y_test'][i]}.png")
        args_ = ["task=vit", "mode=predict", f"run_dir={Path(args.run_dir).resolve()}", f"image={folder}",
                 f"attention_png={Path(args.out).resolve()}"]
        out = subprocess.run([sys.executable, str(ROOT / "run.py"), *args_], cwd=ROOT, capture_output=True, text=True)
    print(out.stdout.replace(folder + "/", ""), end="")
    if out.returncode:
        sys.exit(out.stderr[-2000:])


if __name__ == "__main__":
    main()
