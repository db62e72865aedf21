"""`sddr-jax refine`: refine low/high depth predictions (one-stage docs/method.md §5.1, or coarse-to-fine docs/method.md §5.2).

One pair:
    sddr-jax refine --checkpoint CKPT --low LOW --high HIGH --output OUT [--rgb IMAGE] [--size 2048]
Folders (files matched by name) or the official demo layout (DIR/rgb, DIR/low[_RES] or DIR/<predictor>/low_RES, ...):
    sddr-jax refine --checkpoint CKPT --low LOW_DIR --high HIGH_DIR [--rgb RGB_DIR] --output OUT_DIR
    sddr-jax refine --checkpoint CKPT --input DEMO_DIR --output OUT_DIR [--two-stage] [--preview]
Two-stage with a base predictor run on every window (RGB in; a file or a folder of images):
    sddr-jax refine --checkpoint CKPT --two-stage --predictor depth-anything-v2-small --predictor-weights W \
        --rgb IMAGE_OR_DIR --output OUT [--size 1024] [--schedule official|paper] [--preview]

CKPT: the official `.pt` (converted on the fly, cached), a directory written by `sddr-jax convert`, or a
training workdir. Files are read and written by extension (.npy, .png 8/16-bit, .pfm, .tif); a `.png` output
is quantised like the official demo (min-max, x65535, uint16). The output has the size of the RGB image when
given (as in the demo), else of HIGH. Every output path is checked before anything is computed, so a refused
run writes nothing; each file is written atomically.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sddr_jax.errors import UserError

HELP = "refine low/high depth maps (one-stage or coarse-to-fine two-stage)"
MAP_EXTS = (".png", ".npy", ".pfm", ".tif", ".tiff")
RGB_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="official .pt file, converted Orbax directory, or training workdir")
    parser.add_argument("--input", default=None,
                        help="a folder in the official demo layout: rgb/ and low[_RES]/ high[_RES]/ "
                             "(directly or under one predictor folder such as LeRes/)")
    parser.add_argument("--low", default=None, help="low-resolution prediction file or folder")
    parser.add_argument("--high", default=None, help="high-resolution prediction file or folder")
    parser.add_argument("--rgb", default=None, help="RGB image (or folder) whose size the output takes")
    parser.add_argument("--output", required=True, help="output file, or folder when refining folders")
    parser.add_argument("--format", choices=("png", "npy", "pfm", "tif"), default="png",
                        help="output format in folder mode (default png: 16-bit, official normalisation)")
    parser.add_argument("--size", type=int, default=None,
                        help="working size S, a multiple of 128 (default 2048; 1024 with --two-stage)")
    parser.add_argument("--two-stage", action="store_true",
                        help="coarse-to-fine refinement (docs/method.md §5.2): a global pass, then windows for which "
                             "--predictor runs again on the RGB crop")
    parser.add_argument("--predictor", default=None,
                        help="two-stage base predictor: " + " | ".join(PREDICTOR_CHOICES) + " | package.module:factory "
                             "(default: precomputed, the crops of the --low/--high maps, which add no detail)")
    parser.add_argument("--predictor-weights", default=None,
                        help="the predictor's weights (Depth Anything V2: model.safetensors, its folder, or the .pth)")
    parser.add_argument("--predictor-output", choices=("depth", "disparity"), default="depth",
                        help="what the predictor's maps mean for the refiner: depth (larger = farther, the official "
                             "LeReS convention the refiner was trained on; default) or the network's disparity")
    parser.add_argument("--schedule", choices=tuple(SCHEDULES), default="official",
                        help="two-stage window steps: official = 2x2 then 3x3 (the released code); paper = 2x2, 3x3, 4x4")
    parser.add_argument("--resolution", choices=("adaptive", "fixed"), default="adaptive",
                        help="window predictor resolution: the official three-level adaptive rule (default) or "
                             "factor 1.0 for every window")
    parser.add_argument("--global-sizes", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="predictor resolutions of the two-stage global pass (default 448 1024)")
    parser.add_argument("--base-resolution", type=int, default=None,
                        help="the predictor's training resolution r in the adaptive rule (default 448, LeReS)")
    parser.add_argument("--low-resolution", type=int, default=None,
                        help="resolution the low maps were predicted at (default: from a low_RES folder, else 448)")
    parser.add_argument("--preview", action="store_true",
                        help="also write <name>_preview.png: low | high | refined in colour")
    parser.add_argument("--bf16", action="store_true", help="compute the refiner in bfloat16 (parameters stay float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--skip-existing", action="store_true",
                        help="resume an interrupted folder run: keep the outputs that are complete (readable, of "
                             "the expected size) and refine only the others (removing the temporary files a "
                             "killed run left for them)")


def _schedules():
    from sddr_jax.inference.windows import OFFICIAL_SCHEDULE, PAPER_SCHEDULE

    return {"official": OFFICIAL_SCHEDULE, "paper": PAPER_SCHEDULE}


SCHEDULES = ("official", "paper")
PREDICTOR_CHOICES = ("precomputed", "depth-anything-v2-small", "depth-anything-v2-base", "depth-anything-v2-large",
                     "depth-anything-v2")


def uses_model_predictor(args) -> bool:
    return args.predictor not in (None, "precomputed")


def _compute_dtype(args):
    if not args.bf16:
        return None
    import jax.numpy as jnp

    return jnp.bfloat16


def _files(folder: Path, exts) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in exts}


def _demo_folders(root: Path) -> tuple[Path, Path, Path | None]:
    """(low_dir, high_dir, rgb_dir) of the official demo layout under `root`."""
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: no such folder")
    candidates = [root] + [p for p in sorted(root.iterdir()) if p.is_dir() and p.name != "rgb"]
    for base in candidates:
        lows = [p for p in sorted(base.iterdir()) if p.is_dir() and re.fullmatch(r"low(_\d+)?", p.name)]
        highs = [p for p in sorted(base.iterdir()) if p.is_dir() and re.fullmatch(r"high(_\d+)?", p.name)]
        if lows and highs:
            if len(lows) > 1 or len(highs) > 1:
                raise UserError(f"--input {base}: several low_*/high_* folders ({[p.name for p in lows + highs]}); "
                                f"pass --low and --high")
            rgb = root / "rgb" if (root / "rgb").is_dir() else (base / "rgb" if (base / "rgb").is_dir() else None)
            return lows[0], highs[0], rgb
    raise UserError(f"--input {root}: expected low[_RES]/ and high[_RES]/ folders (the official demo layout), "
                    f"directly or under one predictor folder")


def plan_jobs(args) -> tuple[list[tuple[str, Path, Path, Path | None, Path]], int | None]:
    """[(name, low, high, rgb or None, output)] and the low maps' resolution if a folder name gives it.

    With a model predictor the jobs are RGB images only: [(name, None, None, rgb, output)].
    """
    if uses_model_predictor(args):
        return _rgb_jobs(args), None
    if args.input:
        if args.low or args.high:
            raise UserError("--input: give either --input or --low/--high, not both")
        low, high, rgb = _demo_folders(Path(args.input))
        rgb = Path(args.rgb) if args.rgb else rgb
    else:
        if not args.low or not args.high:
            raise UserError("give --low and --high (files or folders), or --input DEMO_DIR")
        low, high = Path(args.low), Path(args.high)
        rgb = Path(args.rgb) if args.rgb else None
    for what, p in (("--low", low), ("--high", high)) + ((("--rgb", rgb),) if rgb else ()):
        if not p.exists():
            raise FileNotFoundError(f"{what} {p}: no such file or folder")
    m = re.fullmatch(r"low_(\d+)", low.name)
    low_res = int(m.group(1)) if m else None
    out = Path(args.output)
    if low.is_file() != high.is_file():
        raise UserError(f"--low {low} and --high {high}: give two files or two folders")
    if low.is_file():
        if out.is_dir():
            raise IsADirectoryError(f"--output {out}: is a folder; give a file name for one pair")
        return [(low.stem, low, high, rgb, out)], low_res
    lows, highs = _files(low, MAP_EXTS), _files(high, MAP_EXTS)
    if not lows:
        raise UserError(f"--low {low}: no depth maps ({', '.join(MAP_EXTS)})")
    only = sorted(set(lows) ^ set(highs))
    if only:
        raise UserError(f"--low {low} and --high {high} do not hold the same names; unmatched: {', '.join(only[:8])}"
                        + (" ..." if len(only) > 8 else ""))
    rgbs = _files(rgb, RGB_EXTS) if rgb is not None and rgb.is_dir() else {}
    if rgb is not None and rgb.is_dir():
        missing = sorted(set(lows) - set(rgbs))
        if missing:
            raise UserError(f"--rgb {rgb}: no image for {', '.join(missing[:8])}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output {out}: exists and is not a folder (folder mode writes one file per map)")
    ext = "." + args.format
    return [(n, lows[n], highs[n], rgbs.get(n), out / f"{n}{ext}") for n in sorted(lows)], low_res


def _rgb_jobs(args) -> list[tuple[str, None, None, Path, Path]]:
    if not args.two_stage:
        raise UserError(f"--predictor {args.predictor}: a predictor runs on the windows of --two-stage; one-stage "
                        "refines given maps (make them with `sddr-jax predict`)")
    if args.low or args.high or args.input:
        raise UserError(f"--predictor {args.predictor}: takes RGB images (--rgb), not --low/--high/--input maps "
                        "(use --predictor precomputed for those)")
    if not args.rgb:
        raise UserError(f"--predictor {args.predictor}: give --rgb, an image or a folder of images")
    rgb, out = Path(args.rgb), Path(args.output)
    if not rgb.exists():
        raise FileNotFoundError(f"--rgb {rgb}: no such file or folder")
    if rgb.is_file():
        if out.is_dir():
            raise IsADirectoryError(f"--output {out}: is a folder; give a file name for one image")
        return [(rgb.stem, None, None, rgb, out)]
    images = _files(rgb, RGB_EXTS)
    if not images:
        raise UserError(f"--rgb {rgb}: no images ({', '.join(RGB_EXTS)})")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output {out}: exists and is not a folder (folder mode writes one file per image)")
    return [(n, None, None, images[n], out / f"{n}.{args.format}") for n in sorted(images)]


def two_stage_options(args) -> dict:
    """The keyword arguments of `refine_two_stage` that the command line sets."""
    from sddr_jax.inference.two_stage import GLOBAL_SIZES
    from sddr_jax.inference.windows import BASE_RESOLUTION

    global_sizes = tuple(args.global_sizes) if args.global_sizes else GLOBAL_SIZES
    base = BASE_RESOLUTION if args.base_resolution is None else args.base_resolution
    if min(global_sizes) < 1:
        raise UserError(f"--global-sizes: expected two positive resolutions, got {list(global_sizes)}")
    if base < 0:
        raise UserError(f"--base-resolution: expected a resolution >= 0, got {base}")
    return dict(schedule=_schedules()[args.schedule], size=args.size, resolution=args.resolution,
                global_sizes=global_sizes, base_resolution=base)


def _refiner_fn(args, model_config):
    import dataclasses

    from sddr_jax.inference.one_stage import RefinerFn

    fn = RefinerFn.from_config(model_config)
    return dataclasses.replace(fn, dtype="bfloat16") if args.bf16 else fn


def refine_rgb(args, params, predictor, rgb_path, out_path, model_config=None) -> np.ndarray:
    """Two-stage refinement of one RGB image with a model predictor; writes the map (and its preview)."""
    from sddr_jax import io
    from sddr_jax.commands.predict import read_rgb
    from sddr_jax.inference.two_stage import refine_two_stage

    rgb = read_rgb(str(rgb_path)).astype(np.float32)
    io.check_image_size(rgb.shape[0], rgb.shape[1], f"--rgb {rgb_path}")
    options = two_stage_options(args)
    out = refine_two_stage(params, rgb[None], predictor, refiner_fn=_refiner_fn(args, model_config),
                           return_global=True, **options)
    refined = np.asarray(out["depth"])[0, ..., 0]
    replace = args.overwrite or getattr(args, "skip_existing", False)
    io.write_depth(out_path, refined, overwrite=replace)
    if args.preview:
        import cv2

        from sddr_jax import viz

        high = cv2.resize(np.asarray(out["high"])[0, ..., 0], (rgb.shape[1], rgb.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
        size = options["global_sizes"][1]
        viz.save_panels(_preview_path(out_path), {"rgb": rgb, f"predictor at {size}": high, "refined": refined},
                        overwrite=replace)
    return refined


def refine_pair(args, params, low_path, high_path, rgb_path, out_path, low_res: int,
                model_config=None) -> np.ndarray:
    """Refine one pair and write it (and its preview); returns the refined map."""
    from sddr_jax import io
    from sddr_jax.inference.one_stage import refine_one_stage

    low = io.read_depth(low_path)
    high = io.read_depth(high_path)
    for what, p, a in (("low", low_path, low), ("high", high_path, high)):
        if not np.isfinite(a).all():
            raise UserError(f"{what} depth {p}: has NaN or infinite values")
    out_hw = io.read_image_size(rgb_path) if rgb_path else high.shape[:2]
    if args.two_stage:
        import jax.numpy as jnp

        from sddr_jax.inference.predictors import PrecomputedPredictor, stack_maps
        from sddr_jax.inference.two_stage import refine_two_stage
        from sddr_jax.ops import minmax_normalize

        def norm(a):
            return minmax_normalize(jnp.asarray(a, jnp.float32)[None, ..., None])

        image = stack_maps(norm(low), norm(high), *out_hw)
        refined = refine_two_stage(params, image, PrecomputedPredictor(low_resolution=low_res),
                                   refiner_fn=_refiner_fn(args, model_config), **two_stage_options(args))
        refined = np.asarray(refined)[0, ..., 0]
    else:
        refined = refine_one_stage(params, low, high, size=args.size, out_hw=out_hw, dtype=_compute_dtype(args),
                                   model_config=model_config)
    replace = args.overwrite or getattr(args, "skip_existing", False)  # skip-existing: only incomplete ones remain
    io.write_depth(out_path, refined, overwrite=replace)
    if args.preview:
        import cv2

        from sddr_jax import viz

        def fit(a):
            return cv2.resize(np.asarray(a, np.float32), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)

        viz.save_panels(_preview_path(out_path), {"low": fit(low), "high": fit(high), "refined": refined},
                        overwrite=replace)
    return refined


def _finished(job, preview: bool) -> bool:
    """Whether a job's output (and preview) exist and are complete: readable, with the expected size."""
    from sddr_jax import io

    _, _, high_path, rgb_path, out = job
    if not out.is_file() or (preview and not _preview_path(out).is_file()):
        return False
    try:
        want = io.read_image_size(rgb_path) if rgb_path else io.read_depth(high_path).shape[:2]
        return io.read_depth(out).shape[:2] == tuple(want)
    except (UserError, ValueError, OSError):
        return False


