"""`sddr-jax version`: versions of sddr-jax, Python and the numerical stack, and the JAX devices."""
from __future__ import annotations

import importlib.metadata as md
import platform

from sddr_jax import __version__

HELP = "print the versions of sddr-jax and its main dependencies"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets", "numpy")


def add_arguments(parser) -> None:
    parser.add_argument("--devices", action="store_true", help="also list the JAX devices (imports jax)")


def run(args) -> int:
    print(f"sddr-jax {__version__}")
    print(f"python {platform.python_version()}")
    for name in _PACKAGES:
        try:
            print(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            print(f"{name} (not installed)")
    if args.devices:
        import jax

        print(f"devices {jax.devices()}")
    return 0
