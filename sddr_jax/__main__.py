import sys

from sddr_jax.cli import main

sys.exit(main())
