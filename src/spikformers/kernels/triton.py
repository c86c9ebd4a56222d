"""GPU fused path: Triton kernels, one program per block of elements walking all T steps.

Imported only when first needed (``import spikformers`` never imports triton). Runs on CUDA tensors, or on
CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1`` (how the test suite checks it without a
GPU). Saved state and arithmetic follow :mod:`.cpp` and the reference loops; on CUDA the charge uses
round-to-nearest multiply/add intrinsics (never contracted into an FMA) and the reciprocal of tau, because
that is what torch's CUDA ops compute for ``x / tau``, so spikes stay bit-identical to the reference there too.
Triton links those intrinsics with flush-to-zero on by default; CUDA launches turn it off (``enable_reflect_ftz``,
where the installed Triton has the option), so denormal membranes stay denormal as in torch.

:func:`compile_for_cuda` builds every variant the library launches for a CUDA architecture without a GPU, with
Triton's own LLVM and ptxas: the test suite uses it to check that the kernels compile and what their PTX does.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import types
from typing import Any

import torch
import triton
import triton.language as tl

from . import eager
from .common import KIND_IDS, Q_MAX, SAVED_IDS, NeuronParams, saved_shape, surrogate_scale, triton_interpret

BLOCK = 1024


def _neuron_params(prm_ptr):
    """tau, 1 / tau, v_th, v_reset, alpha and decay from the launch's parameter vector (see :func:`_params`)."""
    return (tl.load(prm_ptr + 0), tl.load(prm_ptr + 1), tl.load(prm_ptr + 2), tl.load(prm_ptr + 3),
            tl.load(prm_ptr + 4), tl.load(prm_ptr + 5))


def _sigmoid_grad(u, alpha):
    """The sigmoid surrogate's derivative at ``u``: alpha * e / (1 + e)^2 with e = exp(-|alpha u|)."""
    e = tl.exp(-tl.abs(alpha * u))
    d = 1.0 + e
    return alpha * e / (d * d)


