"""Names of the sddr-jax TFDS datasets -> their builder classes (docs/method.md §9.2, §9.3, §10).

Builders live in the top-level folder `datasets/<name>/` (installed as `sddr_jax_datasets.<name>`) and are
imported only when asked for, so listing them costs nothing. Used by `sddr-jax datasets` and by
`sddr_jax.data.pipeline`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from sddr_jax.errors import UserError

# name -> (kind, one-line description); kind is "generated", "eval" or "train".
DATASETS: dict[str, tuple[str, str]] = {
    "sddr_synthetic": ("generated", "procedural RGB-D scenes (no download; configs tiny, s256, s512, s1024, s2048)"),
    "middlebury2021": ("eval", "Middlebury 2021, PFM disparity + calib.txt (configs float, legacy_uint8)"),
    "middlebury2014": ("eval", "Middlebury 2014 -perfect scenes, PFM + calib (configs float, legacy_uint8)"),
    "eth3d": ("eval", "ETH3D high-res multi-view training scenes, raw float32 laser-scan depth"),
    "multiscopic": ("eval", "Multiscopic test set, 8-bit disparity PNGs"),
    "hypersim": ("eval", "Hypersim, HDF5 colour + distance, tone-mapped"),
    "diml": ("eval", "DIML/CVL official test set (configs hr, lr)"),
    "diode": ("eval", "DIODE validation (configs all, indoors, outdoor)"),
    "booster": ("eval", "Booster balanced training set, disp_00.npy + calib_00-02.xml (configs all, im0)"),
    "hrwsi": ("train", "HR-WSI web stereo images"),
    "tartanair": ("train", "TartanAir"),
    "unrealstereo4k": ("train", "UnrealStereo4K"),
    "mvs_synth": ("train", "MVS-Synth (EXR depth)"),
    "irs": ("train", "IRS indoor stereo (EXR disparity -> metric depth)"),
    "ibims1": ("train", "iBims-1 laser-scanned indoor depth (.mat or 16-bit PNG + masks)"),
    "holopix50k": ("train", "Holopix50k stereo pairs, depth = 1/disparity from StereoSGBM + left-right check"),
    "wsvd": ("train", "WSVD side-by-side web stereo videos, depth = 1/disparity from StereoSGBM (sampled frames)"),
    "vdw": ("train", "VDW stereo-video frames, 1/(uint16 GMFlow disparity) on the valid mask (sampled frames)"),
}


def builder_class(name: str):
    """The builder class of dataset `name` (imports `sddr_jax_datasets.<name>`)."""
    if name not in DATASETS:
        raise UserError(f"dataset {name!r}: unknown; known datasets: {', '.join(DATASETS)}")
    module = importlib.import_module(f"sddr_jax_datasets.{name}.{name}_dataset_builder")
    return module.Builder


def get_builder(name: str, data_dir, config: str | None = None, **kwargs):
    """An instance of the builder of `name` writing/reading under `data_dir` (ArrayRecord files).

    kwargs go to the builder (`skip_corrupt`, `predictor`, and `num_workers` for `sddr_synthetic`).
    """
    cls = builder_class(name)
    configs = [c.name for c in getattr(cls, "BUILDER_CONFIGS", [])]
    if config is not None and config not in configs:
        raise UserError(f"dataset {name}: unknown config {config!r}; configs: {configs or 'none'}")
    if config is None and configs:
        config = cls.DEFAULT_CONFIG_NAME or configs[0]
    if config is not None:
        kwargs["config"] = config
    return cls(data_dir=str(Path(data_dir).expanduser()), **kwargs)


def build(name: str, data_dir, manual_dir=None, config: str | None = None, *, overwrite: bool = False,
          **kwargs):
    """Builds dataset `name` (once): returns the builder, with `builder.skipped` = {split: [reasons]}.

    An existing build is reused unless `overwrite` (then it is deleted and rebuilt).
    """
    import tensorflow_datasets as tfds

    builder = get_builder(name, data_dir, config, **kwargs)
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        manual = Path(manual_dir).expanduser() if manual_dir is not None else (
            Path(data_dir).expanduser() / "downloads" / "manual")
        if not manual.is_dir():
            raise UserError(f"manual_dir {manual}: not a directory. {name} expects: {instructions}")
        if not any(manual.iterdir()):
            raise UserError(f"manual_dir {manual}: empty. {name} expects: {instructions}")
    if builder.is_prepared() and not overwrite:
        builder.already_built = True
        return builder
    builder.already_built = False
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # regenerates the records, keeps downloads
    download_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(Path(manual_dir).expanduser()), download_mode=mode)
    builder.download_and_prepare(download_config=download_config)
    return builder
