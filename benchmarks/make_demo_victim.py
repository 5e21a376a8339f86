"""Regenerates fidelity/data/digits_784_32_10.npz, the embedded demo victim.

    python benchmarks/make_demo_victim.py
"""

from pathlib import Path

from fidelity import victims

if __name__ == "__main__":
    x, y = victims.digits(28)
    net = victims.train_classifier(x, y, [32], seed=0, steps=1500)
    print("training accuracy", (net(x).argmax(1) == y).mean())
    net.save(Path(__file__).resolve().parents[1] / "fidelity" / "data" / victims.DEMO_FILE)
