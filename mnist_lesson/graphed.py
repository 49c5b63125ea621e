"""A training loop for the GPU that records a whole training step once, as a CUDA graph, and replays it every batch.

On a GPU the course's `fit` is limited by the host, not the device: a step of the final model is about 190 small
operations, each one a launch the host makes (benchmarks/dispatch_count.py), for a few microseconds of work each.
A CUDA graph records those launches once and replays them with one call. `fit_graphed` trains what `fit` trains
(same model, loss, SGD with momentum, schedule and running score), up to rounding, and returns the same History;
only the way the step reaches the device differs. Its eager form is checked against `fit` on a CPU; the recorded
form has been checked on a GPU only by the accuracy of its runs (`Speed(graph=True)`, `train --graph`;
docs/performance.md says what it measured). What a replay needs is fixed when the step is recorded:

- the batch lives in two tensors that are filled before each replay (`static_x`, `static_y`); a last batch of
  another size runs the same step without the graph;
- SGD's rate and momentum live in device tensors (`FunctionalSGD`), refilled from the schedule before each step,
  because a number written into a recorded launch would never change;
- gradients are returned by `torch.autograd.grad` instead of accumulating in `.grad`, so nothing must be zeroed.

Without CUDA (`capture=False`) the same step runs eagerly: that is how the tests check it against `fit` on a CPU.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lesson.config import UsageError
from mnist_lesson.train import Batch, History, RunningScore, Schedule, evaluate, with_progress

WARMUP_STEPS = 3  # eager steps before recording, on a side stream, as torch's CUDA-graph notes advise


class FunctionalSGD:
    """SGD with momentum (optionally Nesterov) and weight decay, as torch.optim.SGD computes it, whose rate and
    momentum are device tensors that a recorded step reads when it is replayed."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        check_optimizer(optimizer)
        group = optimizer.param_groups[0]
        self.group = group
        self.params: list[torch.Tensor] = list(group["params"])
        self.nesterov = bool(group["nesterov"])
        self.weight_decay = float(group["weight_decay"])
        self.lr = torch.tensor(float(group["lr"]), device=device)
        self.momentum = torch.tensor(float(group["momentum"]), device=device)
        # A zero buffer gives the first step momentum * 0 + gradient: torch's copy of the first gradient, exactly.
        self.buffers = [torch.zeros_like(p) for p in self.params]

    def load(self) -> None:
        """Copy the rate and momentum the schedule set for the next step into the device tensors."""
        self.lr.fill_(float(self.group["lr"]))
        self.momentum.fill_(float(self.group["momentum"]))

    @torch.no_grad()
    def update(self, grads: list[torch.Tensor | None]) -> None:
        """Move every parameter that has a gradient one SGD step against it (parameters without one are skipped)."""
        used = [i for i, g in enumerate(grads) if g is not None]
        params = [self.params[i] for i in used]
        buffers = [self.buffers[i] for i in used]
        grads = [grads[i] for i in used]
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        torch._foreach_mul_(buffers, self.momentum)  # buffer = momentum * buffer + gradient
        torch._foreach_add_(buffers, grads)
        if self.nesterov:  # step along gradient + momentum * buffer
            steps = torch._foreach_mul(buffers, self.momentum)
            torch._foreach_add_(steps, grads)
        else:
            steps = buffers
        torch._foreach_sub_(params, torch._foreach_mul(steps, self.lr))


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise UsageError unless `optimizer` is what `FunctionalSGD` reproduces: torch's SGD, one group, no dampening."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        raise UsageError(f"the CUDA-graph loop reproduces torch.optim.SGD with one parameter group, got "
                         f"{type(optimizer).__name__} with {len(optimizer.param_groups)} group(s); train without "
                         "graph=True (--graph)")
    group = optimizer.param_groups[0]
    if group["dampening"] or group["maximize"]:
        raise UsageError("the CUDA-graph loop does not reproduce SGD's dampening or maximize; train without "
                         "graph=True (--graph)")


class GraphedStep:
    """One training step (forward, loss, gradients, SGD update, running score) recorded as a CUDA graph on its first
    full-sized batches and replayed after; with `capture=False`, or for a batch of another size, run eagerly."""

    def __init__(self, model: nn.Module, sgd: FunctionalSGD, score: RunningScore, capture: bool) -> None:
        self.model, self.sgd, self.score, self.capture = model, sgd, score, capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.static_y: torch.Tensor | None = None
        self.warm = 0

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        output = self.model(x)
        loss = F.nll_loss(output, y)
        grads = torch.autograd.grad(loss, self.sgd.params, allow_unused=True)
        self.sgd.update(list(grads))
        with torch.no_grad():  # the score's sums are tensors: a replay adds to them too
            self.score.loss_sum += loss.detach().float() * len(y)
            self.score.correct += (output.argmax(dim=1) == y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Train on one batch."""
        self.sgd.load()
        if not self.capture or (self.static_x is not None and x.shape != self.static_x.shape):
            self._step(x, y)
        elif self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
        else:
            self._record(x, y)
        self.score.count += len(y)

    def _record(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.static_x is None:
            self.static_x, self.static_y = x.clone(), y.clone()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.warm < WARMUP_STEPS:  # a real training step, on a side stream, before anything is recorded
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(self.static_x, self.static_y)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the launches without running them
            self._step(self.static_x, self.static_y)
        self.graph = graph
        graph.replay()  # this batch's step


def fit_graphed(model: nn.Module, train_batches: Iterable[Batch], eval_sets: Mapping[str, Iterable[Batch]],
                optimizer: torch.optim.Optimizer, schedule: Schedule, *, epochs: int, device: torch.device,
                progress: bool = True, history: History | None = None, capture: bool | None = None) -> History:
    """Train like `fit`, but replay each full-sized training step from a CUDA graph; return the History.

    `capture` (default: whether `device` is a CUDA device) records the graph; without it the same step runs
    eagerly. The optimizer must be torch's SGD with one group (its rate and momentum are followed every step);
    its own state is not used.
    """
    capture = device.type == "cuda" if capture is None else capture
    if capture and device.type != "cuda":
        raise UsageError(f"CUDA graphs need a CUDA device, got {device}; train without graph=True (--graph)")
    history = History() if history is None else history
    score = RunningScore(device)
    step = GraphedStep(model, FunctionalSGD(optimizer, device), score, capture)
    # torch warns when a scheduler steps an optimizer whose own step() never ran: here that is by design.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            score.loss_sum.zero_()  # the recorded step adds to these very tensors
            score.correct.zero_()
            score.count = 0
            for x, y in with_progress(train_batches, f"epoch {epoch}/{epochs}", score, progress):
                step(x.to(device), y.to(device))
                schedule.step()
            results = {name: evaluate(model, batches, device) for name, batches in eval_sets.items()}
            history.add_epoch(epoch, score, results, schedule.last_lr, time.perf_counter() - start)
            if progress:
                print(history.describe_epoch(-1, epochs), flush=True)
    return history
