"""Small hand-written networks for Fashion-MNIST ([N, 1, 28, 28] input).

Each net exercises a different channel-dependency pattern that morphnet has to handle:
plain chains, residual Adds, depthwise convs, channel Concats, transposed-conv decoders with
skip Concats, and a Flatten of a spatial map into Gemm layers. They are kept tiny (a few
MFLOPs) so that they export, run and train quickly on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, the building block of most nets here."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class PlainCNN(nn.Module):
    """Conv-BN-ReLU chain, max pool, global average pool, linear head (10 classes).

    The last conv has a bias and no BatchNorm, so one group has no gamma to penalise.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(1, 16),
            ConvBNAct(16, 32),
            nn.MaxPool2d(2),
            ConvBNAct(32, 64),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus a shortcut, then ReLU.

    The shortcut is the identity when shape is kept, else a 1x1 conv + BN projection.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_ch, out_ch, stride=stride)
        self.conv2 = ConvBNAct(out_ch, out_ch, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBNAct(in_ch, out_ch, kernel=1, stride=stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetStyle(nn.Module):
    """Stem (stride 2) and 3 stages of 2 basic blocks, widths 16/32/64, avg pool, linear head.

    Feature maps are 14x14, 7x7 and 4x4 in the three stages (about 5.5M multiply-adds).
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(1, widths[0], stride=2)
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(in_ch, width, stride), BasicBlock(width, width)]
            in_ch = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project, Add if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(in_ch, hidden, kernel=1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6),
            ConvBNAct(hidden, out_ch, kernel=1, act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Style(nn.Module):
    """Stem, five inverted residual blocks (one without expansion), 1x1 head conv, linear.

    ``expansion`` widens the four expanding blocks' hidden (depthwise) layers; ``head`` is the
    width of the 1x1 head conv.
    """

    # (expansion, output channels, stride) per block
    BLOCKS: tuple[tuple[int, int, int], ...] = (
        (1, 16, 1),
        (4, 24, 2),
        (4, 24, 1),
        (4, 32, 2),
        (4, 32, 1),
    )

    def __init__(self, num_classes: int = 10, expansion: int = 4, head: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(1, 16, stride=2, act=nn.ReLU6)]
        in_ch = 16
        for expand, out_ch, stride in self.BLOCKS:
            layers.append(InvertedResidual(in_ch, out_ch, expansion if expand > 1 else 1, stride))
            in_ch = out_ch
        layers.append(ConvBNAct(in_ch, head, kernel=1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InceptionBlock(nn.Module):
    """Four parallel branches joined by a channel Concat.

    Branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5 (or 1x1 -> 3x3 -> 3x3); 3x3 max pool -> 1x1.
    b1 and b4 are branch widths; b2 and b3 are (1x1 reduce width, branch output width).
    """

    def __init__(
        self,
        in_ch: int,
        b1: int,
        b2: tuple[int, int],
        b3: tuple[int, int],
        b4: int,
        double_3x3: bool = False,
    ) -> None:
        super().__init__()
        self.branch1 = ConvBNAct(in_ch, b1, kernel=1)
        self.branch2 = nn.Sequential(ConvBNAct(in_ch, b2[0], kernel=1), ConvBNAct(*b2))
        if double_3x3:
            tail: list[nn.Module] = [ConvBNAct(*b3), ConvBNAct(b3[1], b3[1])]
        else:
            tail = [ConvBNAct(*b3, kernel=5)]
        self.branch3 = nn.Sequential(ConvBNAct(in_ch, b3[0], kernel=1), *tail)
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), ConvBNAct(in_ch, b4, kernel=1)
        )
        self.out_channels = b1 + b2[1] + b3[1] + b4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], dim=1)


class InceptionStyle(nn.Module):
    """Stem, max pool, inception block (5x5 branch), max pool, inception block (double 3x3)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        block_a = InceptionBlock(16, 8, (8, 16), (4, 8), 8)
        block_b = InceptionBlock(block_a.out_channels, 16, (16, 24), (8, 12), 12, double_3x3=True)
        self.features = nn.Sequential(
            ConvBNAct(1, 16),
            nn.MaxPool2d(2),
            block_a,
            nn.MaxPool2d(2),
            block_b,
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(block_b.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class UNetStyle(nn.Module):
    """Two-level U-Net: conv encoder with max pools, ConvTranspose2d decoder, Concat skips.

    Outputs a 1-channel 28x28 map (not a classifier).
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.enc1 = nn.Sequential(ConvBNAct(1, w1), ConvBNAct(w1, w1))
        self.enc2 = nn.Sequential(ConvBNAct(w1, w2), ConvBNAct(w2, w2))
        self.bottleneck = nn.Sequential(ConvBNAct(w2, w3), ConvBNAct(w3, w3))
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = nn.Sequential(ConvBNAct(2 * w2, w2), ConvBNAct(w2, w2))
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = nn.Sequential(ConvBNAct(2 * w1, w1), ConvBNAct(w1, w1))
        self.head = nn.Conv2d(w1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


class FlattenGemmNet(nn.Module):
    """Convs and max pools down to a 7x7 map, flattened (C*7*7 features) into two Linear layers.

    The first Linear's input features are channel-major blocks of 49, so removing a conv channel
    removes 49 Gemm input columns.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(1, 16),
            nn.MaxPool2d(2),
            ConvBNAct(16, 32),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class VGGStyle(nn.Module):
    """Plain VGG-style BN net: two Conv-BN-ReLU per stage at 28x28, 14x14 and 7x7 (max pools
    between), global average pool, linear head. With the default widths (32, 64, 128) it is
    far wider than Fashion-MNIST needs (about 29M multiply-adds): the over-parameterized seed
    of the quality benchmark.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [ConvBNAct(in_ch, width), ConvBNAct(width, width)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
