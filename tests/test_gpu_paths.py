"""What a run on GPUs does differently, checked on a machine without one: device queries are
mocked, fake tensors (``FakeTensorMode``) stand in for a GPU's, and a fake process group
refuses what NCCL refuses. No run on a GPU has confirmed these yet."""

from __future__ import annotations

import contextlib
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.data import Subset, TensorDataset

from resnetlab.bench.rows import MEAN, STD, load_user_loops
from resnetlab.checkpoints.state import STATE_FILE, capture_rng, load_state, restore_rng, save_state
from resnetlab.cli import main
from resnetlab.data.augment import BatchAugment
from resnetlab.data.bundle import DataBundle
from resnetlab.data.cache import CACHE_DIR_VARIABLE
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model
from resnetlab.runtime import matmul
from resnetlab.runtime.distributed import World
from resnetlab.runtime.precision import Precision, resolve_precision
from resnetlab.training import batches as batches_module
from resnetlab.training import run
from resnetlab.training.batches import BatchOrder, fits_on_device, keep_on_device, make_loader

CPU, GPU = torch.device("cpu"), torch.device("cuda")
# resnet_tabular on tabular-synthetic's 800 training rows: 16 steps of 50 rows per epoch
TABLE = [
    "train", "--model", "resnet_tabular", "--data", "tabular-synthetic", "--batch-size", "50",
    "--quiet",
]  # fmt: skip


def test_a_reduction_runs_on_the_device_that_nccl_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL refuses CPU tensors, yet a run reduces CPU flags and sums (stop requests, the
    epoch's summary, --time-budget): each goes to this process's GPU and comes back, in
    place; a tensor already on the GPU is reduced where it is."""
    ops: list[dist.ReduceOp] = []

    def nccl_all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
        if tensor.device != torch.device("cuda", 1):
            raise RuntimeError(f"NCCL: no backend for a tensor on {tensor.device}")
        ops.append(op)

    monkeypatch.setattr(dist, "all_reduce", nccl_all_reduce)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    world = World(rank=1, size=2, local_rank=1)
    with FakeTensorMode():
        flags = torch.zeros(2, dtype=torch.int64)
        assert world.max(flags) is flags and flags.device == CPU
        sums = torch.zeros(3, device="cuda:1")
        assert world.sum(sums) is sums
    assert ops == [dist.ReduceOp.MAX, dist.ReduceOp.SUM]


@dataclass
class FakeWorld:
    """What a run that believes it is rank 0 of 2 agreed on: the step of each agreement
    on stop requests and timed saves; ``signal_in_step`` sends it SIGTERM in that step."""

    agreed_at: list[int] = field(default_factory=list)
    signal_in_step: int | None = None


@pytest.fixture()
def two_processes(monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    """Runs in a world of 2 whose collectives return this process's own numbers."""
    seen = FakeWorld()
    monkeypatch.setattr(run, "launched_world", lambda: World(0, 2, 0))
    monkeypatch.setattr(run, "plot_curves", lambda *_: None)
    monkeypatch.setattr(World, "barrier", lambda self: None)
    monkeypatch.setattr(World, "wrap", lambda self, model: model)
    monkeypatch.setattr(World, "broadcast", lambda self, value: value)
    monkeypatch.setattr(World, "gather", lambda self, value: [value] * self.size)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    step = 0

    def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
        if tensor.dtype == torch.int64 and tensor.shape == (2,):  # (signal, late)
            seen.agreed_at.append(step)

    def after_step(t: run.Training, tally: Any) -> None:
        nonlocal step
        step = t.steps_done + 1
        if step == seen.signal_in_step:
            t.stops.signal = signal.SIGTERM
        counted(t, tally)

    counted = run.after_step
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(run, "after_step", after_step)
    return seen


def test_processes_agree_on_stops_and_timed_saves_every_few_steps_and_at_epoch_ends(
    two_processes: FakeWorld,
) -> None:
    """Not a collective per step: steps 10 and 16 (the epoch's last), then the epoch's end."""
    argv = [*TABLE, "--epochs", "1", "--save-every-minutes", "0.001", "--out", "run"]
    assert main(argv) == 0
    assert run.AGREE_EVERY == 10 and two_processes.agreed_at == [10, 16, 16]


def test_a_signal_to_one_process_stops_the_run_at_the_next_agreement(
    two_processes: FakeWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    two_processes.signal_in_step = 3
    assert main([*TABLE, "--epochs", "1", "--out", "run"]) == 143
    assert "stopped by SIGTERM after epoch 0, step 10" in capsys.readouterr().err
    assert load_state(Path("run") / STATE_FILE)["steps_done"] == 10


def test_a_gpu_random_state_goes_to_the_run_s_gpu_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state holds the run's GPU's stream; one saved before (every visible GPU's: 3 here,
    with 1 GPU now) gives the run's GPU its own; a run on the CPU takes none."""
    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), 7))
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device))
    )
    assert torch.equal(capture_rng(torch.device("cuda", 0))["cuda"], torch.full((4,), 7))
    streams = [torch.full((4,), i) for i in range(3)]
    state = {**capture_rng(CPU), "cuda": streams}
    restore_rng(state, GPU)
    assert len(restored) == 1 and torch.equal(restored[0][0], streams[0])
    restore_rng(state, CPU)
    assert len(restored) == 1


