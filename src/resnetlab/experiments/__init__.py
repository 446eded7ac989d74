"""Experiments that answer "why do residual connections work?" with measurements.

- ``degradation``: plain against residual CIFAR networks of growing depth (He et al. 2015,
  sec. 4.2, Fig. 6).
- ``gradients``: the gradient norm of every layer, at initialisation and after training.
- ``case_study``: the source article's worked case (its sec. 4.3 and 5.4), with baselines.
- ``paper``: parameters and multiply-adds next to the figures the paper published.
- ``video``: a 3-D ResNet on ``moving-digits`` against two controls that cannot see time.

Each module takes a config dataclass and returns a result dataclass; ``resnetlab experiment``
and ``resnetlab models --compare-paper`` are thin wrappers around them.
"""
