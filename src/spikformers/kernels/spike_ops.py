"""Operations on spike tensors: compact saving for backward, and event-driven compute on the CPU.

Compact saved inputs: the linear, conv, max-pool and attention-product operations here keep their input for
backward as bits when it holds only 0/1 (spikes), as bytes when it holds small non-negative integers (sums of
spikes on the residual stream), and as the float tensor otherwise; the check is exact (the input is rebuilt
bit for bit), so outputs and gradients equal the plain torch ops'. The ``compact_spikes`` switch of
:mod:`.config` turns it off.

Event-driven linears, convs and max-pools: on the CPU, :func:`spike_linear` and (3x3, stride 1, padding 1)
:func:`spike_conv2d` compute sparse spike inputs by addition (see there), and :func:`spike_max_pool` routes its
gradient from the saved bits; the ``event_driven`` switch of :mod:`.config` turns the linears and convs back to
``F.linear`` / ``F.conv2d`` bit for bit.

How sparse an input must be for the event-driven forward and weight gradient, and which of two dense products
computes a linear's input gradient, is decided per shape class by a timed trial on this machine (:mod:`.calibration`);
with the ``calibrate`` switch off, the fixed thresholds below apply.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch.nn import functional as F
from torch.utils.weak import WeakIdKeyDictionary

from . import calibration
from . import cpp as _cpu_kernels
from .config import get_kernel_config

# Fixed thresholds, used with calibration off: the non-zero fraction (the firing rate of spikes) up to which the
# event-driven path runs
SPARSE_MAX_RATE = 0.3  # linear, forward
SPARSE_WGRAD_MAX_RATE = 0.3  # linear, weight gradient
SPARSE_CONV_MAX_RATE = 0.3  # 3x3 conv, forward and weight gradient
TRIAL_ROWS = 2048  # rows of a linear's calibration trial (fewer when the layer has fewer)
TRIAL_PIXELS = 4096  # output pixels of a conv's calibration trial, in whole images
_BIT_WEIGHTS: dict[torch.device, torch.Tensor] = {}
_pack_cache: WeakIdKeyDictionary = WeakIdKeyDictionary()


class Packed(NamedTuple):
    """Lossless compact copy of a tensor: ``data`` is bits (``"bits"``), bytes (``"u8"``) or the tensor (``"raw"``)."""

    data: torch.Tensor
    form: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nonzero: int = -1  # how many elements are not zero, where packing counted them (the C++ path)


def _weights(device: torch.device) -> torch.Tensor:
    w = _BIT_WEIGHTS.get(device)
    if w is None:
        w = _BIT_WEIGHTS[device] = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)
    return w


def _fast(dtype: torch.dtype, device: torch.device) -> bool:
    """True when the compiled CPU bit packing applies (float32/float64 on the CPU, library built)."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and _cpu_kernels.available()


def _pack_compiled(x: torch.Tensor) -> Packed | None:
    """``x`` as bits, else as bytes, each tried in one C++ pass that also counts the non-zeros; None if neither fits.

    Needs ``_fast`` and a contiguous ``x``. Caches nothing (works on inference-mode tensors too).
    """
    for form, pack in (("bits", _cpu_kernels.pack_bits), ("u8", _cpu_kernels.pack_u8)):
        found = pack(x)
        if found is not None:
            return Packed(found[0], form, tuple(x.shape), x.dtype, found[1])
    return None