def test_a_run_resumes_in_another_precision_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state of an fp32 run (no grad scale) resumed where auto means fp16 (a GPU before
    Ampere; fp16 autocast on the CPU here) starts a new scale; one of a GPU's fp16 run (a
    scale, a GPU stream) resumes on the CPU."""
    argv = [*TABLE, "--epochs", "2", "--save-every", "4", "--out", "run"]
    with monkeypatch.context() as patch:
        patch.setattr(run, "plot_curves", lambda *_: None)
        saved = run.save_training_state

        def save_then_stop(t: run.Training, tally: Any) -> None:
            saved(t, tally)
            if t.steps_done == 4:
                raise MemoryError("simulated crash")

        patch.setattr(run, "save_training_state", save_then_stop)
        with pytest.raises(MemoryError):
            main(argv)
    state_file = tmp_path / "run" / STATE_FILE
    gpu_state = load_state(state_file)
    fp16 = Precision(CPU, torch.float16, channels_last=False)
    with monkeypatch.context() as patch:
        patch.setattr(run, "resolve_precision", lambda *_: fp16)
        assert main(["train", "--resume", "run", "--epochs", "1"]) == 0
    assert "trained as cpu fp32, this machine trains it as cpu fp16" in capsys.readouterr().err
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 3}  # fmt: skip
    gpu_state["rng"] = [{**rng, "cuda": torch.zeros(16, dtype=torch.uint8)}
                        for rng in gpu_state["rng"]]  # fmt: skip
    gpu_state.update(scaler=scaler, ran_as="cuda fp16, tf32 matmuls")
    del gpu_state["format"]
    save_state(state_file, gpu_state)
    assert main(["train", "--resume", "run", "--epochs", "1"]) == 0
    assert "trained as cuda fp16, tf32 matmuls, this machine" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), "cuda fp16, channels-last"), ((8, 0), "cuda bf16, channels-last, tf32 matmuls")],
)
def test_auto_on_a_gpu_takes_bf16_where_it_is_native_and_fp16_below(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    """A V100 (7.0) emulates bf16, which ``torch.cuda.is_bf16_supported()`` counts."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert str(resolve_precision("auto", GPU, "image")) == expected
    assert resolve_precision("auto", GPU, "tabular").name == "fp32"
    if capability < (8, 0):
        with pytest.raises(ResnetlabError, match="--precision bf16: this cuda device has no"):
            resolve_precision("bf16", GPU, "image")


def test_tf32_is_allowed_when_the_model_moves_to_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", asked.append)
    Precision(CPU, None, channels_last=False).prepare(nn.Linear(2, 2))
    Precision(CPU, None, channels_last=False, tf32=True).prepare(nn.Linear(2, 2))
    assert asked == ["high"]


