"""What `gdtrain list` shows: every name the config schema accepts, with one line on each.

Plain text, torch-free, so that `list` starts at once; the builders' registries sit beside their
builders (models.MODELS, datasets.SYNTHETIC, losses.LOSSES; the optimizers' lines are the
registry's, core/optimizers.py), and tests/test_config.py checks that each table, its registry
and the schema name the same things.
"""

from __future__ import annotations

from gdtrain.core import optimizers as registry

MODEL_HELP = {
    "linear": "one affine layer: linear / logistic / softmax regression by the loss",
    "mlp": "fully connected layers (hidden_sizes, activation, init, dropout)",
}

DATASET_HELP = {
    "linear_regression": "y = w·x + b + noise (regression; the classic y = 2x + 3)",
    "blobs": "Gaussian blobs, k classes in d dimensions (linearly separable)",
    "moons": "two interleaved half-moons, 2 classes (not linearly separable)",
    "xor": "XOR of the signs of two uniform features, 2 classes (linear models stay at chance)",
    "mnist": "handwritten digits, 28x28 greyscale, 60k train + 10k test (IDX files)",
    "fashion_mnist": "Zalando clothing images, same format as MNIST",
    "kmnist": "Kuzushiji (cursive Japanese) characters, same format as MNIST",
    "function": "no data: x descends a test function (quadratic, ill_conditioned, rosenbrock, rastrigin, beale)",
}

OPTIMIZER_HELP = {entry.name: entry.help for entry in registry.ENTRIES}

SCHEDULE_HELP = {
    "constant": "the optimizer's lr throughout",
    "step": "lr × gamma every step_size epochs (StepLR)",
    "exponential": "lr × gamma every epoch (ExponentialLR)",
    "cosine": "cosine from lr to eta_min over t_max epochs (CosineAnnealingLR)",
    "plateau": "lr × factor when the validation loss stalls for patience epochs (ReduceLROnPlateau)",
}

LOSS_HELP = {
    "mse": "mean squared error (regression)",
    "cross_entropy": "softmax cross-entropy on logits (classification, any number of classes)",
    "bce": "binary cross-entropy on one logit (two classes)",
}
