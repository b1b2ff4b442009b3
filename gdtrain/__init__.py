"""gdtrain: compare gradient-descent optimizers from YAML experiment configs."""

__version__ = "0.1.0"
