"""Count what a spiking model computes on real input: FLOPs, firing rates, SOPs, MACs and ACs per layer.

The counter watches a model from outside, without any change to model code:

* a :class:`torch.overrides.TorchFunctionMode` sees every ``linear``, ``conv1d/2d``, ``matmul`` / ``@`` / ``bmm``,
  tensor-by-tensor ``mul`` and (inside attention modules) ``sum`` call, with the operand values;
* forward pre/post hooks on every submodule keep the path of the module that is running, so each operation is
  named by module path (``blocks.0.attn.q.linear``; a wrapper applying its child layer's weight functionally is
  named after that child; other products called directly in a module's ``forward`` get the op name and call
  index: ``blocks.0.attn.matmul1``, FB-LiDiff's feedback ``F W_v``: ``stage3.0.attn.linear1``);
* while it is active, ``kernel_config(observable=True)`` is in force (:mod:`spikformers.kernels.config`): every
  unit runs its plain path, so each product is one ``F.linear`` / ``F.conv2d`` / ``matmul`` call the mode sees
  with its real operands (no event-driven or fused kernel hides one, no image is convolved once for all T steps).
  That switch is how the kernels let themselves be watched; they do not know the counter.

Conventions (the papers' own; docs/energy.md):

* ``flops`` of a layer = multiply-accumulates of ONE single-step forward of ONE image (a 3x3 conv from C to C'
  on an h x w output: ``h w C C' 9``); bias, batch norm (folded into the weights at inference), neurons,
  pooling, residual additions and scalar scalings (``* 0.125``) are not counted. ``steps`` = how many time
  steps the layer runs per image: T for everything on ``[T, B, ...]`` or ``[T*B, ...]``, 1 for the head
  (it sees the mean over time).
* each operand is classified at run time as ``binary`` {0,1}, ``ternary`` {-1,0,1}, ``integer`` (spike
  counts, e.g. the sum of residual spike streams) or ``real``. A product with at least one spike operand
  (binary, ternary or integer) is addition-only: it costs one AC per pair of nonzero operands, so
  ``sops = acs = firing_rate * steps * flops`` (``firing_rate`` = fraction of its input that is nonzero; for a
  product of two activations the exact fraction of nonzero pairs). A spike count k > 1 costs one AC, as in the
  papers' firing-rate formula. A conv's ACs use ``rate * dense`` (the papers' formula; borders ignored).
* a product of two real operands is a MAC, counted dense: ``macs = steps * flops``, except that a real input
  which is identical at every time step (a static image under direct encoding, the first conv) is computed
  once: ``macs = flops``, the papers' ``E_MAC * FLOPs(first conv)``.
* elementwise ``a * b`` of two tensors (spike masks: SDSA, FF-LiDiff, PSA's random masks): one op per output
  element, ACs = outputs whose two operands are nonzero. ``sum`` inside attention (SDSA's token sum,
  FF-LiDiff's row sums): one AC per nonzero input element.
* operations inside neurons are membrane dynamics, not synaptic operations, and are never counted.

Everything is reported per image (totals divided by the number of images seen).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..kernels.config import kernel_config

__all__ = ["LayerCount", "OpCounter", "count_ops", "operand_kind", "spike_like", "all_ones_firing"]

_LINEAR = {"linear"}
_CONV = {"conv1d", "conv2d"}
_MATMUL = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm"}
_MUL = {"mul", "__mul__", "__rmul__"}
_SUM = {"sum"}


def operand_kind(x: torch.Tensor) -> str:
    """``"binary"``, ``"ternary"``, ``"integer"`` or ``"real"``: the value set a tensor really holds.

    Tensors on the meta device have no values: ``"unknown"`` (counted as spikes at rate 1; only FLOPs mean
    anything there).
    """
    if x.device.type == "meta":
        return "unknown"
    if x.dtype == torch.bool:
        return "binary"
    if not x.is_floating_point():
        return "integer"
    if x.numel() == 0:
        return "binary"
    lo, hi = x.min().item(), x.max().item()
    if not torch.equal(x, x.round()):
        return "real"
    if lo >= 0 and hi <= 1:
        return "binary"
    if lo >= -1 and hi <= 1:
        return "ternary"
    return "integer"


def _nnz(x: torch.Tensor) -> float:
    """Nonzero entries of ``x`` (all of them on the meta device)."""
    return float(x.numel()) if x.device.type == "meta" else float(torch.count_nonzero(x).item())


def spike_like(kind: str) -> bool:
    """Whether an operand of this kind makes a product addition-only (binary, ternary, integer spike counts)."""
    return kind != "real"


@dataclass
class LayerCount:
    """Per-image operation counts of one named layer or product, accumulated over calls and batches.

    ``dense`` and ``acs``/``macs`` are totals over all calls (all time steps and passes) before the division
    by the number of images; use the properties, which are per image.
    """

    name: str
    op: str
    steps: int = 0
    dense: float = 0.0  # multiply-accumulates of all calls, every operand counted
    ac_ops: float = 0.0  # accumulates (nonzero spike operand pairs) of the addition-only calls
    ac_dense: float = 0.0  # dense ops of those calls
    mac_ops: float = 0.0  # multiply-accumulates of the real x real calls (time-invariant input counted once)
    nonzero: float = 0.0  # nonzero entries of the input (first operand) of all calls
    numel: float = 0.0  # entries of the input of all calls
    operands: list[str] = field(default_factory=list)
    images: int = 0
    calls_per_forward: int = 0

    def _per(self, v: float) -> float:
        return v / max(self.images, 1)

    @property
    def flops(self) -> float:
        """Multiply-accumulates of one single-step forward of one image (all passes of a multi-pass model)."""
        return self._per(self.dense) / max(self.steps, 1)

    @property
    def acs(self) -> float:
        """Accumulate operations per image (= SOPs)."""
        return self._per(self.ac_ops)

    @property
    def sops(self) -> float:
        """Synaptic operations per image: ``firing_rate * steps * flops`` of the addition-only calls."""
        return self.acs

    @property
    def macs(self) -> float:
        """Multiply-accumulate operations per image (real x real products)."""
        return self._per(self.mac_ops)

    @property
    def firing_rate(self) -> float:
        """Fraction of nonzero operands the addition-only calls saw (``sops / (steps * flops)``); for MAC-only
        layers the fraction of nonzero input entries."""
        if self.ac_dense > 0:
            return self.ac_ops / self.ac_dense
        return self.nonzero / self.numel if self.numel else 0.0

    @property
    def operand_types(self) -> str:
        """The operand kinds seen, e.g. ``"binary x real(w)"`` (several joined by ``|`` if they changed)."""
        return "|".join(dict.fromkeys(self.operands))

    def energy_pj(self, e_mac: float = 4.6, e_ac: float = 0.9) -> float:
        """``E_MAC * macs + E_AC * acs`` in pJ per image."""
        return e_mac * self.macs + e_ac * self.acs


def _steps(shape: torch.Size, T: int, B: int) -> int:
    """Time steps that a call with this leading shape covers: T for ``[T*B, ...]`` or ``[T, B, ...]``, else 1."""
    if len(shape) >= 1 and shape[0] == T * B:
        return T
    if len(shape) >= 2 and shape[0] == T and shape[1] == B:
        return T
    return 1


def _time_invariant(x: torch.Tensor, T: int, B: int) -> bool:
    """Whether an input on ``[T*B, ...]`` or ``[T, B, ...]`` holds the same values at every time step."""
    if T <= 1:
        return True
    if x.device.type == "meta":
        return False
    if x.shape[0] == T * B:
        x = x.unflatten(0, (T, B))
    elif not (x.dim() >= 2 and x.shape[0] == T and x.shape[1] == B):
        return False
    return bool((x == x[:1]).all())


class OpCounter(TorchFunctionMode):
    """Records the operations of a model's forward passes into :class:`LayerCount` entries (see module doc).

    Use :func:`count_ops` unless you need to drive the forward passes yourself::

        counter = OpCounter(model)
        with counter.watch(T=4, batch=x.shape[0]):
            model(x)
        counter.layers  # name -> LayerCount
    """

    def __init__(self, model: nn.Module, attention_types: Iterable[type] | None = None) -> None:
        super().__init__()
        from ..neurons import Neuron

        if attention_types is None:
            from ..attention import ATTENTIONS

            attention_types = tuple(ATTENTIONS.values())
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        # functional calls (F.linear(x, self.linear.weight)) are named after the module owning the weight
        self.weight_owner = {
            id(m.weight): n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
        }
        self.neuron_types: tuple[type, ...] = (Neuron,)
        self.attention_types = tuple(attention_types)
        self.layers: dict[str, LayerCount] = {}
        self.images = 0
        self._stack: list[nn.Module] = []
        self._calls: list[dict[str, int]] = []
        self._T, self._B = 1, 1
        self._handles: list[Any] = []
        self._observing: list[Any] = []  # the kernel_config(observable=True) blocks entered, innermost last

    def __enter__(self) -> OpCounter:
        observing = kernel_config(observable=True)
        observing.__enter__()
        self._observing.append(observing)
        try:
            return super().__enter__()
        except BaseException:
            self._observing.pop().__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._observing.pop().__exit__(None, None, None)

    # ----- module stack -------------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: Any) -> None:
        self._stack.append(module)
        self._calls.append({})

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()
            self._calls.pop()

    def _attach(self) -> None:
        for m in self.model.modules():
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post, always_call=True))

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()
        self._calls.clear()

    def watch(self, T: int, batch: int) -> _Watch:
        """Context manager: count the forward passes run inside it as ``batch`` images at ``T`` time steps."""
        return _Watch(self, T, batch)

    # ----- operation recording -----------------------------------------------------------------------------
    def _where(self) -> tuple[nn.Module | None, bool, bool]:
        """(innermost module, inside a neuron, inside an attention module)."""
        in_neuron = any(isinstance(m, self.neuron_types) for m in self._stack)
        in_attn = any(isinstance(m, self.attention_types) for m in self._stack)
        return (self._stack[-1] if self._stack else None), in_neuron, in_attn

    def _entry(self, module: nn.Module | None, op: str, weight: torch.Tensor | None = None) -> LayerCount:
        path = self.names.get(module, "") if module is not None else ""
        owner = self.weight_owner.get(id(weight)) if weight is not None else None
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and op in ("linear", "conv"):
            name = path or op
        elif owner is not None and owner.rpartition(".")[0] == path:
            name = owner  # a wrapper (LinearBN, ConvBN) applying its own child layer's weight functionally
        else:
            calls = self._calls[-1] if self._calls else {}
            calls[op] = calls.get(op, 0) + 1
            name = f"{path}.{op}{calls[op]}" if path else f"{op}{calls[op]}"
        if name not in self.layers:
            self.layers[name] = LayerCount(name, op)
        return self.layers[name]

    def _record(
        self, entry: LayerCount, x: torch.Tensor, kinds: tuple[str, str], dense: float, pairs: float, steps: int,
        time_invariant: bool = False,
    ) -> None:
        entry.steps = max(entry.steps, steps)
        entry.dense += dense
        entry.operands.append(" x ".join(kinds))
        entry.nonzero += _nnz(x)
        entry.numel += float(x.numel())
        if spike_like(kinds[0].removesuffix("(w)")) or spike_like(kinds[1].removesuffix("(w)")):
            entry.ac_ops += pairs
            entry.ac_dense += dense
        else:
            entry.mac_ops += dense / steps if time_invariant else dense

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name not in _LINEAR | _CONV | _MATMUL | _MUL | _SUM:
            return out
        module, in_neuron, in_attn = self._where()
        if in_neuron:
            return out
        try:
            if name in _LINEAR:
                self._linear(module, args, kwargs)
            elif name in _CONV:
                self._conv(module, args, kwargs, out)
            elif name in _MATMUL:
                self._matmul(module, args, out, name)
            elif name in _MUL:
                self._mul(module, args, out)
            elif name in _SUM and in_attn:
                self._sum(module, args)
        except _Skip:
            pass
        return out

    def _linear(self, module: nn.Module | None, args: tuple, kwargs: dict) -> None:
        x = args[0]
        w = args[1] if len(args) > 1 else kwargs["weight"]
        out_f, in_f = w.shape
        rows = x.numel() // in_f
        dense = float(rows * in_f * out_f)
        nz = _nnz(x)
        steps = _steps(x.shape, self._T, self._B)
        kind = operand_kind(x)
        inv = kind == "real" and steps > 1 and _time_invariant(x, self._T, self._B)
        self._record(self._entry(module, "linear", w), x, (kind, "real(w)"), dense, nz * out_f, steps, inv)

    def _conv(self, module: nn.Module | None, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        per_output = w[0].numel()  # C_in / groups * kernel elements
        dense = float(out.numel() * per_output)
        rate = _nnz(x) / max(x.numel(), 1)
        steps = _steps(x.shape, self._T, self._B)
        kind = operand_kind(x)
        inv = kind == "real" and steps > 1 and _time_invariant(x, self._T, self._B)
        self._record(self._entry(module, "conv", w), x, (kind, "real(w)"), dense, rate * dense, steps, inv)

    def _matmul(self, module: nn.Module | None, args: tuple, out: torch.Tensor, name: str) -> None:
        a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2:
            raise _Skip
        inner = a.shape[-1]
        dense = float(out.numel() * inner)
        if a.device.type == "meta":
            pairs = dense
        else:
            col_a = (a != 0).sum(-2, dtype=torch.float64)  # [..., K]: nonzeros per inner index
            row_b = (b != 0).sum(-1, dtype=torch.float64)  # [..., K]
            pairs = float((col_a * row_b).sum().item())
        steps = _steps(out.shape, self._T, self._B)
        self._record(self._entry(module, "matmul"), a, (operand_kind(a), operand_kind(b)), dense, pairs, steps)

    def _mul(self, module: nn.Module | None, args: tuple, out: torch.Tensor) -> None:
        a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.numel() <= 1 or b.numel() <= 1:
            raise _Skip  # scalar scalings are not synaptic operations
        if not isinstance(out, torch.Tensor):
            raise _Skip
        pairs = float(out.numel()) if out.device.type == "meta" else float(((a != 0) & (b != 0)).sum().item())
        steps = _steps(out.shape, self._T, self._B)
        kinds = (operand_kind(a), operand_kind(b))
        self._record(self._entry(module, "mul"), a, kinds, float(out.numel()), pairs, steps)

    def _sum(self, module: nn.Module | None, args: tuple) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.numel() <= 1:
            raise _Skip
        steps = _steps(x.shape, self._T, self._B)
        nz = _nnz(x)
        kind = operand_kind(x)
        # a sum is additions only, whatever the operand: count it as ACs of its nonzero inputs
        self._record(self._entry(module, "sum"), x, (kind, "add"), float(x.numel()), nz, steps)


class _Skip(Exception):
    """An intercepted call that is not an operation we count (scalar scaling, vector products)."""


class _Watch:
    """Context that attaches the hooks and the function mode for the forward passes run inside it."""

    def __init__(self, counter: OpCounter, T: int, batch: int) -> None:
        self.counter, self.T, self.batch = counter, T, batch

    def __enter__(self) -> OpCounter:
        c = self.counter
        c._T, c._B = self.T, self.batch
        c._attach()
        c.__enter__()
        return c

    def __exit__(self, *exc: Any) -> None:
        c = self.counter
        c.__exit__(*exc)
        c._detach()
        c.images += self.batch
        for entry in c.layers.values():
            entry.images = c.images


def all_ones_firing(model: nn.Module) -> list[Any]:
    """Make every neuron of ``model`` fire at every step (outputs all ones); returns the hook handles to remove.

    Used to check that the energy reaches the formula's upper bound.
    """
    from ..neurons import Neuron

    def ones(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(out)

    return [m.register_forward_hook(ones) for m in model.modules() if isinstance(m, Neuron)]


@torch.no_grad()
def count_ops(
    model: nn.Module, batches: Iterable[torch.Tensor] | torch.Tensor, T: int | None = None, batch: int | None = None
) -> tuple[dict[str, LayerCount], int]:
    """Run ``model`` (in eval mode) on each input batch and count; returns ``(layers by name, images seen)``.

    Inputs are ``[B, C, H, W]`` images (repeated over the model's T) or ``[T, B, C, H, W]`` event frames;
    ``T`` and ``batch`` override what is read from the model and the input's shape (for other input layouts).
    """
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    was_training = model.training
    model.eval()
    counter = OpCounter(model)
    try:
        for x in batches:
            steps = T or (x.shape[0] if x.dim() == 5 else int(getattr(model, "T", 1)))
            images = batch or (x.shape[1] if x.dim() == 5 else x.shape[0])
            with counter.watch(steps, images):
                model(x)
    finally:
        model.train(was_training)
    return counter.layers, counter.images
