"""Models: a linear layer or an MLP, sized by the dataset, with a chosen initialisation."""

from __future__ import annotations

from torch import nn

from gdtrain.core.config import LinearModel, MLPModel

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def _initialise(model: nn.Module, init: str, nonlinearity: str) -> None:
    """xavier: Glorot-uniform weights; he: Kaiming-normal for the activation; biases to zero."""
    if init == "default":  # keep PyTorch's own nn.Linear initialisation
        return
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            if init == "xavier":
                nn.init.xavier_uniform_(layer.weight)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def build_linear(cfg: LinearModel, in_features: int, out_features: int) -> nn.Module:
    """One affine map x → Wx + b: linear, logistic or softmax regression by the loss."""
    model = nn.Sequential(nn.Linear(in_features, out_features, bias=cfg.bias))
    _initialise(model, cfg.init, "linear")
    return model


def build_mlp(cfg: MLPModel, in_features: int, out_features: int) -> nn.Module:
    """Linear → activation (→ dropout) for each hidden size, then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in cfg.hidden_sizes:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, out_features))
    _initialise(model, cfg.init, cfg.activation)
    return model


MODELS = {"linear": build_linear, "mlp": build_mlp}


def build_model(cfg: LinearModel | MLPModel, in_features: int, out_features: int) -> nn.Module:
    """The configured model for inputs of `in_features` and `out_features` outputs."""
    return MODELS[cfg.name](cfg, in_features, out_features)
