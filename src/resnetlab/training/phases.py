"""What trains in a phase of a run: which parameters, at which lrs, and which BatchNorm
statistics stay fixed. A plain run is one 'all' phase; fine-tuning strategies are several.

Strategies (``--strategy``), each a list of phases that the run trains one after the other
(``training/run.py``), each with its own optimiser and lr schedule:

- ``linear-probe``: only the classifier trains; the backbone is frozen, its BatchNorm layers in
  eval mode, so the features are exactly the pretrained ones.
- ``full``: everything trains, the backbone at ``lr * backbone_lr_mult`` and each earlier stage
  at a further ``stage_decay`` times less (discriminative fine-tuning, Howard & Ruder 2018,
  sec. 3.2).
- ``gradual``: fastai's ``fine_tune``: ``head_epochs`` (default 1) with only the classifier
  training at ``lr``, then everything at half that lr, the backbone discriminatively as in
  ``full`` (gradual unfreezing, Howard & Ruder 2018, sec. 3.3, in two steps).
- ``lp-ft``: a linear probe for ``head_epochs`` (default half the epochs), then every layer at one
  small lr, ``lr * backbone_lr_mult`` (Kumar et al. 2022, "Fine-tuning can distort pretrained
  features": a head that already fits keeps the early gradients from distorting the features).

BatchNorm policy (``--bn``) for the phases in which the backbone trains: ``train`` (batch
statistics, running averages updated), ``freeze-stats`` (running averages used and kept, affine
terms train) or ``frozen`` (BatchNorm2d replaced by torchvision's ``FrozenBatchNorm2d``: neither
changes). In head-only phases the backbone's BatchNorm layers always stay in eval mode.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resnetlab.config.finetune import Phase
from resnetlab.config.train import TrainConfig
from resnetlab.errors import ResnetlabError
from resnetlab.training.optim import parameter_groups

# Residual stages: 'layerN.' (image and 1-D ResNets) or 'blocks.N.' (the tabular ResNet).
_STAGE_KEY = re.compile(r"^(?:layer(\d+)|blocks\.(\d+))\.")


def check_resumed_phases(saved: list[dict[str, Any]], planned: list[Phase], current: int) -> None:
    """Refuse a resumed fine-tuning run whose phases (with another ``--epochs``) differ from
    the saved run's before the current one, or in the current one's lrs."""
    before = [Phase(**phase) for phase in saved[: current + 1]]
    now = planned[: current + 1]
    same_past = before[:current] == now[:current]
    if (
        not same_past
        or len(now) <= current
        or replace(now[current], epochs=0) != replace(before[current], epochs=0)
    ):
        raise ResnetlabError(
            "--resume: with these --epochs the strategy's phases differ from the run's before "
            f"the one it stopped in (run: {before}, now: {now})"
        )


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``model`` (in place) by a ``FrozenBatchNorm2d`` holding
    the same statistics and affine terms: a fixed per-channel affine map, with no parameters."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(model, name, frozen.to(child.weight.device))
        else:
            freeze_batchnorm(child)
    return model


def parameter_stages(model: nn.Module) -> tuple[list[nn.Parameter], list[list[nn.Parameter]]]:
    """``(classifier parameters, backbone parameters by stage)``: the classifier is
    ``model.get_classifier()``; stage 0 is the stem, stage k the k-th residual stage; anything
    after the last stage (e.g. a final norm) joins it."""
    head = list(model.get_classifier().parameters())
    in_head = {id(param) for param in head}
    stages: list[list[nn.Parameter]] = [[]]
    for name, param in model.named_parameters():
        if id(param) in in_head:
            continue
        match = _STAGE_KEY.match(name)
        if match:
            stage = int(match[1]) if match[1] is not None else int(match[2]) + 1
            stages.extend([] for _ in range(stage + 1 - len(stages)))
            stages[stage].append(param)
        else:
            stages[-1].append(param)
    return head, stages


def phase_param_groups(
    model: nn.Module, phase: Phase, stage_decay: float, cfg: TrainConfig
) -> list[dict[str, Any]]:
    """Optimiser groups of the parameters that train in ``phase``: the classifier at
    ``phase.head_lr``; backbone stage s of S at ``phase.backbone_lr * stage_decay ** (S - s)``.
    Norm weights and biases skip weight decay unless ``cfg.decay_norm_and_bias``."""
    head, stages = parameter_stages(model)
    named = [("head", head, phase.head_lr)]
    if phase.backbone_lr is not None:
        last = len(stages) - 1
        named += [
            (f"stage{s}", params, phase.backbone_lr * stage_decay ** (last - s))
            for s, params in enumerate(stages)
        ]
    groups = []
    for name, params, lr in named:
        trainable = nn.ParameterList(p for p in params if p.requires_grad)  # the same tensors
        for group in parameter_groups(trainable, cfg.weight_decay, cfg.decay_norm_and_bias):
            if group["params"]:
                groups.append({**group, "lr": lr, "name": name})
    return groups


def _stay_in_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: run ``module`` in eval mode whatever ``model.train()`` set."""
    module.training = False