def test_auto_on_a_cpu_takes_bf16_only_where_its_probe_measures_it_faster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Xeon with AVX-512 BF16 and no AMX: bf16 matmuls at 0.21 TFLOP/s against 0.41 for
    fp32, so fp32, measured once and cached; another CPU's bf16 at 1.3x its fp32 gets bf16."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    speeds = {torch.float32: 0.41, torch.bfloat16: 0.21}
    probed: list[torch.dtype] = []

    def timed(dtype: torch.dtype, device: torch.device, largest: int, seconds: float) -> float:
        assert device == CPU and largest <= 1024 and seconds <= 0.1  # a fraction of a second
        probed.append(dtype)
        return speeds[dtype]

    monkeypatch.setattr(matmul, "matmul_tflops", timed)
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "xeon"))
    assert resolve_precision("auto", CPU, "image").name == "fp32"
    assert resolve_precision("auto", CPU, "image").name == "fp32" and len(probed) == 4
    (cached,) = (tmp_path / "xeon").glob("cpu-matmul-*.json")
    assert json.loads(cached.read_text())["bf16"] == 0.21
    assert resolve_precision("auto", CPU, "video").name == "fp32" and len(probed) == 4
    speeds[torch.bfloat16] = 0.41 * 1.3
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "other"))
    assert resolve_precision("auto", CPU, "image").name == "bf16"


