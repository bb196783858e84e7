"""Train a timm model under a feedback-alignment rule in a plain PyTorch loop.

fabench's own loop (``fabench run``) is one way to train; this script is the other: any model,
any loop, with the rule attached by :func:`fabench.rules.apply`. It shows every call a rule
needs, the learned-feedback rules (``kp``, ``wm``) included::

    python examples/own_loop.py                      # wm on timm's resnet10t, MNIST sample
    python examples/own_loop.py --rule fa-usf-sn+const --epochs 2
    python examples/own_loop.py --rule kp --subset 1000
"""

import argparse

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabench import rules
from fabench.data import load_dataset


def tensors(images: torch.Tensor, labels: torch.Tensor, mean, std) -> TensorDataset:
    """uint8 [N, C, H, W] images as normalised floats, ready for a DataLoader."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return TensorDataset((images.float() / 255 - mean) / std, labels)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return 100 * correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="wm", help="any rule of `fabench ls rules`, e.g. fa, kp, fa-usf-sn+const")
    parser.add_argument("--model", default="resnet10t", help="any timm model name")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=int, default=2000, help="training images (class-balanced)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_dataset("mnist-mini", subset=args.subset)  # embedded: 1000 + 200 images per class
    train = DataLoader(tensors(data.x_train, data.y_train, data.mean, data.std), batch_size=64, shuffle=True)
    test = DataLoader(tensors(data.x_test, data.y_test, data.mean, data.std), batch_size=256)

    model = timm.create_model(args.model, num_classes=data.num_classes, in_chans=data.in_chans)
    handle = rules.apply(model, args.rule, seed=args.seed)          # 1. the rule on every Conv2d/Linear
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    handle.attach_optimizer(optimizer)                               # 2. modifiers, kp and wm act at each step
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(train))  # after 2: kp adds B
    handle.begin_training(steps_per_epoch=len(train))                # 3. wm's first mirror phase
    print(f"{args.rule} on {args.model}: {len(handle.layers)} layers covered, {len(handle.excluded)} on backprop")

    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()                                          # δx through the rule's feedback
            optimizer.step()
            scheduler.step()
        handle.end_epoch()                                           # 4. wm's per-epoch mirror, if chosen
        print(f"epoch {epoch}: train loss {loss.item():.3f}, test top-1 {accuracy(model, test):.1f}%")

    handle.remove()                                                  # 5. plain backprop again
    print(f"after remove(): test top-1 {accuracy(model, test):.1f}% (the trained weights stay)")


if __name__ == "__main__":
    main()
