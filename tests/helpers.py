"""Helpers shared by the tests: real digits at any size, a forward hook that records activations, and neuron
kernel inputs with the check against a reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 real digits as ``[N, 1, size, size]`` in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False), torch.tensor(d.target)


def record(module: torch.nn.Module, store: dict, key: str, inputs: bool = False) -> torch.utils.hooks.RemovableHandle:
    """Forward hook saving a module's output (or first input) under ``store[key]`` as a list."""

    def hook(mod, args, out):  # type: ignore[no-untyped-def]
        store.setdefault(key, []).append((args[0] if inputs else out).detach().clone())

    return module.register_forward_hook(hook)


def train_digits(model: torch.nn.Module, epochs: int = 4, lr: float = 1e-2) -> float:
    """A short Adam schedule on 1400 real digits; returns accuracy on the 397 held out."""
    x, y = digits()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * 22, pct_start=0.2)
    for _ in range(epochs):
        model.train()
        order = train[torch.randperm(len(train))]
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return (model(x[test]).argmax(1) == y[test]).float().mean().item()


def neuron_inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0, device: str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A neuron input ``x`` (requiring grad, spread so that some steps fire) and an output gradient, seeded."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 1.5 + 0.3
    g = torch.randn(shape, generator=gen, dtype=dtype)
    return x.to(device).requires_grad_(), g.to(device)


def check_neuron(fast, ref, x: torch.Tensor, g: torch.Tensor, atol: float = 1e-6) -> None:  # type: ignore[no-untyped-def]
    """``fast(x)`` gives exactly ``ref(x)``'s spikes, and input gradients within ``atol`` (and rtol 1e-6)."""
    out_ref, out = ref(x), fast(x)
    assert out.dtype == out_ref.dtype and torch.equal(out, out_ref)
    (g_ref,) = torch.autograd.grad(out_ref, x, g)
    (g_fast,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(g_fast, g_ref, atol=atol, rtol=1e-6)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def state_meta(run) -> dict:
    """The meta of a run folder's training state ({} before the first is written)."""
    from spikformers.train.checkpoint import CheckpointError, read_train_state_meta

    try:
        return read_train_state_meta(run / "state.safetensors")
    except CheckpointError:
        return {}


def check_checkpointing_saves_less(plain, ckpt, x) -> None:
    """After one training forward and backward of each: ``ckpt`` (per-block checkpointing on, weights of
    ``plain``) holds the same statistics as ``plain``, saves fewer bytes for backward, and as many once it is off."""
    from spikformers.memory import checkpoint_blocks

    for (k, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), k  # running statistics updated once, not twice
    saved_plain = saved_bytes(lambda: plain(x))
    assert saved_bytes(lambda: ckpt(x)) < saved_plain
    checkpoint_blocks(ckpt, False)
    assert saved_bytes(lambda: ckpt(x)) == saved_plain