def test_the_matmul_ceiling_of_a_gpu_is_measured_at_8192(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU reaches its peak only with large products; a CPU stops at 2048."""
    sizes: list[int] = []
    monkeypatch.setattr(matmul, "_time_matmul", lambda a, b: sizes.append(len(a)) or 1e-4)
    with FakeTensorMode():
        matmul.matmul_tflops(torch.float16, GPU)
        assert max(sizes) == 8192
        sizes.clear()
        matmul.matmul_tflops(torch.float16, CPU)
        assert max(sizes) == 2048


def test_the_bench_user_loops_run_on_their_batch_s_device_with_its_autocast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a device other than the CPU ('meta' here, where no kernel runs): the batch is
    normalised there, under that device's autocast, not the CPU's."""
    loops = load_user_loops(None)
    assert loops is not None
    autocasts: list[str] = []

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> contextlib.nullcontext[None]:
        autocasts.append(device_type)
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", autocast)
    model = create_model("resnet20").to("meta")
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    y = torch.zeros(2, dtype=torch.int64, device="meta")
    loops.seed_style_step(model, x, y, MEAN, STD)  # normalises its batch once, here
    loops.user_train_step(model, x, y, MEAN, STD)()
    loops.user_infer_step(model, x, MEAN, STD)()
    assert autocasts == ["meta", "meta"]


def test_in_memory_loaders_share_the_training_set_and_pin_batches_for_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A probe, the training loader and each --ema epoch's loader copy no part of the set;
    for a run on a GPU, batches are gathered into pinned memory."""
    x, y = torch.arange(40, dtype=torch.uint8).view(20, 2), torch.arange(20)
    rows = [5, 0, 3, 7, 9, 11, 2, 4]
    train = Subset(Subset(TensorDataset(x, y), range(2, 20)), rows)
    order = BatchOrder(len(train), 4, shuffle=True, seed=1)
    loaders = [make_loader(train, order) for _ in range(3)]
    assert all(loader.x.data_ptr() == x.data_ptr() for loader in loaders)
    batches = list(loaders[0])
    for xb, yb, idx in batches:
        assert torch.equal(yb, torch.tensor([2 + rows[i] for i in idx])) and len(xb) == 4
    assert not make_loader(train, order, device=CPU).pin
    pinned_loader = make_loader(train, order, device=GPU)
    assert pinned_loader.pin
    pinned: list[bool] = []
    empty = torch.empty

    def fake_empty(*shape: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        pinned.append(pin_memory)
        return empty(*shape, **kwargs)

    monkeypatch.setattr(torch, "empty", fake_empty)
    for (xb, yb, _), (xp, yp, _) in zip(batches, pinned_loader, strict=True):
        assert torch.equal(xp, xb) and torch.equal(yp, yb)
    assert pinned == [True] * 2 * len(batches)
    streamed = make_loader(Subset(list(zip(x, y, strict=True)), rows), order, device=GPU)
    assert streamed.pin_memory


def test_data_goes_to_a_gpu_where_it_takes_at_most_a_quarter_of_the_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[torch.device] = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return 4000, 80_000  # bytes free, in all

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert fits_on_device(1000, GPU) and not fits_on_device(1001, GPU)
    assert not fits_on_device(1, CPU) and not fits_on_device(1, torch.device("meta"))
    assert asked == [GPU, GPU]


def _bundle(train: Any, val: Any, test: Any) -> DataBundle:
    return DataBundle("toy", "image", ["a", "b"], (1, 2, 2), train, val, test, [0.5], [0.25])


def test_in_memory_splits_move_to_the_device_once_and_keep_their_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The splits share their tensors: each moves once, counted once; a bundle that does not
    fit, or that streams its training split, stays as it is."""
    x, y = torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10)
    images = TensorDataset(x, y)
    bundle = _bundle(Subset(images, [4, 1, 7]), Subset(images, [0, 2]), Subset(images, [9]))
    sizes: list[int] = []

    def fits(nbytes: int, device: torch.device) -> bool:
        sizes.append(nbytes)
        return nbytes < 1000

    monkeypatch.setattr(batches_module, "fits_on_device", fits)
    meta = torch.device("meta")
    moved = keep_on_device(bundle, meta)
    assert sizes == [x.nbytes + y.nbytes] and moved.pipeline == "in-memory tensors, kept on meta"
    splits = (moved.train, moved.val, moved.test)
    assert [split.indices for split in splits] == [[4, 1, 7], [0, 2], [9]]
    shared = moved.train.dataset.tensors
    assert [t.device for t in shared] == [meta, meta] and shared[0].shape == x.shape
    assert all(split.dataset.tensors[0] is shared[0] for split in splits)
    big = TensorDataset(torch.zeros(1000, dtype=torch.uint8), torch.arange(1000))
    assert keep_on_device(_bundle(big, None, None), meta).train is big
    streamed = _bundle([(x[0], y[0])] * 4, Subset(images, [0]), None)
    assert keep_on_device(streamed, meta) is streamed and len(sizes) == 2


def test_batches_of_data_on_a_device_are_gathered_and_augmented_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a device ('meta' here, which holds no values and copies none to the host): the
    order, rows, batches and augmentation's random numbers all stay on it."""
    monkeypatch.setattr(batches_module, "fits_on_device", lambda nbytes, device: True)
    x, y = torch.zeros(12, 3, 8, 8, dtype=torch.uint8), torch.arange(12)
    images = TensorDataset(x, y)
    bundle = keep_on_device(_bundle(Subset(images, range(2, 12)), None, None), torch.device("meta"))
    order = BatchOrder(len(bundle.train), 4, shuffle=True, seed=3, drop_last=True)
    order.set_epoch(2)
    loader = make_loader(bundle.train, order, device=GPU)
    assert not loader.pin and loader.rows is not None and loader.rows.is_meta
    augment = BatchAugment(MEAN, STD, crop_padding=2, flip=True, cutout=3, seed=3)
    batches = list(loader)
    assert len(batches) == 2
    for xb, yb, idx in batches:
        assert xb.is_meta and yb.is_meta and idx.is_meta
        assert (xb.shape, yb.shape, idx.shape) == ((4, 3, 8, 8), (4,), (4,))
        draws = augment.draw(idx, 2, xb.shape)
        assert all(draw.is_meta for draw in draws if draw is not None)
        out = augment.apply(xb, draws)
        assert out.is_meta and out.shape == xb.shape and out.dtype == torch.float32
