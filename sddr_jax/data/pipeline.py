"""Input pipeline: `tfds.data_source` -> grain `MapDataset` -> batches in the layout the train step wants (docs/method.md §10).

    source (ArrayRecord, random access)
      -> shard by JAX process (ShardByJaxProcess: contiguous 1/process_count of the records)
      -> seeded shuffle (a new order each epoch) -> repeat
      -> decode + augment on the host (OpenCV; a per-example RNG derived from the seed and the stream index)
      -> to_iter_dataset (thread pool) -> batch
      -> simulated base predictor for records without precomputed low/high (jitted, per-example keys)
      -> flat (B_local, ...) batches of this process's rows (`training.parallel.Placement` lays them out)

Every stage is a grain transformation, so `iterator.get_state()` / `set_state()` (and Orbax, through
`grain.checkpoint.CheckpointSave/CheckpointRestore`) resume the stream exactly: the augmentation and the
simulated-predictor noise depend only on (seed, process index, position in the stream).

Batch dict (docs/architecture.md): `rgb (B,S,S,3)` float32 in [0,1], `low`/`high (B,S,S,1)` float32 in [0,1]
(min-max normalised per example), `depth (B,S,S,1)` float32, `valid (B,S,S,1)` bool (finite and > 0); with
`edge_poor` also `scene_depth (B,S,S,1)`, the sharp depth behind an edge-poor `depth`.

What the paper leaves open and we chose (docs/method.md §10: "augmentation similar to GBDF", GBDF resizes to 2048²):
a random crop covering `crop_scale` of each side (1.0 = the whole image), squashed to S x S like the
official resize, horizontal flip, photometric jitter on the RGB only. Ground-truth depth is resized with
nearest neighbour (no mixing across occlusion edges or with invalid zeros); precomputed low/high with
nearest neighbour as the official demo does; RGB bilinear.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import cv2
import grain
import jax
import numpy as np

from sddr_jax.data import registry
from sddr_jax.errors import UserError
from sddr_jax.noise import simulate_prediction
from sddr_jax.ops import fill_invalid, minmax_normalize

log = logging.getLogger("sddr_jax.data.pipeline")



@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Host-side augmentation. `AugmentConfig.none()` = evaluation (whole image, no jitter)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)  # side of the random crop, fraction of each image side
    flip_prob: float = 0.5
    brightness: float = 0.2  # multiply by 1 + U(-b, b)
    contrast: float = 0.2  # blend with the mean grey by 1 + U(-c, c)
    saturation: float = 0.2  # blend with the grey image by 1 + U(-s, s)
    gamma: tuple[float, float] = (0.8, 1.25)

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(crop_scale=(1.0, 1.0), flip_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                   gamma=(1.0, 1.0))

    def validate(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"augment.crop_scale: expected 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 <= self.flip_prob <= 1:
            raise UserError(f"augment.flip_prob: expected a probability, got {self.flip_prob}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise UserError(f"augment.gamma: expected 0 < min <= max, got {self.gamma}")


# --------------------------------------------------------------------------------------------------------
# Sources and decoding


def data_source(name: str, data_dir, split: str, config: str | None = None):
    """The random-access `tfds.data_source` of a built sddr-jax dataset (no TensorFlow needed)."""
    builder = registry.get_builder(name, data_dir, config)  # imports and registers the builder
    if not builder.is_prepared():
        raise UserError(f"dataset {builder.info.full_name} is not built under {data_dir}; run "
                        f"'sddr-jax datasets build {name} --data_dir {data_dir}"
                        + (f" --config {builder.builder_config.name}" if builder.builder_config else "") + "'")
    if split not in builder.info.splits:
        raise UserError(f"dataset {name}: no split {split!r}; splits: {list(builder.info.splits)}")
    return builder.as_data_source(split=split)  # what tfds.data_source(name, data_dir=...) returns


def _decode_png(data: bytes, what: str, flags: int) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        raise UserError(f"{what}: corrupt PNG")
    return arr


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record -> `rgb` uint8 (H,W,3), `depth` float32 (H,W), `low`/`high` float32 (h,w) or None."""
    name = record.get("name", b"?")
    name = name.decode() if isinstance(name, bytes) else str(name)
    bgr = _decode_png(record["rgb"], f"record {name} rgb", cv2.IMREAD_COLOR)
    depth = np.asarray(record["depth"], np.float32)
    if depth.shape != bgr.shape[:2]:
        raise UserError(f"record {name}: rgb is {bgr.shape[:2]} but depth is {depth.shape}")
    out = {"name": name, "rgb": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "depth": depth, "low": None, "high": None}
    for key in ("low", "high"):
        data = record.get(key, b"")
        if data is not None and len(data):
            arr = _decode_png(data, f"record {name} {key}", cv2.IMREAD_UNCHANGED)
            if arr.ndim == 3:
                arr = arr[..., 0]
            out[key] = arr.astype(np.float32)
    if (out["low"] is None) != (out["high"] is None):
        raise UserError(f"record {name}: has only one of the low/high predictions")
    return out