def _forward_kernel(x_ptr, out_ptr, planes_ptr, h_ptr, v0_ptr, vT_ptr, prm_ptr, T, N, KIND: tl.constexpr,
                    SAVE: tl.constexpr, QMAX: tl.constexpr, RN: tl.constexpr, HAS_V0: tl.constexpr,
                    STORE_V: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tau, inv_tau, v_th, v_reset, alpha, decay = _neuron_params(prm_ptr)
    half_th = tl.load(prm_ptr + 6)
    to_q = tl.load(prm_ptr + 7)
    TN = T * N
    zero = tl.full([BLOCK], 0.0, x_ptr.dtype.element_ty)
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    elif KIND == 0:
        v = zero + v_reset
    else:
        v = zero
    for t in range(T):
        idx = t * N + offs
        xv = tl.load(x_ptr + idx, mask=mask, other=0.0)
        if KIND == 2:
            if RN:
                u = tl.extra.cuda.libdevice.add_rn(tl.extra.cuda.libdevice.mul_rn(v, decay), xv)
            else:
                u = decay * v + xv
            a = tl.abs(u)
            fired = (a >= half_th) & (u != 0.0)
            s = tl.where(fired, tl.where(u > 0.0, 1.0, -1.0), 0.0)
            tl.store(out_ptr + idx, s.to(x_ptr.dtype.element_ty), mask=mask)
            v = tl.where(fired, zero, u)
            if SAVE == 1:
                code = (a <= 1.0).to(tl.uint8) | (fired.to(tl.uint8) << 1)
                tl.store(planes_ptr + idx, code, mask=mask)
        else:
            if KIND == 0:
                d = xv - (v - v_reset)
            else:
                d = xv - v
            if RN:
                h = tl.extra.cuda.libdevice.add_rn(v, tl.extra.cuda.libdevice.mul_rn(d, inv_tau))
            else:
                h = v + d / tau
            up = h - v_th
            if KIND == 0:
                fired = up >= 0.0
                s = tl.where(fired, 1.0, 0.0)
                v = tl.where(fired, zero + v_reset, h)
            else:
                un = -h - v_th
                pos = tl.where(up >= 0.0, 1.0, 0.0)
                neg = tl.where(un >= 0.0, 1.0, 0.0)
                s = pos - neg
                fired = pos != neg
                v = tl.where(fired, zero, h)
            tl.store(out_ptr + idx, s.to(x_ptr.dtype.element_ty), mask=mask)
            if SAVE == 4:
                tl.store(h_ptr + idx, h, mask=mask)
            if SAVE == 2 or SAVE == 3:
                sg = _sigmoid_grad(up, alpha)
                if KIND == 1:
                    sg = sg + _sigmoid_grad(un, alpha)
                q = tl.minimum((sg * to_q + 0.5).to(tl.int32), QMAX)
                bit = fired.to(tl.int32) << 7
                tl.store(planes_ptr + idx, (q & 0xFF).to(tl.uint8), mask=mask)
                if SAVE == 2:
                    tl.store(planes_ptr + TN + idx, (((q >> 8) & 0x7F) | bit).to(tl.uint8), mask=mask)
                else:
                    tl.store(planes_ptr + TN + idx, ((q >> 8) & 0xFF).to(tl.uint8), mask=mask)
                    tl.store(planes_ptr + 2 * TN + idx, (((q >> 16) & 0x7F) | bit).to(tl.uint8), mask=mask)
    if STORE_V:
        tl.store(vT_ptr + offs, v, mask=mask)


def _backward_kernel(gs_ptr, gx_ptr, planes_ptr, h_ptr, prm_ptr, T, N, KIND: tl.constexpr, SAVE: tl.constexpr,
                     DETACH: tl.constexpr, RN: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tau, inv_tau, v_th, v_reset, alpha, decay = _neuron_params(prm_ptr)
    from_q = tl.load(prm_ptr + 8)
    TN = T * N
    gv = tl.full([BLOCK], 0.0, gs_ptr.dtype.element_ty)
    for i in range(T):
        t = T - 1 - i
        idx = t * N + offs
        g_spike = tl.load(gs_ptr + idx, mask=mask, other=0.0)
        if KIND == 2:
            code = tl.load(planes_ptr + idx, mask=mask, other=0).to(tl.int32)
            ste = (code & 1).to(gv.dtype)
            keep = (1 - ((code >> 1) & 1)).to(gv.dtype)
            gu = g_spike * ste + gv * keep
            tl.store(gx_ptr + idx, gu, mask=mask)
            gv = decay * gu
        else:
            if SAVE == 4:
                h = tl.load(h_ptr + idx, mask=mask, other=0.0)
                up = h - v_th
                sg = _sigmoid_grad(up, alpha)
                if KIND == 0:
                    keep = tl.where(up >= 0.0, 0.0, 1.0)
                    if not DETACH:
                        g_spike = g_spike + gv * (v_reset - h)
                else:
                    un = -h - v_th
                    sg = sg + _sigmoid_grad(un, alpha)
                    keep = tl.where((up >= 0.0) != (un >= 0.0), 0.0, 1.0)
            else:
                q = tl.load(planes_ptr + idx, mask=mask, other=0).to(tl.int32)
                if SAVE == 2:
                    top = tl.load(planes_ptr + TN + idx, mask=mask, other=0).to(tl.int32)
                    q = q | ((top & 0x7F) << 8)
                else:
                    mid = tl.load(planes_ptr + TN + idx, mask=mask, other=0).to(tl.int32)
                    top = tl.load(planes_ptr + 2 * TN + idx, mask=mask, other=0).to(tl.int32)
                    q = q | (mid << 8) | ((top & 0x7F) << 16)
                sg = q.to(gv.dtype) * from_q
                keep = (1 - (top >> 7)).to(gv.dtype)
            gh = g_spike * sg + gv * keep
            if RN:
                g = gh * inv_tau
            else:
                g = gh / tau
            tl.store(gx_ptr + idx, g, mask=mask)
            gv = gh - g


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The forward and backward kernels, with the helpers they call, decorated for one mode: interpreted (CPU
    tensors) or compiled. Decorated here rather than at import, each mode in a scope of its own, because a
    decorated function is bound to one mode and the test suite runs both in one process."""
    from triton.runtime.interpreter import InterpretedFunction

    decorate = InterpretedFunction if interpret else triton.runtime.JITFunction
    scope = dict(globals())
    scope.update({f.__name__: decorate(f) for f in (_neuron_params, _sigmoid_grad)})
    return tuple(decorate(types.FunctionType(f.__code__, scope, f.__name__)) for f in (_forward_kernel,
                                                                                      _backward_kernel))


@functools.cache
def cuda_options() -> dict[str, Any]:
    """Triton compile options of every CUDA launch: libdevice without flush-to-zero (see the module docstring);
    empty where the installed Triton lacks the option."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except Exception:  # noqa: BLE001 - no CUDA backend in this Triton: nothing to set
        return {}
    return {"enable_reflect_ftz": False} if "enable_reflect_ftz" in CUDAOptions.__dataclass_fields__ else {}


def _forward_consts(kind: str, save: str, rn: bool, has_v0: bool = False, store_v: bool = False) -> dict[str, Any]:
    """The forward kernel's compile-time arguments for one launch."""
    return dict(KIND=KIND_IDS[kind], SAVE=SAVED_IDS[save], QMAX=Q_MAX.get(save, 1), RN=rn, HAS_V0=has_v0,
                STORE_V=store_v, BLOCK=BLOCK)


def _backward_consts(kind: str, save: str, detach: bool, rn: bool) -> dict[str, Any]:
    """The backward kernel's compile-time arguments for one launch."""
    return dict(KIND=KIND_IDS[kind], SAVE=SAVED_IDS[save], DETACH=detach, RN=rn, BLOCK=BLOCK)


def cuda_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every kernel variant :func:`forward` and :func:`backward` launch on CUDA (float32 compute), by name:
    ``(kernel, compile-time arguments)`` with kernel ``"forward"`` or ``"backward"``. (Launches with the reset
    attached differ from these only for the LIF's ``"exact"`` backward, the one place ``DETACH`` is read.)"""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for kind in KIND_IDS:
        saves = ["code"] if kind == "ternary_guo" else ["q16", "q24", "exact"]
        for save in ["none", *saves]:
            out[f"forward/{kind}/{save}"] = ("forward", _forward_consts(kind, save, True))
        out[f"forward/{kind}/carry"] = ("forward", _forward_consts(kind, "none", True, has_v0=True, store_v=True))
        for save in saves:
            out[f"backward/{kind}/{save}"] = ("backward", _backward_consts(kind, save, True, True))
    out["backward/lif/exact/reset-attached"] = ("backward", _backward_consts("lif", "exact", False, True))
    return out


def compile_for_cuda(arch: int = 90, names: list[str] | None = None) -> dict[str, Any]:
    """Compile the CUDA variants (``names`` of :func:`cuda_variants`, default all) for compute capability ``arch``
    (90: H100) on any machine, GPU or not. Returns Triton's compiled kernels by name (``.asm["ptx"]``,
    ``.asm["cubin"]``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fns = dict(zip(("forward", "backward"), _kernels(False)))
    variants = cuda_variants()
    out = {}
    for name in names or list(variants):
        kernel, consts = variants[name]
        fn = fns[kernel]
        sig = {a: "constexpr" if a in consts else ("i32" if a in ("T", "N") else
                                                   "*u8" if a == "planes_ptr" else "*fp32") for a in fn.arg_names}
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(a),): v for a, v in consts.items()})
        out[name] = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=cuda_options())
    return out


def cuda_resources(kernel: Any) -> dict[str, int]:
    """Registers per thread and stack, shared and local (spill) bytes of a kernel from :func:`compile_for_cuda`,
    read from its cubin with the cuobjdump that Triton ships."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", path], capture_output=True,
                             text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage line for the kernel: {out!r}")
    return dict(zip(("registers", "stack", "shared", "local"), map(int, found.groups())))


_param_cache: dict[tuple, torch.Tensor] = {}


def _params(kind: str, p: NeuronParams, save: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (kind, p, save, dtype, str(device))
    prm = _param_cache.get(key)
    if prm is None:
        tau = torch.tensor(p.tau, dtype=dtype)
        qmax = Q_MAX.get(save, 1)
        scale = surrogate_scale(kind, p.alpha)
        values = [p.tau, float(1.0 / tau), p.v_th, p.v_reset, p.alpha, p.decay, 0.5 * p.v_th, qmax / scale,
                  scale / qmax]
        prm = torch.tensor(values, dtype=dtype).to(device)
        if len(_param_cache) > 256:
            _param_cache.clear()
        _param_cache[key] = prm
    return prm


def _use_eager(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.float64


def forward(
    x: torch.Tensor, kind: str, p: NeuronParams, save: str, v_init: torch.Tensor | None = None,
    v_final: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes for contiguous ``x: [T, ...]`` and the state saved for backward (format ``save``).

    ``v_init`` / ``v_final``: optional contiguous ``[...]`` membranes to start from / to write at the end.
    """
    if _use_eager(x):
        return eager.forward(x, kind, p, save, v_init, v_final)
    fwd, _ = _kernels(triton_interpret())
    T = x.shape[0]
    N = x.numel() // T
    out = torch.empty_like(x)
    state = None
    planes = hsave = x  # placeholders for unused pointers
    if save != "none":
        shape, dtype = saved_shape(save, x)
        state = torch.empty(shape, dtype=dtype, device=x.device)
        if save == "exact":
            hsave = state
        else:
            planes = state
    grid = (triton.cdiv(N, BLOCK),)
    v0 = x if v_init is None else v_init
    vT = x if v_final is None else v_final
    fwd[grid](x, out, planes, hsave, v0, vT, _params(kind, p, save, x.dtype, x.device), T, N,
              **_forward_consts(kind, save, x.is_cuda, v_init is not None, v_final is not None),
              **(cuda_options() if x.is_cuda else {}))
    return out, state


def backward(grad: torch.Tensor, state: torch.Tensor, kind: str, p: NeuronParams, save: str) -> torch.Tensor:
    """Gradient w.r.t. the input from the gradient w.r.t. the spikes and the saved state."""
    if _use_eager(grad):
        return eager.backward(grad, state, kind, p, save)
    _, bwd = _kernels(triton_interpret())
    T = grad.shape[0]
    N = grad.numel() // T
    grad_x = torch.empty_like(grad)
    planes, hsave = (grad, state) if save == "exact" else (state, grad)
    grid = (triton.cdiv(N, BLOCK),)
    bwd[grid](grad, grad_x, planes, hsave, _params(kind, p, save, grad.dtype, grad.device), T, N,
              **_backward_consts(kind, save, bool(p.detach_reset), grad.is_cuda),
              **(cuda_options() if grad.is_cuda else {}))
    return grad_x