def pack_exact(x: torch.Tensor) -> Packed:
    """Compact copy of ``x``: 1 bit per element if all values are 0/1, 1 byte if integers in [0, 255], else ``x``.

    Calls on the same tensor object (e.g. Q, K and V projections of one input) share one packed copy, unless it is
    an inference-mode tensor (those keep no version counter, so a change in place could not be told).
    """
    raw = Packed(x, "raw", tuple(x.shape), x.dtype)
    cached = not x.is_inference()
    hit = _pack_cache.get(x) if cached else None
    if hit is not None and hit[0] == x._version:
        return raw if hit[1] is None else hit[1]
    packed = raw
    if _fast(x.dtype, x.device):  # a strided view (attention heads) packs from a copy: 2 passes, not 5
        packed = _pack_compiled(x.contiguous()) or raw
    elif x.is_floating_point() and x.numel() > 0:
        u = x.to(torch.uint8)
        if torch.equal(u.to(x.dtype), x):
            flat = u.reshape(-1)
            if int(flat.max()) <= 1:
                pad = (-flat.numel()) % 8
                if pad:
                    flat = torch.cat([flat, flat.new_zeros(pad)])
                bits = torch.sum(flat.view(-1, 8) * _weights(x.device), dim=1, dtype=torch.uint8)
                packed = Packed(bits, "bits", tuple(x.shape), x.dtype)
            else:
                packed = Packed(u, "u8", tuple(x.shape), x.dtype)
    if cached:
        _pack_cache[x] = (x._version, None if packed is raw else packed)  # never hold x itself: the key is weak
    return packed


