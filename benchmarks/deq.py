r"""Training a deep equilibrium classifier: implax against torchdeq and against unrolling.

The model is the digits DEQ of ``examples/deq_digits.py`` without its Jacobian penalty: class scores
:math:`V z^\star + c` with :math:`z^\star = \tanh(\tilde W z^\star + U x + b)`, :math:`\tilde W = W / \max(1,
\hat\sigma_1(W) / 0.9)` (:math:`\hat\sigma_1` by 20 power iterations, computed once per forward pass), hidden size
64, on scikit-learn's digits
(the stratified 75% training split: 21 mini-batches of 64 per epoch), trained by Adam (learning rate 3e-3) on the
cross-entropy, in float32, from the same initial weights in every library.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import implax
import implax.nn
from benchmarks.harness import Measurement, Row, measure

TITLE = "Deep equilibrium model: one training epoch on digits, implax vs torchdeq vs unrolling"
BASELINES = ("implax DEQ",)
HIDDEN = 64
BATCH = 64
LR = 3e-3
RTOL = 1e-4
MAX_STEPS = 40
LIPSCHITZ = 0.9
POWER_ITERATIONS = 20
FORCED_STEPS = (10, 20, 40)
QUICK_FORCED_STEPS = (10, 40)
DESCRIPTION = f"""
One training epoch (21 Adam steps on mini-batches of {BATCH} digits, forward and backward) of the DEQ classifier
z\\* = tanh(W̃ z\\* + U x + b), scores V z\\* + c, hidden size {HIDDEN}, float32, the same initial weights and batches
for every method. W̃ = W / max(1, σ̂/{LIPSCHITZ}) keeps the block contractive (without it W grows past norm 1 within
a few epochs and training becomes unstable); σ̂ is σ₁(W) by {POWER_ITERATIONS} power iterations with the singular
vectors held constant in the derivative, computed once per forward pass in both libraries
(`implax.nn.spectral_norm` in JAX, the same iteration written in PyTorch).

- **implax DEQ**: `implax.nn.DEQ` with Anderson (history 5, relative tolerance {RTOL}, at most {MAX_STEPS}
  iterations) under `jax.vmap`, the implicit gradient by GMRES to relative residual {RTOL} with the JFB fallback
  (`implax.nn.default_backward()`); the whole epoch is one compiled `lax.scan` over the mini-batches.
- **unrolled JAX ×{MAX_STEPS}**: the same solver differentiated by autodiff through its {MAX_STEPS} masked steps
  (`implax.Unrolled()`).
- **torchdeq**: `torchdeq.get_deq(core="indexing", ift=True)` with Anderson forward (history 5, `f_tol={RTOL}`,
  relative stopping rule, at most {MAX_STEPS} iterations) and the implicit gradient by its Anderson backward solve
  (`b_tol={RTOL}`, relative, at most {MAX_STEPS}), PyTorch on the CPU; the epoch is a Python loop of eager steps.
  Its run time is the median over epochs each started from the initial weights, after one warm-up epoch; it has
  no compile step. It runs with PyTorch's default number of threads and again with one thread ("torchdeq, 1 thread"):
  on a small, shared machine its intra-op threads can wait on each other for most of the epoch. Its memory column
  is empty: PyTorch keeps no peak statistics for CPU memory; the note gives the
  bytes autograd saved for the backward pass of one step (`torch.autograd.graph.saved_tensors_hooks`).

