"""Train a seed net on the full Fashion-MNIST train set on CPU and export it.

``python sample_models/train_fashion.py --net NAME [--epochs N]`` writes
``sample_models/NAME_fashion_trained.onnx`` (BN unfolded, the export settings of resnet.onnx)
and ``sample_models/NAME_fashion_trained.pt`` (the state_dict, to rebuild the torch module),
and prints the accuracy on the full 10k test split. NAME is a key of ``SEEDS``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:
    from sample_models.build import SAMPLE_DIR, export_onnx
    from sample_models.fashion_mnist import DEFAULT_ROOT, load_full
    from sample_models.nets import MobileNetV2Style, ResNetStyle, VGGStyle
except ModuleNotFoundError:  # run as `python sample_models/train_fashion.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sample_models.build import SAMPLE_DIR, export_onnx
    from sample_models.fashion_mnist import DEFAULT_ROOT, load_full
    from sample_models.nets import MobileNetV2Style, ResNetStyle, VGGStyle

# The quality benchmark's seed nets: the narrow ResNet, and three over-parameterized ones.
SEEDS = {
    "resnet": ResNetStyle,
    "resnet2x": lambda: ResNetStyle((32, 64, 128)),
    "vgg": VGGStyle,
    "mobilenetv2": lambda: MobileNetV2Style(expansion=6, head=256),
}
TRAINED = SAMPLE_DIR / "trained.json"


def seed_net(name: str) -> nn.Module:
    """A fresh (untrained) seed net ``name``."""
    return SEEDS[name]()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on (x, y)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def train(
    net: str,
    epochs: int,
    lr: float,
    batch: int,
    weight_decay: float,
    seed: int,
    root: str,
) -> tuple[nn.Module, float]:
    """SGD (momentum 0.9, per-step cosine schedule) from a seeded init; returns (model, test acc).

    Augmentation is a random horizontal flip only; the seed fixes init and batch order.
    """
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in load_full(root))
    model = seed_net(net)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True
    )
    steps_per_epoch = math.ceil(len(x_train) / batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x_train))
        total_loss = 0.0
        for i in range(0, len(x_train), batch):
            idx = order[i : i + batch]
            xb, yb = x_train[idx], y_train[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        acc = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total_loss / len(x_train):.4f}, "
            f"test acc {acc:.4f}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return model, evaluate(model, x_test, y_test)


def main() -> None:
    """Parse arguments, train, report the test accuracy and write the .onnx and .pt files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(SEEDS), default="resnet")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="folder of the IDX .gz files")
    parser.add_argument("--out", type=Path, help="default: sample_models/NET_fashion_trained")
    args = parser.parse_args()
    out = args.out or SAMPLE_DIR / f"{args.net}_fashion_trained"

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, acc = train(
        args.net, args.epochs, args.lr, args.batch, args.weight_decay, args.seed, args.root
    )
    seconds = time.perf_counter() - start
    print(f"test accuracy {acc:.4f} (10000 images), trained in {seconds:.0f} s")
    torch.save(model.state_dict(), out.with_suffix(".pt"))
    export_onnx(model, out.with_suffix(".onnx"))
    record = json.loads(TRAINED.read_text()) if TRAINED.exists() else {}
    record[out.name] = {
        "net": args.net,
        "test_accuracy": acc,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch": args.batch,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "threads": args.threads,
        "seconds": round(seconds),
    }
    TRAINED.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out.with_suffix('.onnx')} and {out.with_suffix('.pt')}; recorded in {TRAINED}")


if __name__ == "__main__":
    main()
