"""Hostile and broken training data, flag values and output paths.

(Longer than most files: one line or two per case reads better than a table elsewhere.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from tests.hostile.cases import FAST, Builder, command_argv, run
from tests.hostile.model_cases import HOSTILE_NAME
from tests.hostile.models import (
    SIZE,
    bomb_png,
    npz_with_lying_header,
    tiny_model,
    with_external_data,
)


def _shrink(data: str = "data.npz", *extra: str) -> list[str]:
    return command_argv("shrink", data=data) + list(extra)


def _npz(name: str = "train.npz", **arrays):
    return lambda folder: np.savez(folder / name, **arrays)


def _images(folder: Path, count: int = 12, broken: dict[int, bytes] | None = None) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(count):
        cls = folder / "images" / f"class_{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        path = cls / f"{i:02d}.png"
        if broken and i in broken:
            path.write_bytes(broken[i])
        else:
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), "L").save(path)


def _module(name: str, body: str):
    return lambda folder: (folder / f"{name}.py").write_text(body)


def data_cases(b: Builder) -> None:
    def add(name: str, setup, expect: int, data: str = "train.npz", *extra: str, early=None):
        b.add("data", name, setup, [run(_shrink(data, *extra), expect, early=early)])

    x, y = b.data["x"], b.data["y"]
    add("valid_npz", None, 0, "data.npz")
    add("empty_file", lambda f: (f / "train.npz").write_bytes(b""), 2)
    add(
        "truncated", lambda f: (f / "train.npz").write_bytes((f / "data.npz").read_bytes()[:900]), 2
    )
    add("plain_npy", lambda f: np.save(f / "plain.npy", x) or os.rename(f / "plain.npy",
        f / "train.npz"), 2)  # fmt: skip
    add("pickled", lambda f: np.savez(f / "train.npz", x=np.array([{"a": 1}] * 48, object)), 2)
    add("header_claims_terabytes", lambda f: npz_with_lying_header(f / "train.npz",
        (10**9, 1, 1000, 1000)), 2)  # fmt: skip
    add("compressed_header_claims_terabytes", lambda f: npz_with_lying_header(f / "train.npz",
        (10**9, 1, 1000, 1000), compress=True), 2)  # fmt: skip
    add("header_claims_more_than_stored", lambda f: npz_with_lying_header(f / "train.npz",
        (48, 1, 8, 8)), 2)  # fmt: skip
    add("corrupt_deflate", lambda f: _corrupt_compressed(f / "train.npz", x, y), 2)
    add("no_x", _npz(inputs=x, y=y), 2)
    add("x_wrong_shape", _npz(x=np.zeros((48, 3, 8, 8), np.float32), y=y), 2)
    add("x_scalar", _npz(x=np.float32(1.0)), 2)
    add("x_complex", _npz(x=x.astype(np.complex64), y=y), 2)
    add("x_strings", _npz(x=np.array(["a"] * 48), y=y), 2)
    add("x_empty", _npz(x=x[:0], y=y[:0]), 2)
    add("one_sample", _npz(x=x[:1], y=y[:1]), 2)
    add("y_float", _npz(x=x, y=y.astype(np.float32)), 2)
    add("y_out_of_range", _npz(x=x, y=y + 5), 2)
    add("y_negative", _npz(x=x, y=y - 3), 2)
    add("y_length", _npz(x=x, y=y[:10]), 2)
    add("y_scalar", _npz(x=x, y=np.int64(1)), 2)
    nan_x, inf_x = x.copy(), x.copy()
    nan_x[5, 0, 2, 2] = np.nan
    inf_x[:, 0, 0, 0] = np.inf
    add("x_nan", _npz(x=nan_x, y=y), 1, early=False)
    add("x_inf", _npz(x=inf_x, y=y), 1, early=False)
    add("val_wrong_shape", _npz("val.npz", x=np.zeros((8, 1, 9, 9), np.float32)), 2, "data.npz",
        "--val-data", "val.npz")  # fmt: skip
    add("val_without_labels", _npz("val.npz", x=x[:8]), 2, "data.npz", "--val-data", "val.npz")
    add("missing", None, 2, "nothing.npz")
    add("fifo_npz", lambda f: os.mkfifo(f / "train.npz"), 2)
    add("hostile_name", lambda f: (f / HOSTILE_NAME).write_bytes(b"junk"), 2, HOSTILE_NAME)
    add("valid_images", _images, 0, "images")
    add("no_class_folders", lambda f: (f / "images").mkdir(), 2, "images")
    add("all_images_corrupt", lambda f: _images(f, 3, broken=dict.fromkeys(range(3), b"no")), 2,
        "images")  # fmt: skip
    # Images are decoded as training reads them: a corrupt one stops the run there.
    add("corrupt_image", lambda f: _images(f, broken={7: b"\x89PNG\r\n junk"}), 2, "images",
        early=False)  # fmt: skip
    add("decompression_bomb", lambda f: _images(f, 3) or bomb_png(f / "images/class_0/00.png",
        30000, 30000), 2, "images")  # fmt: skip
    add("only_a_fifo_image", lambda f: (f / "images/a").mkdir(parents=True) or os.mkfifo(
        f / "images/a/x.png"), 2, "images")  # fmt: skip
    dataset = "import torch\nclass D(torch.utils.data.Dataset):\n"
    for name, body, expect in [
        ("callable_raises", "def make():\n    raise ValueError('no data today')\n", 2),
        ("callable_returns_none", "def make():\n    return None\n", 2),
        ("callable_returns_strings", "def make():\n    return ['a', 'b', 'c']\n", 2),
        ("callable_syntax_error", "def make(:\n", 2),
        ("callable_import_raises", "raise RuntimeError('side effect')\ndef make(): pass\n", 2),
        ("callable_getitem_raises", dataset + "    def __len__(self): return 4\n"
         "    def __getitem__(self, i): raise KeyError(i)\ndef make():\n    return D()\n", 2),
        ("callable_valid", dataset + "    def __len__(self): return 24\n    def __getitem__"
         "(self, i): return torch.ones(1, 8, 8) * i / 24, i % 3\ndef make():\n    return D()\n", 0),
    ]:  # fmt: skip
        module = f"hostile_{name}"
        add(name, _module(module, body), expect, f"{module}:make")
    add("callable_missing_module", None, 2, "hostile_no_such_module:make")


def _corrupt_compressed(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    np.savez_compressed(path, x=x, y=y)
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)
    path.write_bytes(bytes(data))


FLAG_VALUES = {
    "expand": [
        ("--multiplier", v, 2) for v in ("inf", "nan", "-1", "0", "abc", "1e6", "1e308", "-inf")
    ] + [("--noise", v, 2) for v in ("nan", "inf", "-1")] + [
        ("--seed", "-1", 2), ("--seed", str(2**40), 2), ("--round-to", "0", 2),
        ("--round-to", str(10**9), 2), ("--init", "bogus", 2),
    ],
    "prune": [("--ratio", v, 2) for v in ("0", "1.5", "nan", "inf", "-0.5")]
    + [("--threshold", v, 2) for v in ("-1", "nan", "inf")] + [("--round-to", "0", 2)],
    "shrink": [("--lambda", v, 2) for v in ("0", "-1", "abc", "nan", "inf", "1e400")]
    + [("--lr", v, 2) for v in ("nan", "inf", "0", "-1")]
    + [("--temperature", v, 2) for v in ("nan", "inf", "0")]
    + [("--width-floor", v, 2) for v in ("nan", "-0.1", "1.5", "abc")]
    + [("--mean", v, 2) for v in ("abc", "nan", "1,,2")]
    + [("--std", v, 2) for v in ("1,x", "0", "-1", "inf")]
    + [("--image-size", v, 2) for v in ("1x2x3", "0", "abc", "99999x99999", "-8x8")]
    + [("--batch-size", "0", 2), ("--threads", "0", 2), ("--threads", "100000", 2),
       ("--seed", "-1", 2), ("--epochs", "0", 2), ("--steps", "0", 2), ("--rounds", "0", 2),
       ("--device", "tpu", 2), ("--device", "cuda", 2), ("--penalty", "bogus", 2),
       ("--optimizer", "bogus", 2), ("--loss", "bogus", 2)],
}  # fmt: skip


def flag_cases(b: Builder) -> None:
    def add(name: str, argv: list[str], expect: int, setup=None, early=None) -> None:
        b.add("flags", name, setup, [run(argv, expect, early=early)])

    for command, values in FLAG_VALUES.items():
        for flag, value, expect in values:
            argv = command_argv(command)
            if flag in argv:  # the flag replaces the standard value
                index = argv.index(flag)
                del argv[index : index + 2]
            if command == "shrink" and flag == "--device" and value == "cuda":
                import torch

                expect = 0 if torch.cuda.is_available() else 2
            add(f"{command}{flag}={value}", [*argv, flag, value], expect)
    shape_values = ("x=1x1x99999999999999999999x8", "x=1x1x0x8", "garbage", "y=1x3",
                    "x=1x1x8", "x=1x1x9x9", "x=2000000000x1x8x8", "=1x1x8x8")  # fmt: skip
    for value in shape_values:
        add(f"input_shape={value}", [*command_argv("expand"), "--input-shape", value], 2)
    for value in ("1", "abc", "nan", "0", "1e30G"):
        add(f"max_memory={value}", [*command_argv("prune"), "--max-memory", value], 2)
    expand = ["expand", "model.onnx", "-o", "out.onnx"]
    add(
        "multiplier_200_over_max_memory", [*expand, "--multiplier", "200", "--max-memory", "64M"], 2
    )
    add("multiplier_and_target", [*expand, "--multiplier", "2", "--target-flops", "50%"], 2)
    add("neither_multiplier_nor_target", expand, 2)
    add("noise_with_random_init", [*expand, "--multiplier", "2", "--init", "random",
        "--noise", "0.1"], 2)  # fmt: skip
    for value in ("1e400", "nan", "abc", "0", "-5M", "50%%", "inf%"):
        add(f"expand_target={value}", [*expand, "--target-flops", value], 2)
    add("expand_target_unreachable", [*expand, "--target-flops", "1e30"], 1, early=True)
    add("expand_target_100x", [*expand, "--target-flops", "10000%"], 0)
    prune = ["prune", "model.onnx", "-o", "out.onnx"]
    add("prune_ratio_and_target", [*prune, "--ratio", "0.5", "--target-flops", "50%"], 2)
    add("prune_target_unreachable", [*prune, "--target-flops", "1"], 1, early=True)
    add("prune_target_params_abc", [*prune, "--target-params", "abc"], 2)
    shrink = command_argv("shrink")
    add("shrink_unknown_option", [*shrink, "--bogus"], 2)
    add("shrink_without_data", [a for a in shrink if a not in ("--data", "data.npz")], 2)
    add("shrink_both_targets", [*shrink, "--target-params", "50%"], 2)
    add("shrink_no_target", [a for a in shrink if a not in ("--target-flops", "50%")], 2)
    add("shrink_target_grows_past_memory", [*shrink[:4], "--target-flops", "1000000%",
        "--data", "data.npz", *FAST, "--max-memory", "16M"], 2)  # fmt: skip
    add("shrink_target_1e400", [*shrink[:4], "--target-flops", "1e400", "--data", "data.npz"], 2)
    add("shrink_lr_1e6_diverges", [*shrink, "--lr", "1e6"], 1, early=False)
    add("shrink_ce_without_labels", [*shrink, "--loss", "ce"], 2,
        setup=lambda f: np.savez(f / "data.npz", x=b.data["x"]))  # fmt: skip
    add("shrink_resume_without_checkpoint", [*shrink, "--resume"], 2)
    for value in ("abc", "nan", "-1", "0"):
        add(f"analyze_max_flops={value}", ["analyze", "model.onnx", "--max-flops", value], 2)
    add("analyze_over_budget", ["analyze", "model.onnx", "--max-flops", "1"], 1, early=False)
    add("analyze_json_broken_model", ["analyze", "model.onnx", "--json"], 2,
        setup=lambda f: (f / "model.onnx").write_bytes(b"junk"))  # fmt: skip
    add("unknown_command", ["frobnicate", "model.onnx"], 2)


def output_cases(b: Builder) -> None:
    name_255 = "o" * 250 + ".onnx"

    def add(name: str, argv: list[str], expect: int, setup=None, **kw) -> None:
        b.add("outputs", name, setup, [run(argv, expect, **kw)])

    for command in ("prune", "expand"):
        base = command_argv(command)[:2]
        flags = command_argv(command)[4:]

        def add_o(name, output, expect=2, setup=None, c=command, base=base, flags=flags, **kw):
            add(f"{c}_{name}", [*base, "-o", output, *flags], expect, setup, **kw)

        add_o("input", "model.onnx")
        add_o("input_dot_slash", "./model.onnx")
        add_o("input_via_dotdot", "sub/../model.onnx", setup=lambda f: (f / "sub").mkdir())
        add_o(
            "input_symlink", "link.onnx", setup=lambda f: (f / "link.onnx").symlink_to("model.onnx")
        )
        add_o(
            "input_hard_link",
            "hard.onnx",
            setup=lambda f: os.link(f / "model.onnx", f / "hard.onnx"),
        )
        add_o("fifo", "pipe.onnx", setup=lambda f: os.mkfifo(f / "pipe.onnx"))
        add_o(
            "dev_null_link", "null.onnx", setup=lambda f: (f / "null.onnx").symlink_to("/dev/null")
        )
        add_o("existing_directory", "sub", setup=lambda f: (f / "sub").mkdir())
        add_o("empty", "")
        add_o("trailing_slash", "newdir/")
        add_o("under_a_file", "data.npz/out.onnx")
        add_o("missing_folder", "missing/out.onnx")
        add_o("name_256_bytes", "o" * 251 + ".onnx")
        add_o("proc", "/proc/morphnet-out.onnx")
        add_o("name_255_bytes", name_255, 0, writes=(name_255,))
        add_o("hostile_name", HOSTILE_NAME + ".onnx", 0, writes=(HOSTILE_NAME + ".onnx",))
        add_o("existing_file_replaced", "out.onnx", 0,
              setup=lambda f: (f / "out.onnx").write_bytes(b"old"))  # fmt: skip
        add_o("symlink_to_a_file", "link.onnx", 0, writes=("target.onnx",), setup=_linked_file)
        add_o("external_data_file", "weights.bin",
              setup=lambda f: with_external_data(tiny_model(), f))  # fmt: skip
    if _can_make_devices(b.root):
        add("prune_char_device", ["prune", "model.onnx", "-o", "dev.onnx", "--ratio", "0.5"], 2,
            setup=_char_device)  # fmt: skip
    shrink = command_argv("shrink")
    add("shrink_report_is_input", [*shrink, "--report", "model.onnx"], 2)
    add("shrink_report_is_output", [*shrink, "--report", "out.onnx"], 2)
    add("shrink_report_is_data", [*shrink, "--report", "data.npz"], 2)
    add("shrink_output_is_data", [*shrink[:2], "-o", "data.npz", *shrink[4:]], 2)
    add("shrink_work_dir_is_output", [*shrink, "--work-dir", "out.onnx"], 2)
    add("shrink_work_dir_is_a_file", [*shrink, "--work-dir", "data.npz"], 2)
    add("shrink_work_dir_under_a_file", [*shrink, "--work-dir", "data.npz/wd"], 2)
    add("shrink_report_is_a_directory", [*shrink, "--report", "sub"], 2,
        setup=lambda f: (f / "sub").mkdir())  # fmt: skip
    add("shrink_report_missing_folder", [*shrink, "--report", "missing/r.json"], 2)
    add("shrink_output_inside_new_work_dir", [*shrink[:2], "-o", "wd/out.onnx", *shrink[4:],
        "--work-dir", "wd"], 2)  # fmt: skip
    add("shrink_resume_from_a_pickle_that_runs_code", [*shrink, "--resume"], 2,
        setup=_hostile_checkpoint)  # fmt: skip
    add("shrink_name_255_bytes", [*shrink[:2], "-o", name_255, *shrink[4:], "--report",
        "r" * 250 + ".json"], 0, writes=(name_255, "r" * 250 + ".json"))  # fmt: skip


class _RunsCode:
    """Unpickled, this would create the file ``pwned``."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _hostile_checkpoint(folder: Path) -> None:
    import torch

    (folder / "out.onnx.work").mkdir()
    torch.save({"fingerprint": {}, "state": _RunsCode()}, folder / "out.onnx.work/checkpoint.pt")


def _linked_file(folder: Path) -> None:
    (folder / "target.onnx").write_bytes(b"old")
    (folder / "link.onnx").symlink_to("target.onnx")


def _char_device(folder: Path) -> None:
    """A character device node like /dev/null (1, 3) where the output goes."""
    os.mknod(folder / "dev.onnx", 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def _can_make_devices(root: Path) -> bool:
    try:
        _char_device(root)
    except OSError:
        return False
    (root / "dev.onnx").unlink()
    return True