def _crop_resize(arr: np.ndarray, box: tuple[float, float, float, float], size: int, interp: int) -> np.ndarray:
    """Crop `box` = (y0, x0, h, w) in fractions of the array's own size, then resize to size x size."""
    h, w = arr.shape[:2]
    y0, x0 = int(round(box[0] * h)), int(round(box[1] * w))
    y1, x1 = max(y0 + 1, int(round((box[0] + box[2]) * h))), max(x0 + 1, int(round((box[1] + box[3]) * w)))
    crop = arr[y0:min(y1, h), x0:min(x1, w)]
    if crop.shape[:2] == (size, size):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=interp)


def process_example(example: Mapping[str, Any], size: int, augment: AugmentConfig,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Decoded example -> one (un-batched) element of the batch dict at size x size (plus `has_pred`)."""
    lo, hi = augment.crop_scale
    sy, sx = (rng.uniform(lo, hi, 2) if hi > lo else (lo, lo))
    box = (rng.uniform(0, 1 - sy), rng.uniform(0, 1 - sx), sy, sx) if (sy < 1 or sx < 1) else (0.0, 0.0, 1.0, 1.0)
    flip = rng.uniform() < augment.flip_prob

    rgb = _crop_resize(example["rgb"], box, size, cv2.INTER_LINEAR).astype(np.float32) / 255.0
    depth = _crop_resize(example["depth"], box, size, cv2.INTER_NEAREST)
    has_pred = example["low"] is not None
    if has_pred:
        low = minmax_normalize(_crop_resize(example["low"], box, size, cv2.INTER_NEAREST), axis=(0, 1))
        high = minmax_normalize(_crop_resize(example["high"], box, size, cv2.INTER_NEAREST), axis=(0, 1))
    else:
        low = high = np.zeros((size, size), np.float32)

    # Photometric jitter on the RGB only (the maps describe geometry).
    if augment.brightness:
        rgb = rgb * (1.0 + rng.uniform(-augment.brightness, augment.brightness))
    if augment.contrast:
        mean = rgb.mean()
        rgb = mean + (rgb - mean) * (1.0 + rng.uniform(-augment.contrast, augment.contrast))
    if augment.saturation:
        grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        rgb = grey[..., None] + (rgb - grey[..., None]) * (1.0 + rng.uniform(-augment.saturation, augment.saturation))
    rgb = np.clip(rgb, 0.0, 1.0)
    if augment.gamma != (1.0, 1.0):
        rgb = rgb ** rng.uniform(*augment.gamma)

    if flip:
        rgb, depth, low, high = (a[:, ::-1] for a in (rgb, depth, low, high))
    depth = np.ascontiguousarray(depth, np.float32)
    return {
        "rgb": np.ascontiguousarray(rgb, np.float32),
        "low": np.ascontiguousarray(low)[..., None],
        "high": np.ascontiguousarray(high)[..., None],
        "depth": depth[..., None],
        "valid": (np.isfinite(depth) & (depth > 0))[..., None],
        "has_pred": np.bool_(has_pred),
    }


def edge_poor_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """An edge-poor measurement of a sharp depth map (H, W[, 1]): area-averaged to 1/`factor` of each side,
    then bilinearly upsampled back (docs/method.md §10, "Edge-poor ground truth").

    A stand-in for the ground truth of the paper's natural-scene training sets (stereo or optical-flow
    disparity, computed at a fraction of the image resolution and smooth across depth edges). Invalid
    pixels (not finite or <= 0) are filled with the valid mean before resampling and stay invalid.
    """
    factor = int(factor)
    if factor < 1:
        raise UserError(f"edge_poor_depth: factor must be >= 1, got {factor}")
    d = np.asarray(depth, np.float32)
    squeeze = d.ndim == 3
    d2 = d[..., 0] if squeeze else d
    if factor == 1:
        return d.copy()
    valid = np.isfinite(d2) & (d2 > 0)
    filled = fill_invalid(d2, valid, axis=(0, 1))
    h, w = d2.shape
    small = cv2.resize(filled, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.where(valid, out, d2).astype(np.float32)
    return out[..., None] if squeeze else out


# --------------------------------------------------------------------------------------------------------
# The simulated base predictor (sddr_jax.noise.simulate_prediction), applied per batch in one jitted call.


@functools.lru_cache(maxsize=16)
def _jitted_simulator(kwargs_items: tuple):
    """One jitted, vmapped `simulate_prediction` per set of noise settings, shared by every dataset."""
    kwargs = dict(kwargs_items)
    texture = float(kwargs.get("texture", 0.0) or 0.0) > 0

    def one(gt, rgb, base, index):
        key = example_key(base, index)
        low, high = simulate_prediction(gt[None], key, rgb=rgb[None] if texture else None, **kwargs)
        return low[0], high[0], jax.random.key_data(key)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)))


def example_key(base: jax.Array, index) -> jax.Array:
    """The key of one example: fold_in(base, index), base = fold_in(key(seed), process_index).

    `simulate_prediction` draws the example's low and high maps from it (folds 0 and 1), and the label pass
    of self-distillation its windows' predictions (docs/method.md §6), so the teacher sees the predictor that
    made the student's inputs.
    """
    return jax.random.fold_in(base, index)


def make_simulator(seed: int, process_index: int = 0, device=None, **predictor_kwargs) -> Callable:
    """`fn(depth (B,S,S,1), index (B,), rgb (B,S,S,3) or None) -> (low, high, key)` numpy, deterministic in
    (seed, process, index); `key` (B, 2) uint32 is each example's key data (`jax.random.wrap_key_data`).

    Each example's key is `example_key(fold_in(key(seed), process_index), index)`: the noise of an example
    does not depend on what else is in its batch, so a resumed stream reproduces it exactly. The
    computation runs on `device` (default: the first CPU device).
    """
    device = device if device is not None else jax.devices("cpu")[0]
    try:
        fn = _jitted_simulator(tuple(sorted(predictor_kwargs.items())))
    except TypeError:  # unhashable settings: no sharing of the compiled function
        fn = _jitted_simulator.__wrapped__(tuple(sorted(predictor_kwargs.items())))
    base = jax.device_put(jax.random.fold_in(jax.random.key(seed), process_index), device)

    def simulate(depth: np.ndarray, index: np.ndarray, rgb: np.ndarray | None = None):
        d = jax.device_put(np.asarray(depth, np.float32), device)
        i = jax.device_put(np.asarray(index, np.uint32), device)
        c = np.zeros(d.shape[:3] + (3,), np.float32) if rgb is None else np.asarray(rgb, np.float32)
        low, high, key = fn(d, jax.device_put(c, device), base, i)
        return np.asarray(low, np.float32), np.asarray(high, np.float32), np.asarray(key, np.uint32)

    return simulate


# --------------------------------------------------------------------------------------------------------
# The dataset


@dataclasses.dataclass
class SkipCounter:
    """Counts records skipped as corrupt (only with `skip_corrupt=True`); logged as they happen."""

    count: int = 0
    reasons: list = dataclasses.field(default_factory=list)


def _process_count_index() -> tuple[int, int]:
    opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return opts.shard_count, opts.shard_index


def make_dataset(
    source,
    *,
    image_size: int,
    global_batch_size: int,
    seed: int = 0,
    train: bool = True,
    num_epochs: int | None = None,
    augment: AugmentConfig | None = None,
    drop_remainder: bool | None = None,
    simulate: bool | str = "auto",
    predictor_kwargs: Mapping[str, Any] | None = None,
    predictor_device=None,
    num_threads: int = 2,
    prefetch_buffer_size: int = 8,
    skip_corrupt: bool = False,
    skip_counter: SkipCounter | None = None,
    shard: tuple[int, int] | None = None,
    edge_poor: tuple[float, int] | None = None,
    weights: Sequence[float] | None = None,
) -> grain.IterDataset:
    """The grain dataset of device-ready batches from a random-access `source` (e.g. `data_source(...)`).

    Args:
      source: a random-access source of stored records (`tfds.data_source`, or any sequence of dicts with
        `name`, `rgb` PNG bytes, `depth` float32 (H, W), `low`/`high` PNG bytes or b''); with `weights`, a
        sequence of such sources (a mixture, training only).
      image_size: S, the side of the square output maps.
      global_batch_size: batch over all processes; each process yields global_batch_size / process_count.
      seed: seeds the shuffle, the augmentation and the simulated predictor.
      train: shuffles, repeats (`num_epochs`, None = forever) and augments; False = one ordered pass with
        no augmentation (unless `augment` is given).
      augment: augmentation; default `AugmentConfig()` when training, `AugmentConfig.none()` otherwise.
      drop_remainder: drop a last partial batch (default: True when training).
      simulate: "auto" = run `sddr_jax.noise.simulate_prediction` on the GT depth for records without
        precomputed low/high; True = always; False = never (low/high stay 0 for such records).
      predictor_kwargs: keyword arguments of `simulate_prediction` (the noise model's settings).
      predictor_device: JAX device for the simulation (default: the first CPU device, which keeps it
        off the accelerator and makes the noise identical across hardware).
      num_threads, prefetch_buffer_size: grain's host thread pool for decoding/augmentation.
      skip_corrupt: skip records that fail to decode (each logged; counted in `skip_counter`); by default
        a corrupt record raises UserError naming it.
      shard: (process_count, process_index); default from JAX (`ShardByJaxProcess`).
      edge_poor: (fraction, factor): replace the ground truth of this fraction of the examples (drawn per
        example, after its augmentation draws) with `edge_poor_depth(depth, factor)`; the sharp map stays in
        `scene_depth` (every example has it), which is what the simulated predictor reads. None: off.
      weights: mixing weights of the sources (a mixture, e.g. the paper's training sets; docs/datasets.md):
        each source is sharded by process, shuffled with its own seed and repeated, then grain's
        `MapDataset.mix` interleaves them in these proportions (deterministic in the stream index, so the
        iterator state resumes the mixture exactly). None: `source` is one source.

    Returns:
      A grain `IterDataset`; `iter(ds)` is a `grain.DatasetIterator` with `get_state()`/`set_state()`.
    """
    if image_size <= 0:
        raise UserError(f"image_size: expected a positive int, got {image_size}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed: expected a non-negative int, got {seed!r}")
    if simulate not in ("auto", True, False):
        raise UserError(f"simulate: expected 'auto', True or False, got {simulate!r}")
    process_count, process_index = shard if shard is not None else _process_count_index()
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise UserError(f"global_batch_size {global_batch_size}: must be a positive multiple of the "
                        f"process count {process_count}")
    local_batch = global_batch_size // process_count
    if augment is None:
        augment = AugmentConfig() if train else AugmentConfig.none()
    augment.validate()
    if edge_poor is not None:
        fraction, factor = float(edge_poor[0]), int(edge_poor[1])
        if not 0.0 <= fraction <= 1.0 or factor < 1:
            raise UserError(f"edge_poor: expected (fraction in [0, 1], factor >= 1), got {tuple(edge_poor)}")
    if drop_remainder is None:
        drop_remainder = train
    counter = skip_counter if skip_counter is not None else SkipCounter()

    def shard_of(src, what: str) -> grain.MapDataset:
        n = len(src)
        if n < process_count:
            raise UserError(f"{what} has {n} records, fewer than the {process_count} processes")
        per_process = n // process_count  # ShardByJaxProcess(drop_remainder=True): equal shards
        return grain.MapDataset.source(src)[process_index * per_process:(process_index + 1) * per_process]

    if weights is None:
        ds = shard_of(source, "source")
        if train:
            ds = ds.shuffle(seed=seed).repeat(num_epochs)
        elif num_epochs not in (None, 1):
            ds = ds.repeat(num_epochs)
    else:
        sources = list(source)
        weights = [float(w) for w in weights]
        if not train:
            raise UserError("weights: a mixture of sources is for training streams (train=True) only")
        if len(sources) != len(weights) or not sources:
            raise UserError(f"weights: expected one weight per source, got {len(weights)} weights for "
                            f"{len(sources)} sources")
        if not all(np.isfinite(w) and w > 0 for w in weights):
            raise UserError(f"weights: expected positive finite numbers, got {weights}")
        # Source i shuffles with seed + i (its own order); epochs are per source (each repeats on its own).
        parts = [shard_of(src, f"source {i} of the mixture").shuffle(seed=seed + i).repeat(num_epochs)
                 for i, src in enumerate(sources)]
        ds = grain.MapDataset.mix(parts, weights)

    # Per-example RNG from (seed, process, stream index): independent of threads and batching.
    def load(index: int, record):
        rng = np.random.default_rng([seed, process_index, index])
        try:
            example = decode_record(record)
            element = process_example(example, image_size, augment, rng)
        except (UserError, ValueError, cv2.error) as e:
            if not skip_corrupt:
                raise UserError(f"{e} (stream index {index}; pass skip_corrupt=True to skip corrupt records)") from None
            counter.count += 1
            counter.reasons.append(str(e))
            log.warning("skipping corrupt record (stream index %d): %s; %d skipped so far", index, e, counter.count)
            return None
        if edge_poor is not None:
            # The draw comes after the augmentation's, so crops and jitter are those of a run without it.
            element["scene_depth"] = element["depth"]
            if rng.uniform() < fraction:
                element["depth"] = edge_poor_depth(element["depth"], factor)
        element["index"] = np.uint32(index % 2**32)
        return element

    ds = ds.map_with_index(load)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
    it = it.batch(local_batch, drop_remainder=drop_remainder)

    simulator = None
    if simulate is not False:
        simulator = make_simulator(seed, process_index, device=predictor_device, **dict(predictor_kwargs or {}))

    def finish(batch):
        has_pred = batch.pop("has_pred")
        index = batch.pop("index")
        batch["has_pred"] = has_pred
        if simulator is not None and (simulate is True or not has_pred.all()):
            # Invalid GT filled with the image's valid mean, exactly as the label pass does (labels.label_body).
            # The predictor looks at the scene: the sharp depth when the GT is an edge-poor measurement of it.
            gt = fill_invalid(batch.get("scene_depth", batch["depth"]), batch["valid"], axis=(1, 2, 3))
            low, high, batch["key"] = simulator(gt, index, batch["rgb"])
            keep = has_pred[:, None, None, None] if simulate == "auto" else np.zeros_like(has_pred)[:, None, None, None]
            batch["low"] = np.where(keep, batch["low"], low)
            batch["high"] = np.where(keep, batch["high"], high)
        return batch

    return it.map(finish)


# --------------------------------------------------------------------------------------------------------
# The training adapter: a config's training stream and held-out batches


def data_dir_of(config: Any) -> pathlib.Path:
    """`config.data.data_dir`, else $SDDR_JAX_DATA_DIR, else ~/tensorflow_datasets."""
    d = config.data.get("data_dir") or os.environ.get("SDDR_JAX_DATA_DIR") or "~/tensorflow_datasets"
    return pathlib.Path(d).expanduser()


def batch_spec(image_size: int, batch_size: int, keys=("rgb", "low", "high", "depth", "valid")
               ) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of `keys` of a `make_dataset` batch of `batch_size` rows at `image_size` (the batch dict
    of this module's docstring), known before any data is read: the training loop compiles its step from it
    while the dataset is still being built. `tests/test_input_pipeline.py` checks it against real batches."""
    s, b = int(image_size), int(batch_size)
    layout = {"rgb": ((b, s, s, 3), np.float32), "low": ((b, s, s, 1), np.float32),
              "high": ((b, s, s, 1), np.float32), "depth": ((b, s, s, 1), np.float32),
              "valid": ((b, s, s, 1), np.bool_), "scene_depth": ((b, s, s, 1), np.float32),
              "has_pred": ((b,), np.bool_), "key": ((b, 2), np.uint32)}
    unknown = set(keys) - set(layout)
    if unknown:
        raise UserError(f"batch_spec: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(layout))}")
    return {k: jax.ShapeDtypeStruct(*layout[k]) for k in keys}


def mixture_of(config: Any) -> list[tuple[str, str | None, float]]:
    """`config.data.mixture` as [(dataset name, builder config or None, weight)], checked; [] = no mixture.

    Each entry is a (name, config, weight) triple, e.g. `("tartanair", "", 0.125)` ("" = the builder's default
    config). The training stream draws from the entries in proportion to their weights (`make_dataset`); the
    held-out split stays `data.name`'s.
    """
    entries = config.data.get("mixture") or ()
    out = []
    for i, entry in enumerate(entries):
        try:
            name, builder_config, weight = entry
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"data.mixture[{i}]: expected a (dataset name, config, weight) triple, got "
                            f"{entry!r}") from None
        if name not in registry.DATASETS:
            raise UserError(f"data.mixture[{i}]: unknown dataset {name!r}; known: {', '.join(registry.DATASETS)}")
        if not (np.isfinite(weight) and weight > 0):
            raise UserError(f"data.mixture[{i}] ({name}): weight must be a positive number, got {weight}")
        out.append((str(name), str(builder_config) or None, weight))
    return out


class TrainData:
    """The training stream and the held-out batches of `config.data` (built with `make_dataset`).

    Each process reads its own shard; batches are flat (this process's rows) and `Placement.shard` lays
    them out. With `data.mixture` the training stream mixes several datasets (`mixture_of`); the held-out
    batches come from `data.eval_name` (`data.eval_config`) when set, else from `data.name`. A generated
    dataset (`sddr_synthetic`) that is not built yet is built first when `data.build_if_missing` is set
    (process 0 builds, the others wait at a barrier).
    """

    def __init__(self, config: Any):
        self.config = config
        d = config.data
        self.data_dir = data_dir_of(config)
        self.builder_config = d.get("config") or None
        self.mixture = mixture_of(config)
        # The held-out set: `data.eval_name` (with `data.eval_config`) when given, else `data.name`'s.
        eval_name = str(d.get("eval_name") or "")
        self.eval_dataset = ((eval_name, str(d.get("eval_config") or "") or None) if eval_name
                             else (d.name, self.builder_config))
        # In the same order on every process (each build may end at a barrier).
        wanted = [(d.name, self.builder_config), self.eval_dataset] + [(n, c) for n, c, _ in self.mixture]
        for name, builder_config in dict.fromkeys(wanted):
            self._build_if_missing(name, builder_config)
        # 0 / empty = simulate_prediction's own default (low S/4, high S, training resolution = low).
        self.predictor_kwargs = {k: v for k, v in dict(d.predictor).items() if v not in (0, None, "")}

    def _build_if_missing(self, name: str, builder_config: str | None) -> None:
        kind = registry.DATASETS.get(name, ("", ""))[0]
        builder = registry.get_builder(name, self.data_dir, builder_config)
        if not builder.is_prepared() and kind == "generated" and self.config.data.get("build_if_missing", False):
            if jax.process_index() == 0:
                registry.build(name, self.data_dir, None, builder_config)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices(f"sddr_jax data build {name}")

    def _dataset(self, split: str, train: bool, batch_size: int, num_epochs=None):
        d = self.config.data
        poor = dict(d.get("edge_poor_gt") or {})
        fraction = float(poor.get("fraction", 0.0))
        edge_poor = (fraction, int(poor.get("factor", 4))) if train and fraction > 0 else None
        weights = None
        if train and self.mixture:
            source = [data_source(name, self.data_dir, split, c) for name, c, _ in self.mixture]
            weights = [w for _, _, w in self.mixture]
        elif train:
            source = data_source(d.name, self.data_dir, split, self.builder_config)
        else:
            source = data_source(self.eval_dataset[0], self.data_dir, split, self.eval_dataset[1])
        augment = AugmentConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                            for k, v in d.augment.items()}) if train else None
        return make_dataset(
            source, image_size=int(d.image_size), global_batch_size=batch_size, seed=int(self.config.seed),
            train=train, num_epochs=num_epochs, augment=augment, drop_remainder=train,
            predictor_kwargs=self.predictor_kwargs, num_threads=int(d.num_threads),
            prefetch_buffer_size=int(d.prefetch_buffer_size), edge_poor=edge_poor, weights=weights)

    def train_iterator(self):
        """A checkpointable grain iterator over training batches (shuffled, augmented, repeated forever)."""
        return iter(self._dataset(self.config.data.train_split, True, int(self.config.data.batch_size)))

    def eval_batches(self, num_local_devices: int):
        """Yields (batch, n_real): the held-out split in order, at most `eval.num_examples` images per
        process (0 = all); a short last batch is padded by repeating its last row to split over the devices."""
        e = self.config.eval
        limit = int(e.num_examples) // jax.process_count() if int(e.num_examples) else None
        per_process = int(e.batch_size)
        seen = 0
        for batch in self._dataset(self.config.data.eval_split, False, per_process * jax.process_count(), 1):
            n = len(batch["depth"])
            if limit is not None:
                n = min(n, limit - seen)
                if n <= 0:
                    return
            seen += n
            pad = (-n) % num_local_devices
            batch = {k: np.concatenate([v[:n]] + [v[n - 1:n]] * pad) for k, v in batch.items()}
            yield batch, n
