"""`sddr-jax predict`: run Depth Anything V2 (JAX) on a folder of RGB images and write low/high maps.

Output layout (the official SDDR demo input layout, `demo_input/<dataset>/<predictor>/low_448`, `high_1920`):

    OUT/low_<LOW>/<name>.png     16-bit PNG, prediction at input size LOW, resized back to the image size
    OUT/high_<HIGH>/<name>.png   the same at input size HIGH

named like the RGB files (stem + `.png`), so `sddr-jax refine --rgb DIR --low OUT/low_518 --high
OUT/high_1036` takes them. Each map is the original `infer_image` (keep-aspect resize to a multiple of 14
with the given lower bound, OpenCV cubic, ImageNet normalisation, bilinear align_corners back to H x W),
then written by `sddr_jax.io.write_depth` (atomic; the official quantisation of docs/method.md §5.1 step 5:
min-max to [0, 1], x65535, truncated to uint16).
"""
from __future__ import annotations

import os
import time

import numpy as np

from sddr_jax.errors import UserError

HELP = "run a JAX base depth predictor and write low/high maps"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="depth-anything-v2-small",
                        help="depth-anything-v2-small | -base | -large (default: %(default)s)")
    parser.add_argument("--weights", required=True,
                        help="Hugging Face model.safetensors (or its folder) or original depth_anything_v2_vit*.pth")
    parser.add_argument("--rgb", required=True, help="folder of RGB images")
    parser.add_argument("--out", required=True, help="output folder; low_<LOW>/ and high_<HIGH>/ are created in it")
    parser.add_argument("--low", type=int, default=518, help="low input size: lower bound of the shorter side, rounded to a multiple of 14 as the "
                        "reference (default %(default)s)")
    parser.add_argument("--high", type=int, default=1036, help="high input size (default %(default)s)")
    parser.add_argument("--output", choices=("disparity", "depth"), default="disparity",
                        help="disparity: the network's relative inverse depth (default); depth: max - disparity")
    parser.add_argument("--bf16", action="store_true", help="bf16 matmuls and convolutions")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output PNGs")


def _check_size(name: str, value: int) -> int:
    if value < 14:
        raise UserError(f"--{name}: expected an input size >= 14, got {value}")
    return value


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) float64 RGB in [0, 1], as the reference (`cv2.imread`, BGR -> RGB, / 255)."""
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"rgb image {path}: cannot be read as an image")
    scale = 65535.0 if bgr.dtype == np.uint16 else 255.0
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float64) / scale


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--rgb: folder {folder} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    if not names:
        raise UserError(f"--rgb: folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems = [os.path.splitext(n)[0] for n in names]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise UserError(f"--rgb: several images share the names {dupes} (outputs are named <stem>.png)")
    return names


def run(args) -> int:
    low, high = _check_size("low", args.low), _check_size("high", args.high)
    names = list_images(args.rgb)

    import jax.numpy as jnp

    from sddr_jax import io
    from sddr_jax.convert.depth_anything import load_depth_anything
    from sddr_jax.models.depth_anything import get_config

    wanted = get_config(args.model)
    converted = load_depth_anything(args.weights)
    if (converted.config.dim, converted.config.depth) != (wanted.dim, wanted.depth):
        raise UserError(f"--weights {args.weights}: holds a {converted.config.name!r} model "
                        f"(width {converted.config.dim}), not {args.model!r}")
    predictor = converted.predictor(output=args.output, dtype=jnp.bfloat16 if args.bf16 else None)

    folders = {"low": (low, os.path.join(args.out, f"low_{low}")), "high": (high, os.path.join(args.out, f"high_{high}"))}
    if not args.overwrite:
        clashes = [os.path.join(d, os.path.splitext(n)[0] + ".png") for _, d in folders.values() for n in names]
        clashes = [p for p in clashes if os.path.exists(p)]
        if clashes:
            raise FileExistsError(f"{len(clashes)} output file(s) exist, e.g. {clashes[0]}; pass --overwrite to replace them")
    for _, d in folders.values():
        os.makedirs(d, exist_ok=True)

    start = time.perf_counter()
    for i, name in enumerate(names):
        rgb = read_rgb(os.path.join(args.rgb, name))
        for size, folder in folders.values():
            depth = predictor.infer_image(rgb, input_size=size)
            io.write_depth(os.path.join(folder, os.path.splitext(name)[0] + ".png"), depth, overwrite=args.overwrite)
        print(f"[{i + 1}/{len(names)}] {name} {rgb.shape[1]}x{rgb.shape[0]}", flush=True)
    print(f"wrote {len(names)} low maps to {folders['low'][1]} and high maps to {folders['high'][1]} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