def unpack_exact(data: torch.Tensor, form: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Rebuild the tensor :func:`pack_exact` packed (contiguous, same values)."""
    if form == "raw":
        return data
    if form == "u8":
        return data.to(dtype).reshape(shape)
    n = math.prod(shape)
    if _fast(dtype, data.device):
        return _cpu_kernels.unpack_bits(data, n, dtype).view(shape)
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    bits = (data[:, None] >> shifts) & 1
    return bits.reshape(-1)[:n].to(dtype).view(shape)


def _save(ctx: Any, *tensors: torch.Tensor) -> None:
    """Save ``tensors`` compactly on ``ctx`` (``ctx.forms`` keeps what unpacking needs)."""
    packs = [pack_exact(t) for t in tensors]
    ctx.forms = [(p.form, p.shape, p.dtype) for p in packs]
    return packs


def _load(ctx: Any, saved: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [unpack_exact(d, *f) for d, f in zip(saved, ctx.forms)]


def _event_driven_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """What the event-driven CPU linear and conv both need of ``x``: switched on and nobody observing (the
    ``event_driven`` and ``observable`` switches of :mod:`.config`), a contiguous CPU float32/64 input of the
    weight's dtype, no autocast."""
    cfg = get_kernel_config()
    return (cfg.event_driven and not cfg.observable and _fast(x.dtype, x.device) and x.is_contiguous()
            and weight.dtype == x.dtype and not torch.is_autocast_enabled("cpu"))


def _rate(x: torch.Tensor, px: Packed | None) -> float:
    """The non-zero fraction of ``x`` that packing ``px`` counted (the firing rate of spikes; for counts, the
    entries the event-driven kernels visit); 1 when it was not packed as bits or bytes."""
    if px is None or px.form not in ("bits", "u8") or px.nonzero < 0 or x.numel() == 0:
        return 1.0
    return px.nonzero / x.numel()


def _bucket(n: int) -> int:
    """``n`` rounded up to a power of two: the size part of a shape class."""
    return 1 << max(n - 1, 0).bit_length()


def _trial_input(shape: tuple[int, ...], rate: float, form: str, dtype: torch.dtype) -> torch.Tensor:
    """Random spikes (``"bits"``) or small spike counts 1-3 (``"u8"``) of density ``rate``, for calibration trials."""
    x = (torch.rand(shape) < rate).to(dtype)
    return x * torch.randint(1, 4, shape).to(dtype) if form == "u8" else x


def _linear_limits(x: torch.Tensor, px: Packed, weight: torch.Tensor, wgrad: bool) -> tuple[float, float]:
    """Densities up to which the event-driven linear's forward and (``wgrad``: it is needed, else 0) weight gradient
    beat the dense ones for ``x``'s shape class (calibrated per machine, :mod:`.calibration`)."""
    N, K = weight.shape
    M = x.numel() // K
    rows, dtype, form = min(M, TRIAL_ROWS), x.dtype, px.form
    key = f"linear/{form}/{str(dtype)[6:]}/K{K}/N{N}/M{_bucket(M)}"

    def forward(rate: float):  # noqa: ANN202 - (dense, event-driven) calls
        w, xt = torch.randn(N, K, dtype=dtype) / K**0.5, _trial_input((rows, K), rate, form, dtype)
        pt = _pack_compiled(xt)
        return (lambda: F.linear(xt, w)), (lambda: _sparse_linear(pt, w, None))

    def backward(rate: float):  # noqa: ANN202
        g, xt = torch.randn(rows, N, dtype=dtype), _trial_input((rows, K), rate, form, dtype)
        pt = _pack_compiled(xt)
        return ((lambda: g.t().mm(unpack_exact(pt.data, pt.form, pt.shape, dtype))),
                (lambda: _cpu_kernels.sparse_linear_wgrad(pt.data, pt.form, g, K)))

    limit = calibration.break_even(key, forward, SPARSE_MAX_RATE)
    return limit, calibration.break_even(key + "/wgrad", backward, SPARSE_WGRAD_MAX_RATE) if wgrad else 0.0


def _event_driven_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the event-driven CPU linear can take ``x`` at all (how sparse it is gets checked separately)."""
    return x.dim() >= 2 and x.shape[-1] % 8 == 0 and _event_driven_allowed(x, weight)


def _linear_paths(x: torch.Tensor, px: Packed | None, weight: torch.Tensor, wgrad: bool) -> tuple[bool, bool]:
    """Whether the linear on ``x`` (packed: ``px``) runs its forward and (``wgrad``: it is needed) its weight
    gradient event-driven: a CPU input of sparse spikes, sparser than this machine's break-even for the shape."""
    rate = _rate(x, px)
    if rate >= 1.0 or not _event_driven_ok(x, weight):
        return False, False
    limit, limit_wgrad = _linear_limits(x, px, weight, wgrad)
    return rate <= limit, wgrad and rate <= limit_wgrad


def _sparse_linear(px: Packed, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The event-driven linear from ``px``, its input packed (as bits or bytes)."""
    y = _cpu_kernels.sparse_linear(px.data, px.form, math.prod(px.shape[:-1]), weight.detach().t().contiguous(),
                                   None if bias is None else bias.detach())
    return y.view(*px.shape[:-1], weight.shape[0])


def _conv_event_driven_ok(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                          padding: int) -> bool:
    """Whether the event-driven CPU conv can take ``x`` at all: a 3x3 kernel, stride 1, padding 1 (how sparse ``x`` is
    gets checked separately); see :func:`_event_driven_allowed`."""
    return (stride == 1 and padding == 1 and x.dim() == 4 and x.numel() > 0 and max(x.shape[2:]) < 65536
            and weight.dim() == 4 and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
            and (bias is None or bias.dtype == x.dtype) and _event_driven_allowed(x, weight))


def _conv_paths(x: torch.Tensor, px: Packed | None, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                padding: int, wgrad: bool) -> tuple[bool, bool]:
    """Whether the conv on ``x`` (packed: ``px``) runs its forward and (``wgrad``: it is needed) its weight gradient
    event-driven: a 3x3 conv of sparse spikes, sparser than this machine's break-even for the shape."""
    rate = _rate(x, px)
    if rate >= 1.0 or not _conv_event_driven_ok(x, weight, bias, stride, padding):
        return False, False
    B, Cin, H, W = x.shape
    Cout, dtype, form = weight.shape[0], x.dtype, px.form
    images = min(B, -(-TRIAL_PIXELS // (H * W)))
    key = f"conv3x3/{form}/{str(dtype)[6:]}/C{Cin}/O{Cout}/H{H}/W{W}/B{_bucket(B)}"

    def forward(r: float):  # noqa: ANN202 - (dense, event-driven) calls
        w, xt = torch.randn(Cout, Cin, 3, 3, dtype=dtype) / (9 * Cin) ** 0.5, _trial_input((images, Cin, H, W), r,
                                                                                            form, dtype)
        pt = _pack_compiled(xt)
        return (lambda: F.conv2d(xt, w, None, 1, 1)), (lambda: _sparse_conv(pt, w, None))

    def backward(r: float):  # noqa: ANN202
        w, xt = torch.randn(Cout, Cin, 3, 3, dtype=dtype), _trial_input((images, Cin, H, W), r, form, dtype)
        g, pt = torch.randn(images, Cout, H, W, dtype=dtype), _pack_compiled(xt)

        def dense() -> object:
            xu = unpack_exact(pt.data, pt.form, pt.shape, dtype)
            return torch.ops.aten.convolution_backward(g, xu, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                       [False, True, False])

        return dense, (lambda: _cpu_kernels.sparse_conv3x3_wgrad(pt.data, pt.form, g, tuple(w.shape), pt.shape))

    limit = calibration.break_even(key, forward, SPARSE_CONV_MAX_RATE)
    limit_wgrad = calibration.break_even(key + "/wgrad", backward, SPARSE_CONV_MAX_RATE) if wgrad else 0.0
    return rate <= limit, wgrad and rate <= limit_wgrad


def _sparse_conv(px: Packed, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _cpu_kernels.sparse_conv3x3(px.data, px.form, px.shape, weight.detach(),
                                       None if bias is None else bias.detach())


def _onednn_input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight`` for contiguous float32 CPU tensors as oneDNN's 1x1 transposed convolution over a channels-last
    view of ``g`` and the weight as it is (no copies)."""
    N, K = weight.shape
    M = g.numel() // N
    x = g.view(1, M, 1, N).permute(0, 3, 1, 2)  # [1, N, M, 1] in channels-last memory: g itself
    y = F.conv_transpose2d(x, weight.view(N, K, 1, 1))  # channels-last [1, K, M, 1]: memory [M, K]
    return y.permute(0, 2, 3, 1).reshape(*g.shape[:-1], K)


def _input_grad(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight`` (``[..., N] @ [N, K]``), a spike linear's input gradient: BLAS's ``matmul``, or for contiguous
    float32 CPU tensors oneDNN's 1x1 transposed convolution where this machine's trial found it faster for the
    shape class (equal to float rounding)."""
    N, K = weight.shape
    if not (g.dtype == weight.dtype == torch.float32 and g.device.type == "cpu" and g.is_contiguous()
            and weight.is_contiguous() and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and g.numel() > 0):  # with oneDNN switched off the transposed conv would take a slow generic path
        return g.matmul(weight)
    M = g.numel() // N
    rows = min(M, TRIAL_ROWS)

    def trial():  # noqa: ANN202 - (oneDNN, BLAS) calls
        gt, w = torch.randn(rows, N), torch.randn(N, K)
        return (lambda: _onednn_input_grad(gt, w)), (lambda: gt.matmul(w))

    if calibration.faster(f"input_grad/N{N}/K{K}/M{_bucket(M)}", trial, True):
        return _onednn_input_grad(g, weight)
    return g.matmul(weight)


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        (px,) = _save(ctx, x)
        ctx.save_for_backward(px.data, weight)
        ctx.has_bias = bias is not None
        ctx.sparse, ctx.sparse_wgrad = _linear_paths(x, px, weight, ctx.needs_input_grad[1])
        return _sparse_linear(px, weight, bias) if ctx.sparse else F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        xd, weight = ctx.saved_tensors
        gx = gw = gb = None
        g2 = g.reshape(-1, g.shape[-1])
        weight = weight.to(g.dtype)  # under autocast g is bf16/fp16; autograd casts grads back
        if ctx.needs_input_grad[0]:
            gx = _input_grad(g, weight)
        if ctx.needs_input_grad[1]:
            if ctx.sparse_wgrad:  # x stays packed: the weight gradient adds the gradient rows where x is not zero
                gw = _cpu_kernels.sparse_linear_wgrad(xd, ctx.forms[0][0], g2.contiguous(), weight.shape[1]).t()
            else:
                (x,) = _load(ctx, (xd,))
                gw = g2.t().mm(x.to(g.dtype).reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


class _SpikeConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # type: ignore[override]
        (px,) = _save(ctx, x)
        ctx.save_for_backward(px.data, weight)
        ctx.conf = (None if bias is None else list(bias.shape), [stride] * 2, [padding] * 2)
        ctx.sparse, ctx.sparse_wgrad = _conv_paths(x, px, weight, bias, stride, padding, ctx.needs_input_grad[1])
        return _sparse_conv(px, weight, bias) if ctx.sparse else F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        xd, weight = ctx.saved_tensors
        form, shape, _ = ctx.forms[0]
        bias_sizes, stride, padding = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dense_w = need_w and not ctx.sparse_wgrad
        # the input and bias gradients need x's shape only: its values are unpacked for a dense weight gradient
        x = _load(ctx, (xd,))[0].to(g.dtype) if dense_w else torch.empty(shape, dtype=g.dtype)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g, x, weight.to(g.dtype), bias_sizes, stride, padding, [1, 1], False, [0, 0], 1,
            [need_x, dense_w, bias_sizes is not None and need_b])
        if need_w and ctx.sparse_wgrad:  # the weight gradient adds gradient pixels where x is not zero
            gw = _cpu_kernels.sparse_conv3x3_wgrad(xd, form, g.contiguous(), tuple(weight.shape), shape)
        return gx, gw, gb, None, None


class _SpikeMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        (px,) = _save(ctx, x)
        ctx.save_for_backward(px.data)
        # spikes on the CPU: pool and route the gradient from the bits, no indices kept or recomputed
        ctx.bits = px.form == "bits" and _fast(x.dtype, x.device) and x.is_contiguous()
        if ctx.bits:
            return _cpu_kernels.maxpool3s2(x)
        return torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])[0]

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        if ctx.bits and g.dtype == ctx.forms[0][2]:
            return _cpu_kernels.maxpool3s2_backward(ctx.saved_tensors[0], g.contiguous(), ctx.forms[0][1])
        (x,) = _load(ctx, ctx.saved_tensors)
        x = x.to(g.dtype)
        idx = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])[1]
        return torch.ops.aten.max_pool2d_with_indices_backward(g, x, [3, 3], [2, 2], [1, 1], [1, 1], False, idx)


class _SpikeMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):  # type: ignore[override]
        pa, pb = _save(ctx, a, b)
        ctx.save_for_backward(pa.data, pb.data)
        return a.matmul(b)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        a, b = (t.to(g.dtype) for t in _load(ctx, ctx.saved_tensors))
        ga = g.matmul(b.mT) if ctx.needs_input_grad[0] else None
        gb = a.mT.matmul(g) if ctx.needs_input_grad[1] else None
        return ga, gb


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _compact(*tensors: torch.Tensor | None) -> bool:
    return get_kernel_config().compact_spikes and _needs_grad(*tensors)


