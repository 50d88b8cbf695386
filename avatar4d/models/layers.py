"""Layers shared by the StyleGAN2/EG3D family: equalised learning rate and biased activations.

StyleGAN2 stores weights unscaled and multiplies them at run time by ``lr_mul / sqrt(fan_in)``
(the "equalised learning rate"), so released checkpoints load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# activation name -> (function, default gain); gains follow StyleGAN2's bias_act table.
_ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2.0)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2.0)),
    "tanh": (torch.tanh, 1.0),
    "sigmoid": (torch.sigmoid, 1.0),
    "softplus": (F.softplus, 1.0),
    "silu": (F.silu, math.sqrt(2.0)),
}


def bias_act(x: Tensor, bias: Tensor | None = None, *, dim: int = 1, act: str = "linear",
             gain: float | None = None, clamp: float | None = None) -> Tensor:
    """``act(x + bias) * gain``, optionally clamped to ``[-clamp, clamp]`` (StyleGAN2's bias_act)."""
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose from {sorted(_ACTIVATIONS)}")
    fn, default_gain = _ACTIVATIONS[act]
    if bias is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + bias.reshape(shape)
    x = fn(x)
    g = default_gain if gain is None else gain
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate: ``y = act(x @ (W * lr_mul / sqrt(in)).T + b * lr_mul)``.

    Parameter names and shapes (``weight [out, in]``, ``bias [out]``) match StyleGAN2/EG3D.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 activation: str = "linear", lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., in] -> [..., out]
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, dim=x.ndim - 1, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"