def _preview_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + "_preview.png")


def _load_predictor(args):
    """The model predictor of --predictor (None for precomputed maps), checked before anything is computed."""
    if not uses_model_predictor(args):
        if args.predictor_weights:
            raise UserError("--predictor-weights: given without a model --predictor")
        return None
    import jax.numpy as jnp

    from sddr_jax.inference.predictors import make_predictor

    weights = args.predictor_weights
    if weights and not Path(weights).exists():
        raise FileNotFoundError(f"--predictor-weights {weights}: no such file or folder")
    return make_predictor(args.predictor, weights, output=args.predictor_output,
                          dtype=jnp.bfloat16 if args.bf16 else None)


def run(args) -> int:
    import sys

    from sddr_jax import io
    from sddr_jax.checkpoints import load_refiner
    from sddr_jax.io import check_writable_dir
    from sddr_jax.inference.one_stage import check_size

    if args.size is None:
        args.size = 1024 if args.two_stage else 2048
    check_size(args.size, "--size")
    jobs, folder_res = plan_jobs(args)
    low_res = args.low_resolution or folder_res or 448
    if args.two_stage and low_res <= 0:
        raise UserError(f"--low-resolution: expected a positive resolution, got {low_res}")
    if args.two_stage:
        two_stage_options(args)
    if args.skip_existing and args.overwrite:
        raise UserError("--skip-existing and --overwrite: choose one (keep finished outputs, or replace them)")
    skipped = 0
    if args.skip_existing:
        todo = [job for job in jobs if not _finished(job, args.preview)]
        skipped, jobs = len(jobs) - len(todo), todo
        if not jobs:
            print(f"all {skipped} outputs are complete; nothing to refine -> {args.output}")
            return 0
        # What a killed run left half-written: the temporary files of the outputs still to do (never a final name).
        for _, _, _, _, o in jobs:
            for p in (o, _preview_path(o)):
                for tmp in io.stale_temps(p):
                    tmp.unlink()
    # Refuse before computing anything: no partial output.
    taken = [p for _, _, _, _, o in jobs for p in ((o, _preview_path(o)) if args.preview else (o,)) if p.exists()]
    if taken and not (args.overwrite or args.skip_existing):
        raise FileExistsError(f"{taken[0]}: already exists" + (f" (and {len(taken) - 1} more)" if len(taken) > 1 else "")
                              + "; use --overwrite to replace, or --skip-existing to finish an interrupted run")
    if len(jobs) > 1:
        check_writable_dir(Path(args.output), "--output")
    else:
        check_writable_dir(jobs[0][4].parent, "--output folder")
    predictor = _load_predictor(args)
    if args.two_stage and predictor is None:
        print("sddr-jax refine: --two-stage on precomputed maps: the windows are crops of the stored --low/--high "
              "maps and add no detail; pass --predictor NAME to run a predictor on every window", file=sys.stderr)
    params, model_config = load_refiner(args.checkpoint)
    kept = f" (kept {skipped} complete outputs)" if skipped else ""
    if predictor is not None:
        mode = f"two-stage (S={args.size}, {args.schedule} schedule, predictor {args.predictor} on every window)"
    elif args.two_stage:
        mode = f"two-stage (S={args.size}, {args.schedule} schedule, precomputed maps, low at {low_res})"
    else:
        mode = f"one-stage (S={args.size})"

    def one(job):
        _, lo, hi, rgb, out = job
        # An output left incomplete by an interrupted run (only possible through --skip-existing) is replaced.
        if predictor is not None:
            return refine_rgb(args, params, predictor, rgb, out, model_config)
        return refine_pair(args, params, lo, hi, rgb, out, low_res, model_config)

    if len(jobs) == 1:
        _, lo, hi, rgb, out = jobs[0]
        refined = one(jobs[0])
        source = rgb if predictor is not None else f"{lo} + {hi}"
        print(f"refined {source}, {mode} -> {out} ({refined.shape[0]}x{refined.shape[1]}){kept}")
        return 0
    from tqdm.auto import tqdm

    for job in tqdm(jobs, desc="refine", unit="map"):
        one(job)
    print(f"refined {len(jobs)} maps, {mode} -> {args.output}{kept}")
    return 0