The second case forces K forward iterations (tolerance 0) in one training step, to show how memory depends on the
number of solver iterations: unrolling stores every iterate, the implicit gradient none. **test acc.** (note) is
the test accuracy after the stated number of epochs of training from the same start.
"""


class Cell(eqx.Module):
    weight: jax.Array

    def __call__(self, z, u):
        return jnp.tanh(self.weight @ z + u)


class Model(eqx.Module):
    encoder: eqx.nn.Linear
    deq: implax.nn.DEQ
    head: eqx.nn.Linear

    def __call__(self, x):
        weight = implax.nn.contractive(self.deq.block.weight, LIPSCHITZ, POWER_ITERATIONS)
        deq = eqx.tree_at(lambda d: d.block.weight, self.deq, weight)
        z, stats = deq(self.encoder(x))
        return self.head(z), stats.num_steps


def initial_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform(±1/√fan_in) weights, as both libraries' linear layers draw them; W scaled to spectral norm 0.5."""
    rng = np.random.default_rng(seed)

    def uniform(shape, fan_in):
        bound = 1 / math.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    w = uniform((HIDDEN, HIDDEN), HIDDEN)
    return dict(
        U=uniform((HIDDEN, 64), 64),
        b=uniform((HIDDEN,), 64),
        W=(0.5 * w / np.linalg.norm(w, 2)).astype(np.float32),
        V=uniform((10, HIDDEN), HIDDEN),
        c=uniform((10,), HIDDEN),
    )


def jax_model(weights, solver, diff) -> Model:
    encoder = eqx.nn.Linear(64, HIDDEN, key=jax.random.key(0), dtype=jnp.float32)
    head = eqx.nn.Linear(HIDDEN, 10, key=jax.random.key(0), dtype=jnp.float32)
    encoder = eqx.tree_at(lambda m: (m.weight, m.bias), encoder, (jnp.asarray(weights["U"]), jnp.asarray(weights["b"])))
    head = eqx.tree_at(lambda m: (m.weight, m.bias), head, (jnp.asarray(weights["V"]), jnp.asarray(weights["c"])))
    deq = implax.nn.DEQ(Cell(jnp.asarray(weights["W"])), (HIDDEN,), solver=solver, diff=diff)
    return Model(encoder, deq, head)


def load_batches(seed: int = 0):
    """The training split as (steps, batch, 64) images and (steps, batch) labels, and the test split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )
    steps = len(x_train) // BATCH
    order = np.random.default_rng(seed).permutation(len(x_train))[: steps * BATCH]
    xb = x_train[order].reshape(steps, BATCH, 64)
    yb = y_train[order].reshape(steps, BATCH).astype(np.int32)
    return xb, yb, x_test, y_test.astype(np.int32)


OPTIMIZER = optax.adam(LR)


def train_step(params, static, opt_state, x, y):
    """One Adam step on the mini-batch ``(x, y)``; returns the parameters, the optimizer state, the loss and the
    mean number of forward iterations."""

    def loss(params):
        logits, steps = jax.vmap(eqx.combine(params, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), steps

    (value, steps), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value, jnp.mean(steps)


def jax_epoch(model, opt_state, xb, yb):
    """One epoch of :func:`train_step` over the mini-batches ``xb``, ``yb`` (a ``lax.scan``); returns the model,
    the optimizer state, and the loss and mean iterations of each step."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def step(carry, batch):
        params, opt_state, value, steps = train_step(carry[0], static, carry[1], *batch)
        return (params, opt_state), (value, steps)

    (params, opt_state), (losses, steps) = jax.lax.scan(step, (params, opt_state), (xb, yb))
    return eqx.combine(params, static), opt_state, losses, steps


def flat_epoch(model, one_step: bool = False):
    """:func:`jax_epoch` (or, with ``one_step``, :func:`train_step` on the first mini-batch) as a function of the
    leaves of the model's arrays and of its optimizer state.

    Models that differ only in their solver or policy (static fields) then take the same arguments.
    """
    arrays, static = eqx.partition(model, eqx.is_array)
    opt_state = OPTIMIZER.init(eqx.filter(model, eqx.is_inexact_array))
    (array_leaves, array_def), (state_leaves, state_def) = jax.tree.flatten(arrays), jax.tree.flatten(opt_state)

    def epoch(array_leaves, state_leaves, xb, yb):
        model = eqx.combine(jax.tree.unflatten(array_def, array_leaves), static)
        opt_state = jax.tree.unflatten(state_def, state_leaves)
        if one_step:
            params, inexact_static = eqx.partition(model, eqx.is_inexact_array)
            return train_step(params, inexact_static, opt_state, xb[0], yb[0])
        return jax_epoch(model, opt_state, xb, yb)

    return epoch, (array_leaves, state_leaves)


