"""Flag values that are more than a click type: shapes, number lists, the penalty strength.
Each raises a MorphError or ``click.BadParameter`` naming the flag."""

from __future__ import annotations

import click

from morphcli.errors import MorphError


def parse_shape(text: str) -> list[int]:
    """``1x3x224x224`` (or ``1,3,224,224``) as a list of positive ints."""
    parts = text.replace(",", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise MorphError(f"bad shape {text!r}: expected dims like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise MorphError(f"bad shape {text!r}: every dim must be a positive integer")
    return dims


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """``NAME=1x3x224x224`` as (name, dims); the flag value of ``--input-shape``."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise MorphError(f"bad --input-shape {text!r}: expected NAME=1x3x224x224")
    return name, parse_shape(dims)


def floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected numbers like 0.5 or 0.485,0.456,0.406: {text!r}", param_hint=flag
        ) from None


def image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    dims = parse_shape(text)
    if len(dims) not in (1, 2):
        raise click.BadParameter(f"expected HxW or N: {text!r}", param_hint="--image-size")
    return (dims[0], dims[-1])


def strength(text: str) -> str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise click.BadParameter(
            f"expected auto or a positive number: {text!r}", param_hint="--lambda"
        )
    return text