def spike_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (``[..., C_in] -> [..., C_out]``) that keeps a spike / small-integer input compactly.

    On the CPU, a float input of sparse spikes or spike counts (at most :data:`SPARSE_MAX_RATE` of it not zero) is
    computed event-driven: each output row adds the weight columns of the non-zero inputs, and (up to
    :data:`SPARSE_WGRAD_MAX_RATE`) the weight gradient adds gradient rows where they are not zero, which costs that
    fraction of the dense product. Results equal the
    dense ones to float rounding (the sums run in another order), not bit for bit; the ``event_driven`` switch
    (:mod:`.config`) turns it off.
    """
    if _compact(x, weight, bias):
        return _SpikeLinear.apply(x, weight, bias)
    if not _needs_grad(x, weight, bias) and _event_driven_ok(x, weight):  # inference: count the spikes, then pick
        px = pack_exact(x)
        if _linear_paths(x, px, weight, False)[0]:
            return _sparse_linear(px, weight, bias)
    return F.linear(x, weight, bias)


def spike_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1,
                 padding: int = 0) -> torch.Tensor:
    """``F.conv2d`` on ``[N, C, H, W]`` (dilation 1, one group) that keeps a spike input compactly.

    On the CPU, a 3x3 conv with stride 1 and padding 1 (the spiking convs of SPS) on a float input of sparse spikes
    or spike counts (at most :data:`SPARSE_CONV_MAX_RATE` of it not zero) is computed event-driven: each output
    pixel adds the weights of the non-zero inputs around it, and the weight gradient adds gradient pixels where the
    input is not zero (the input gradient stays a dense conv). Results equal the dense ones to float rounding, not
    bit for bit; the ``event_driven`` switch (:mod:`.config`) turns it off.
    """
    if _compact(x, weight, bias):
        return _SpikeConv2d.apply(x, weight, bias, stride, padding)
    if not _needs_grad(x, weight, bias) and _conv_event_driven_ok(x, weight, bias, stride, padding):
        px = _pack_compiled(x)  # inference: count the spikes, then pick
        if _conv_paths(x, px, weight, bias, stride, padding, False)[0]:
            return _sparse_conv(px, weight, bias)
    return F.conv2d(x, weight, bias, stride, padding)


def spike_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for same-batch operands ``[..., n, k] @ [..., k, m]`` keeping spike / integer operands compactly."""
    if not _compact(a, b) or a.dim() < 2 or b.dim() < 2 or a.shape[:-2] != b.shape[:-2]:
        return a @ b
    return _SpikeMatmul.apply(a, b)