def jax_accuracy(model, x_test, y_test) -> float:
    logits, _ = eqx.filter_jit(jax.vmap(model))(jnp.asarray(x_test))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y_test))


def jax_rows(weights, data, epochs: int) -> Iterator[Row]:
    xb, yb, x_test, y_test = data
    case = f"epoch: {len(xb)} steps of {BATCH}, H={HIDDEN}, float32"
    forward = implax.Anderson(history=5, rtol=RTOL, max_steps=MAX_STEPS)
    methods = {
        "implax DEQ": jax_model(weights, forward, implax.nn.default_backward()),
        f"unrolled JAX ×{MAX_STEPS}": jax_model(weights, forward, implax.Unrolled()),
    }
    fns, args = {}, None
    for name, model in methods.items():
        fns[name], args = flat_epoch(model)
    results = measure(fns, *args, jnp.asarray(xb), jnp.asarray(yb))
    for name, model in methods.items():
        m = results[name]
        epoch = eqx.filter_jit(jax_epoch)
        state = OPTIMIZER.init(eqx.filter(model, eqx.is_inexact_array))
        for _ in range(epochs):
            model, state, _, _ = epoch(model, state, jnp.asarray(xb), jnp.asarray(yb))
        accuracy = jax_accuracy(model, x_test, y_test)
        iterations = float(np.mean(np.asarray(m.output[3])))
        note = f"{iterations:.1f} forward iterations per sample; test acc. {100 * accuracy:.1f}% after {epochs} epochs"
        yield Row(case, name, m, note=note)