@contextmanager
def phase_mode(
    model: nn.Module, phase: Phase, bn_policy: str, *, unfreeze: bool = False
) -> Iterator[frozenset[str]]:
    """Within the block, only ``phase``'s parameters require gradients, of those that required
    them before (what the model freezes itself, e.g. the speed-run network's whitening filters,
    stays frozen; ``unfreeze``: it trains too, only to resume a run that trained it, see
    ``resumes_unfrozen``), and the BatchNorm layers whose statistics must stay fixed run in
    eval mode even under ``model.train()``; it gives their names. On exit the model's
    ``requires_grad`` flags are as they were."""
    head, _ = parameter_stages(model)
    norms = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    # BatchNorm1d has no frozen twin in torchvision: under 'frozen' it is pinned and not trained.
    fixed_norms = not phase.trains_backbone or bn_policy != "train"
    fixed_affine = (
        {id(p) for m in norms.values() for p in m.parameters()} if bn_policy == "frozen" else ()
    )
    trains = {id(p) for p in head}
    if phase.trains_backbone:
        trains |= {id(p) for p in model.parameters() if id(p) not in fixed_affine}
    before = [(p, p.requires_grad) for p in model.parameters()]
    for param, flag in before:
        param.requires_grad_((flag or unfreeze) and id(param) in trains)
    hooks = [m.register_forward_pre_hook(_stay_in_eval) for m in norms.values() if fixed_norms]
    try:
        yield frozenset(norms if fixed_norms else ())
    finally:
        for hook in hooks:
            hook.remove()
        for param, flag in before:
            param.requires_grad_(flag)


def describe_phase(
    index: int, count: int, first_epoch: int, phase: Phase, groups: list[dict[str, Any]]
) -> str:
    """One line: the phase's epochs, how many parameters train, and the peak lr of each group
    (one 'backbone' lr where every stage has the same)."""
    trained = sum(p.numel() for g in groups for p in g["params"])
    lrs: dict[str, float] = {g["name"]: g["lr"] for g in groups}
    stages = {name: lr for name, lr in lrs.items() if name != "head"}
    if len(set(stages.values())) == 1:
        lrs = {"head": lrs["head"], "backbone": next(iter(stages.values()))}
    last_epoch = first_epoch + phase.epochs - 1
    return (
        f"phase {index}/{count} '{phase.name}', epochs {first_epoch}-{last_epoch}: "
        f"{trained:,} parameters train, lr {', '.join(f'{k} {v:.3g}' for k, v in lrs.items())}"
    )


def _group_sizes(groups: list[dict[str, Any]]) -> list[int]:
    return [len(group["params"]) for group in groups]


def resumes_unfrozen(
    model: nn.Module,
    phase: Phase,
    bn_policy: str,
    stage_decay: float,
    cfg: TrainConfig,
    saved: dict[str, Any],
) -> bool:
    """Whether the optimiser state ``saved`` for ``phase`` comes from a run of before the
    parameters that a model freezes itself stayed frozen (every 'all' phase trained them then):
    its groups are those of the phase with them unfrozen, which differ from the phase's now."""

    def sizes(unfreeze: bool) -> list[int]:
        with phase_mode(model, phase, bn_policy, unfreeze=unfreeze):
            return _group_sizes(phase_param_groups(model, phase, stage_decay, cfg))

    groups = _group_sizes(saved["param_groups"])
    return groups != sizes(False) and groups == sizes(True)