def _merged(x: torch.Tensor) -> torch.Tensor | None:
    """The ``[..., N, C]`` tensor that the head split ``x: [..., H, N, d]`` views without a copy, or None."""
    base = x.transpose(-3, -2)
    return base.reshape(*base.shape[:-2], -1) if base.is_contiguous() else None


class _SpikeAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bits, shape):  # type: ignore[override]
        ctx.save_for_backward(*bits)
        ctx.shape = shape
        out = _cpu_kernels.spike_attention(*bits, shape, q.dtype)
        return out.view(*q.shape[:-3], shape[1], shape[2], shape[3]).transpose(-3, -2)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        gm = g.transpose(-3, -2).contiguous()
        grads = _cpu_kernels.spike_attention_backward(*ctx.saved_tensors, gm, ctx.shape, ctx.needs_input_grad[:3])
        split = [None if t is None else t.view(gm.shape).transpose(-3, -2) for t in grads]
        return split[0], split[1], split[2], None, None


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """``Q (K^T V)`` per head for binary spike heads ``[..., H, N, d]`` on the CPU, event-driven; None where it does
    not apply (then use :func:`spike_matmul`).

    It applies when event-driven layers are on and nobody observes (the ``event_driven`` and ``observable``
    switches of :mod:`.config`), ``q``, ``k`` and ``v`` are float32/64 head splits of contiguous ``[..., N, H * d]``
    tensors (as the attention mechanisms' head split makes them) holding only 0/1, ``d`` is a multiple of 8 up to
    64, and autocast is off. The result is a head split of a contiguous ``[..., N, H * d]`` tensor, so
    merging the heads needs no copy; the heads are never copied either. Backward keeps the three inputs as bits.
    The forward equals the dense product exactly (sums of spikes are integers); gradients equal it up to the order
    of float sums.
    """
    cfg = get_kernel_config()
    if not cfg.event_driven or cfg.observable:
        return None
    if not (q.shape == k.shape == v.shape and q.dim() >= 3 and q.dtype == k.dtype == v.dtype):
        return None
    H, N, d = q.shape[-3:]
    if d not in _cpu_kernels.ATTENTION_HEAD_SIZES or q.numel() == 0 or not _fast(q.dtype, q.device):
        return None
    if torch.is_autocast_enabled("cpu"):
        return None
    merged = [_merged(t) for t in (q, k, v)]
    if any(t is None for t in merged):
        return None
    bits = []
    for t in merged:
        found = _cpu_kernels.pack_bits(t)
        if found is None:
            return None
        bits.append(found[0])
    return _SpikeAttention.apply(q, k, v, tuple(bits), (q.numel() // (H * N * d), N, H, d))


def spike_max_pool(x: torch.Tensor) -> torch.Tensor:
    """MaxPool(3, stride 2, padding 1) on ``[N, C, H, W]`` that keeps a spike input compactly for backward."""
    if _compact(x):
        return _SpikeMaxPool.apply(x)
    return F.max_pool2d(x, 3, 2, 1)
