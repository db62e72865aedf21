"""Package list only (everything else is in pyproject.toml).

The TFDS builders live in the top-level folder `datasets/` (one folder per dataset, tfds layout) and are
installed as the package `sddr_jax_datasets`, so that `import sddr_jax_datasets.middlebury2021` works
and never shadows Hugging Face's `datasets`. The experiment configs of `configs/` are installed as
`sddr_jax_configs` so that `sddr-jax demo` finds its config from any working directory.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["sddr_jax", "sddr_jax.*"])
packages += ["sddr_jax_datasets"] + [
    f"sddr_jax_datasets.{name}" for name in find_packages(where="datasets")
]
packages += ["sddr_jax_configs"]
setup(packages=packages, package_dir={"sddr_jax_datasets": "datasets", "sddr_jax_configs": "configs"})
