"""A residual MLP in plain NumPy, forward and backward written by hand.

The code to read next to He et al. 2015 ("Deep Residual Learning for Image
Recognition", eq. 1 and 2): layers in `layers`, the residual block and network in
`network`, momentum SGD in `optim`, the training loop in `train`. It imports
nothing but NumPy, and its tests check every gradient against finite differences
and PyTorch autograd.
"""

from resnetlab.scratch.layers import Linear, ReLU, SoftmaxCrossEntropy
from resnetlab.scratch.network import ResidualBlock, ResidualMLP
from resnetlab.scratch.optim import SGD
from resnetlab.scratch.train import History, accuracy, evaluate, fit, predict, predict_logits
from resnetlab.scratch.validation import ScratchInputError

__all__ = [
    "SGD",
    "History",
    "Linear",
    "ReLU",
    "ResidualBlock",
    "ResidualMLP",
    "ScratchInputError",
    "SoftmaxCrossEntropy",
    "accuracy",
    "evaluate",
    "fit",
    "predict",
    "predict_logits",
]
