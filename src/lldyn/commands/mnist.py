"""``lldyn mnist``: the paper's MNIST experiment — train a LeNet, decompose one-step updates into A·K·G."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mnist", help="train a LeNet on MNIST and show what one update on each digit does to the others",
        description="Train a LeNet on real MNIST (paper setup: 2,000 images, SGD lr 1e-3, momentum 0.9, "
                    "batch 64) and, at a few checkpoints, compare the actual one-step change of log π with "
                    "the exact decomposition -eta*A*K*G. Writes results.json and figures/ into --out.")
    p.add_argument("--out", required=True, help="run directory to create (results.json, figures/)")
    p.add_argument("--data", default=None,
                   help="folder with MNIST's *images-idx3-ubyte[.gz] and *labels-idx1-ubyte[.gz] (the standard "
                        "files; default: scikit-learn's 8x8 digits, upsampled, an offline stand-in that is not MNIST)")
    p.add_argument("--config", default=None, help="TOML file with MnistConfig settings (flags win)")
    p.add_argument("--train-size", type=int, default=None, help="training images (default 2000)")
    p.add_argument("--test-size", type=int, default=None, help="held-out images for accuracy and probes (default 1000)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 30)")
    p.add_argument("--seed", type=int, default=None, help="seed for the split, init and sampling (default 0)")
    p.add_argument("--probes-per-class", type=int, default=None, help="probe digits x_o per class (default 10)")
    p.add_argument("--updates-per-class", type=int, default=None,
                   help="single-example updates x_u per class (default 5)")
    p.add_argument("--probe-lr", type=float, default=None,
                   help="step size of the single-example analysis steps (default 1e-3, the training lr)")
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated epochs to analyse, 0 = before training (default: start, middle, end)")
    p.add_argument("--quick", action="store_true", help="a few-second smoke run (small sizes, 2 epochs)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lldyn.config import load_config
    from lldyn.experiments.mnist import QUICK, MnistConfig, run_mnist

    overrides = dict(QUICK) if args.quick else {}
    flags = {"data": args.data, "train_size": args.train_size, "test_size": args.test_size,
             "epochs": args.epochs, "seed": args.seed, "probes_per_class": args.probes_per_class,
             "updates_per_class": args.updates_per_class,
             "probe_lr": args.probe_lr, "checkpoints": args.checkpoints}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    config = load_config(MnistConfig, args.config, overrides)
    run_mnist(config, args.out)
    return 0
