"""Flag values as click types: each refuses a bad value (NaN and Inf included) while click
parses the command line, before any work, with one line naming the flag and exit code 2."""

from __future__ import annotations

import math
from typing import Any

import click

from morphcli.errors import MorphError
from morphcli.limits import DEFAULT_MAX_MEMORY, MAX_MEMORY_FLAG, memory_limit
from morphcli.resources.targets import parse_target

# ONNX dims are int64, but no tensor of ours has a dim this large; bigger ones are typos.
MAX_DIM = 2**31 - 1
ROUND_TO = click.IntRange(1, 4096)
SEED = click.IntRange(0, 2**32 - 1)
_SIZE_SUFFIXES = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class Finite(click.FloatRange):
    """A finite float in a range (``click.FloatRange`` lets ``nan`` and ``inf`` through)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Numbers(click.ParamType):
    """Comma-separated finite numbers (``0.485,0.456,0.406``), optionally all positive."""

    name = "numbers"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"expected numbers like 0.5 or 0.485,0.456,0.406: {value!r}", param, ctx)
        if not all(math.isfinite(n) for n in numbers):
            self.fail(f"{value!r} holds a number that is not finite", param, ctx)
        if self.positive and not all(n > 0 for n in numbers):
            self.fail(f"{value!r}: every value must be positive", param, ctx)
        return numbers


def parse_dims(text: str) -> list[int]:
    """``1x3x224x224`` (or ``1,3,224,224``) as positive ints; ValueError otherwise."""
    dims = [int(p) for p in text.replace(",", "x").split("x")]
    if not all(0 < d <= MAX_DIM for d in dims):
        raise ValueError(f"every dim must be an integer in 1..{MAX_DIM}")
    return dims


class InputShape(click.ParamType):
    """``NAME=1x3x224x224`` as (name, dims)."""

    name = "NAME=1x3x224x224"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, tuple):
            return value
        name, sep, dims = str(value).rpartition("=")
        if not sep or not name:
            self.fail(f"expected NAME=1x3x224x224: {value!r}", param, ctx)
        try:
            return name, parse_dims(dims)
        except ValueError as error:
            self.fail(f"bad shape {dims!r}: {error}", param, ctx)


class ImageSize(click.ParamType):
    """``HxW`` or ``N`` (square) as (H, W)."""

    name = "HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, tuple):
            return value
        try:
            dims = parse_dims(str(value))
        except ValueError as error:
            self.fail(f"expected HxW or N: {value!r} ({error})", param, ctx)
        if len(dims) not in (1, 2):
            self.fail(f"expected HxW or N: {value!r}", param, ctx)
        return dims[0], dims[-1]


class Strength(click.ParamType):
    """``auto`` or a positive finite number (the penalty strength lambda)."""

    name = "auto|number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        text = str(value)
        if text == "auto":
            return text
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            self.fail(f"expected auto or a positive number: {text!r}", param, ctx)
        return text


class Target(click.ParamType):
    """A resource amount (``50%``, ``1.2G``, ``300M``, ``45k``), checked for form now and
    resolved against the model later."""

    name = "T"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        try:
            parse_target(str(value), 1.0, param.opts[0] if param else "target")
        except MorphError as error:
            self.fail(error.message, param, ctx)
        return str(value)


class ByteSize(click.ParamType):
    """A size in bytes: ``8G``, ``512M``, ``1.5G`` (powers of 1024) or a plain number."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removesuffix("b").removesuffix("i")
        scale = _SIZE_SUFFIXES.get(text[-1:], 1)
        try:
            number = float(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and 2**20 <= number <= 2**60):
            self.fail(
                f"expected a size from 1M to 2^60 bytes, like 8G or 512M: {value!r}", param, ctx
            )
        return int(number)


def max_memory_option(command: Any) -> Any:
    """``--max-memory``: the memory bound of the run (``limits``), set for the command's
    duration."""

    def apply(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
        ctx.with_resource(memory_limit(value))

    return click.option(
        MAX_MEMORY_FLAG,
        type=ByteSize(),
        expose_value=False,
        callback=apply,
        help=f"Refuse work that would need more memory than this (default "
        f"{DEFAULT_MAX_MEMORY // 2**30}G): model and data files, input shapes, wider models.",
    )(command)
