"""The NumPy residual MLP against finite differences, PyTorch autograd and torch.optim.SGD."""

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.scratch import (
    SGD,
    ResidualBlock,
    ResidualMLP,
    ScratchInputError,
    SoftmaxCrossEntropy,
    accuracy,
    evaluate,
    fit,
)


def small_model() -> ResidualMLP:
    """4 -> 3 (stem), 3 -> 3 (identity block), 3 -> 5 (projection block), 5 -> 3 (head).

    Biases are drawn at random too: with zero biases a pre-activation can sit exactly on
    the ReLU's kink (a sample whose stem units are all off), where finite differences fail.
    """
    model = ResidualMLP(widths=(3, 5), in_features=4, num_classes=3, seed=1)
    rng = np.random.default_rng(1)
    model.load_state_dict({name: rng.normal(0, 0.7, v.shape) for name, v in model.params()})
    return model


def small_batch() -> tuple[np.ndarray, np.ndarray]:
    """Six samples covering all three classes."""
    rng = np.random.default_rng(2)
    return rng.standard_normal((6, 4)), np.array([0, 1, 2, 2, 1, 0])


def loss_and_grads(model: ResidualMLP, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Run forward and backward; return the loss and dL/dx."""
    criterion = SoftmaxCrossEntropy()
    loss = criterion.forward(model.forward(x), y)
    return loss, model.backward(criterion.backward())


def max_relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| over the tensor, relative to its largest entry.

    Entry by entry the ratio is meaningless where a gradient is ~0 (a dead ReLU unit).
    """
    scale = max(np.abs(analytic).max(), np.abs(numeric).max(), 1e-12)
    return float(np.abs(analytic - numeric).max() / scale)


def numeric_gradient(
    loss_of: Callable[[], float], array: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central differences (L(a + eps) - L(a - eps)) / 2 eps, one entry of `array` at a time."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = loss_of()
        array[index] = saved - eps
        minus = loss_of()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad


class TorchBlock(nn.Module):
    """The same residual block in PyTorch, for autograd to differentiate."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        width_out, width_in = block.fc1.params["weight"].shape
        self.fc1 = nn.Linear(width_in, width_out, dtype=torch.float64)
        self.fc2 = nn.Linear(width_out, width_out, dtype=torch.float64)
        self.shortcut = (
            nn.Linear(width_in, width_out, bias=False, dtype=torch.float64)
            if block.shortcut is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.fc2(torch.relu(self.fc1(x))) + skip


def torch_twin(model: ResidualMLP) -> nn.Module:
    """An equivalent torch module holding a copy of the NumPy model's weights."""
    twin = nn.Module()
    twin.stem = nn.Linear(*model.stem.params["weight"].shape[::-1], dtype=torch.float64)
    twin.blocks = nn.ModuleList(TorchBlock(block) for block in model.blocks)
    twin.head = nn.Linear(*model.head.params["weight"].shape[::-1], dtype=torch.float64)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return twin


def torch_forward(twin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(twin.stem(x))
    for block in twin.blocks:
        h = block(h)
    return twin.head(h)


def test_package_imports_nothing_but_numpy() -> None:
    code = "import sys, resnetlab.scratch; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_structure_follows_widths() -> None:
    model = ResidualMLP(widths=(20, 40), in_features=10, num_classes=2, seed=0)
    shapes = {name: value.shape for name, value in model.params()}
    assert shapes == {
        "stem.weight": (20, 10),
        "stem.bias": (20,),
        "blocks.0.fc1.weight": (20, 20),
        "blocks.0.fc1.bias": (20,),
        "blocks.0.fc2.weight": (20, 20),
        "blocks.0.fc2.bias": (20,),
        "blocks.1.fc1.weight": (40, 20),
        "blocks.1.fc1.bias": (40,),
        "blocks.1.fc2.weight": (40, 40),
        "blocks.1.fc2.bias": (40,),
        "blocks.1.shortcut.weight": (40, 20),
        "head.weight": (2, 40),
        "head.bias": (2,),
    }
    assert [name for name, _ in model.grads()] == list(shapes)
    deeper = ResidualMLP(widths=(20, 40), blocks_per_width=2)
    assert [block.shortcut is not None for block in deeper.blocks] == [False, False, True, False]


def test_same_seed_same_weights_and_float32_option() -> None:
    first, second = ResidualMLP(seed=3).state_dict(), ResidualMLP(seed=3).state_dict()
    assert all(np.array_equal(first[name], second[name]) for name in first)
    model = ResidualMLP(seed=3, dtype=np.float32)
    x = np.random.default_rng(0).random((5, 10))
    loss_and_grads(model, x, np.zeros(5, dtype=np.int64))
    assert model.forward(x).dtype == np.float32
    assert all(grad.dtype == np.float32 for _, grad in model.grads())


def test_gradients_match_central_differences() -> None:
    model = small_model()
    x, y = small_batch()
    _, grad_x = loss_and_grads(model, x, y)
    analytic = {name: grad.copy() for name, grad in model.grads()}

    def loss_only() -> float:
        return SoftmaxCrossEntropy().forward(model.forward(x), y)

    for name, value in model.params():
        assert max_relative_error(analytic[name], numeric_gradient(loss_only, value)) < 1e-6, name
    assert max_relative_error(grad_x, numeric_gradient(loss_only, x)) < 1e-6


def test_identity_block_gradient_is_the_identity_when_the_residual_is_zero() -> None:
    """dL/dx = dL/dy (I + dF/dx): with F = 0 the block passes x and dL/dy through unchanged."""
    block = ResidualBlock(3, 3, np.random.default_rng(0), np.float64)
    block.fc2.params["weight"][...] = 0.0
    x, grad_y = np.random.default_rng(1).standard_normal((2, 4, 3))
    np.testing.assert_array_equal(block.forward(x), x)
    np.testing.assert_array_equal(block.backward(grad_y), grad_y)


def test_agrees_with_torch_autograd() -> None:
    model = small_model()
    x, y = small_batch()
    loss, grad_x = loss_and_grads(model, x, y)

    twin = torch_twin(model)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    loss_torch = nn.functional.cross_entropy(torch_forward(twin, x_torch), torch.from_numpy(y))
    loss_torch.backward()

    assert abs(loss - loss_torch.item()) < 1e-10
    np.testing.assert_allclose(grad_x, x_torch.grad.numpy(), rtol=0, atol=1e-10)
    torch_grads = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    assert set(torch_grads) == {name for name, _ in model.grads()}
    for name, grad in model.grads():
        np.testing.assert_allclose(grad, torch_grads[name], rtol=0, atol=1e-10, err_msg=name)


def test_sgd_matches_torch_optim_sgd_over_two_steps() -> None:
    model = small_model()
    twin = torch_twin(model)
    settings = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    optimizer, reference = SGD(model, **settings), torch.optim.SGD(twin.parameters(), **settings)
    named_torch = dict(twin.named_parameters())
    rng = np.random.default_rng(4)
    for _ in range(2):
        for name, grad in model.grads():
            grad[...] = rng.standard_normal(grad.shape)
            named_torch[name].grad = torch.from_numpy(grad.copy())
        optimizer.step()
        reference.step()
    for name, value in model.params():
        np.testing.assert_allclose(value, named_torch[name].detach().numpy(), rtol=0, atol=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits() -> None:
    criterion = SoftmaxCrossEntropy()
    loss = criterion.forward(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert loss == pytest.approx(500.0)
    np.testing.assert_allclose(criterion.backward(), [[0.0, 0.0], [-0.5, 0.5]], atol=1e-12)


def nonlinear_problem(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1,000 points in [0, 1]^10; class 1 below the curve x1 = (sin(2 pi x0) + 1) / 2."""
    x = np.random.default_rng(seed).random((1000, 10))
    return x, (np.sin(2 * np.pi * x[:, 0]) * 0.5 + 0.5 > x[:, 1]).astype(np.int64)


def test_fit_learns_a_nonlinear_rule() -> None:
    x, y = nonlinear_problem(0)
    x_val, y_val = nonlinear_problem(1)
    model = ResidualMLP(widths=(20, 40), in_features=10, num_classes=2, seed=0)
    epochs_seen: list[int] = []
    settings = {"epochs": 40, "batch_size": 32, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}
    history = fit(
        model,
        x,
        y,
        **settings,
        seed=0,
        validation_data=(x_val, y_val),
        on_epoch=lambda epoch, _: epochs_seen.append(epoch),
    )
    assert epochs_seen == list(range(1, 41))
    assert len(history.loss) == len(history.accuracy) == len(history.val_accuracy) == 40
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert accuracy(model, x, y) > 0.85
    assert evaluate(model, x_val, y_val) == (history.val_loss[-1], history.val_accuracy[-1])
    assert history.val_accuracy[-1] > 0.85


def test_fit_is_reproducible_for_a_seed() -> None:
    x, y = nonlinear_problem(0)
    runs = [fit(ResidualMLP(seed=5), x, y, epochs=2, seed=7).loss for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x, y: m.forward(x[:, :9]), r"expected shape \(N, 10\), got \(1000, 9\)"),
        (lambda m, x, y: fit(m, x[:, :9], y, epochs=1), r"expected shape \(N, 10\)"),
        (lambda m, x, y: accuracy(m, x[:, :9], y), r"expected shape \(N, 10\)"),
        (lambda m, x, y: fit(m, x, np.where(y == 1, 2, 0), epochs=1), r"label 2 out of range"),
        (lambda m, x, y: accuracy(m, x, y - 1), r"label -1 out of range \[0, 2\)"),
        (lambda m, x, y: fit(m, x, y.astype(float), epochs=1), r"integer class indices"),
        (lambda m, x, y: fit(m, x, y[:10], epochs=1), r"labels: expected shape \(1000,\)"),
        (lambda m, x, y: fit(m, x, y, epochs=0), r"epochs: must be > 0"),
        (lambda m, x, y: fit(m, x, y, epochs=1, lr=-1.0), r"lr: must be > 0"),
        (lambda m, x, y: m.load_state_dict({}), r"missing keys \['blocks.0.fc1.bias'"),
        (lambda m, x, y: ResidualMLP(widths=()), r"widths, in_features and num_classes"),
    ],
)
def test_bad_input_raises_a_clear_value_error(
    call: Callable[[ResidualMLP, np.ndarray, np.ndarray], object], message: str
) -> None:
    x, y = nonlinear_problem(0)
    with pytest.raises(ValueError, match=message) as caught:
        call(ResidualMLP(seed=0), x, y)
    assert isinstance(caught.value, ScratchInputError)
    assert isinstance(caught.value, ResnetlabError)
