"""Fashion-MNIST test accuracy of a ViT trained from scratch within conf/task/vit.yaml's 20-minute budget.

Runs `run.py task=vit` as a user would (conf/task/vit.yaml's model: 128 wide, 4 layers; held-out validation of
5,000 training images; the best checkpoint scored on the 10,000 test images), then prints the test accuracy,
per-class accuracy, training time and throughput from the run's metrics.json. Target: at least 91% (issue 5).

    SUITE_DATA=/work/shared/data python bench/vit_accuracy.py [extra run.py overrides]
"""

from __future__ import annotations

import sys

from quality import summary, trained

TARGET = 0.91


def main() -> None:
    run_dir, saved, history = trained("task=vit", *sys.argv[1:], needs="fashion_mnist/fashion_mnist.npz")
    m = saved["metrics"]
    print(summary(run_dir, saved, history, "images"))
    print("validation accuracy by epoch: " + " ".join(f"{h['val/accuracy']:.4f}" for h in history))
    print("test per-class accuracy: " + " ".join(f"{k[4:]}={v:.3f}" for k, v in m.items() if k.startswith("acc_")))
    print(f"TEST ACCURACY {m['accuracy']:.4f} (target {TARGET:.2f}: {'met' if m['accuracy'] >= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