def torch_rows(weights, data, epochs: int, repeats: int, threads: int | None = None) -> Iterator[Row]:
    """The torchdeq row, with PyTorch's default number of threads or ``threads``."""
    import torch
    from torchdeq import get_deq

    torch.manual_seed(0)
    default_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    xb, yb, x_test, y_test = data
    case = f"epoch: {len(xb)} steps of {BATCH}, H={HIDDEN}, float32"

    class TorchModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(64, HIDDEN)
            self.cell = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
            self.head = torch.nn.Linear(HIDDEN, 10)
            self.deq = get_deq(
                core="indexing",
                ift=True,
                f_solver="anderson",
                b_solver="anderson",
                f_max_iter=MAX_STEPS,
                b_max_iter=MAX_STEPS,
                f_tol=RTOL,
                b_tol=RTOL,
                f_stop_mode="rel",
                b_stop_mode="rel",
            )
            with torch.no_grad():
                for layer, (w, b) in ((self.encoder, ("U", "b")), (self.head, ("V", "c"))):
                    layer.weight.copy_(torch.from_numpy(weights[w]))
                    layer.bias.copy_(torch.from_numpy(weights[b]))
                self.cell.weight.copy_(torch.from_numpy(weights["W"]))

        def forward(self, x):
            u = self.encoder(x)
            weight = contractive(self.cell.weight)
            z, info = self.deq(lambda z: torch.tanh(z @ weight.T + u), torch.zeros_like(u))
            return self.head(z[-1]), info["nstep"]

    xb_t, yb_t = torch.from_numpy(xb), torch.from_numpy(yb).long()
    power_start = torch.from_numpy(np.random.default_rng(0).normal(size=HIDDEN).astype(np.float32))

    def contractive(w):
        with torch.no_grad():
            v = power_start / power_start.norm()
            for _ in range(POWER_ITERATIONS):
                v = w.T @ (w @ v)
                v = v / v.norm()
            u = w @ v
            u = u / u.norm()
        return w / torch.clamp(u @ w @ v / LIPSCHITZ, min=1.0)

    def epoch(model, optimizer):
        steps = []
        for x, y in zip(xb_t, yb_t):
            optimizer.zero_grad()
            logits, nstep = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            steps.append(float(nstep.float().mean()))
        return steps

    initial = TorchModel()

    def fresh():
        model = copy.deepcopy(initial)
        return model, torch.optim.Adam(model.parameters(), lr=LR)

    epoch(*fresh())
    times = []
    for _ in range(repeats):
        model, optimizer = fresh()
        start = time.perf_counter()
        steps = epoch(model, optimizer)
        times.append(time.perf_counter() - start)
    model, optimizer = fresh()
    for _ in range(epochs):
        epoch(model, optimizer)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x_test))
    accuracy = float(np.mean(logits.argmax(-1).numpy() == y_test))

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t
    ):
        model, _ = fresh()
        logits, _ = model(xb_t[0])
        torch.nn.functional.cross_entropy(logits, yb_t[0]).backward()
    median = statistics.median(times)
    spread = (np.percentile(times, 75) - np.percentile(times, 25)) / median if len(times) > 1 else math.nan
    m = Measurement(math.nan, median, len(times), math.nan, math.nan, None, spread, min(times))
    note = (
        f"{np.mean(steps):.1f} forward iterations per sample (batch mean); test acc. {100 * accuracy:.1f}% after "
        f"{epochs} epochs; autograd saved {sum(saved) / 1e6:.2f} MB in one step; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    torch.set_num_threads(default_threads)
    yield Row(case, "torchdeq" if threads is None else f"torchdeq, {threads} thread", m, note=note)


def memory_rows(weights, data, forced) -> Iterator[Row]:
    """One training step with exactly K forward iterations (tolerance 0), implicit against unrolled."""
    xb, yb, _, _ = data
    case = f"one step, K forced forward iterations, batch {BATCH}"
    fns = {}
    for k in forced:
        solver = implax.Anderson(history=5, rtol=0.0, max_steps=k)
        for label, diff in (("implax DEQ", implax.nn.default_backward()), ("unrolled JAX", implax.Unrolled())):
            fns[f"{label} K={k}"], args = flat_epoch(jax_model(weights, solver, diff), one_step=True)
    results = measure(fns, *args, jnp.asarray(xb[:1]), jnp.asarray(yb[:1]), budget_s=2.0)
    for name, m in results.items():
        yield Row(case, name, m, note="temporaries: see temp (MB)")


def count(quick: bool) -> int:
    return 4 + 2 * len(QUICK_FORCED_STEPS if quick else FORCED_STEPS)


def rows(quick: bool) -> Iterator[Row]:
    weights, data = initial_weights(), load_batches()
    epochs = 2 if quick else 10
    yield from jax_rows(weights, data, epochs)
    yield from torch_rows(weights, data, epochs, repeats=2 if quick else 5)
    yield from torch_rows(weights, data, epochs, repeats=2 if quick else 5, threads=1)
    yield from memory_rows(weights, data, QUICK_FORCED_STEPS if quick else FORCED_STEPS)


def verdicts(table: list[Row]) -> list[str]:
    """The issue's targets: faster per epoch than torchdeq at equal accuracy, memory flat in the iterations."""
    by_method = {r.method: r for r in table}
    lines = []
    torch_methods = [name for name in by_method if name.startswith("torchdeq")]
    if "implax DEQ" in by_method and torch_methods:
        ours = by_method["implax DEQ"].measurement.run_s
        fastest = min(torch_methods, key=lambda name: by_method[name].measurement.run_s)
        theirs = by_method[fastest].measurement.run_s
        verdict = "met" if ours < theirs else "**not met**"
        lines.append(
            f"- implax DEQ epoch faster than torchdeq (its faster row, {fastest}): {1e3 * ours:.0f} ms vs "
            f"{1e3 * theirs:.0f} ms ({theirs / ours:.1f}×) — {verdict}; test accuracies are in the notes."
        )
    implicit = [r.measurement.temp_bytes for r in table if r.method.startswith("implax DEQ K=")]
    unrolled = [r.measurement.temp_bytes for r in table if r.method.startswith("unrolled JAX K=")]
    if implicit and unrolled:
        flat = len(set(implicit)) == 1
        ours, theirs = (", ".join(f"{b / 1e6:.2f}" for b in values) for values in (implicit, unrolled))
        lines.append(
            f"- memory flat in the number of forward iterations: implax temporaries {ours} MB, unrolled {theirs} MB "
            f"— {'met' if flat else '**not met**'}."
        )
    return lines
