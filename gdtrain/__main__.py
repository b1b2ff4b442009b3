"""`python -m gdtrain` runs the CLI (and is what torchrun launches)."""

from gdtrain.cli import main

main()
