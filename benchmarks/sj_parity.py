"""Parity of spikformers with spikingjelly's model zoo: the table of docs/checkpoints.md, measured.

For each case, a spikingjelly network built by its factory (at small image sizes) gets random weights AND random
batch-norm statistics (affine parameters, running mean and variance, counters), is converted with
:func:`spikformers.from_spikingjelly`, and both run in float64 on the same random input: in evaluation mode
(logits, and the output of every patch embedding and block), then in training mode for one forward and one
backward (logits, outputs, every mapped parameter's gradient, every batch-norm statistic after the update).

    python benchmarks/sj_parity.py [--case spikformer_ti ...] [--json parity.json]

Columns: the largest |difference| of logits (eval, train), whether every compared output is identical bit for
bit in both modes, the largest |difference| of gradients and of batch-norm statistics, and the lowest and
highest firing rate over the compared outputs (fraction nonzero), which shows the comparison is not of silent
layers. tests/test_parity_spikingjelly.py asserts the same numbers for the same cases.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    """A spikingjelly network: ``module`` of ``spikingjelly.activation_based.model``, ``factory`` and its kwargs;
    ``img_size`` of the input; ``frames``: a different input at every time step ([T, B, C, H, W], event-like)
    instead of a static image repeated."""

    name: str
    module: str
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = 32
    frames: bool = False

    def source(self) -> str:
        """The factory call, as the table shows it."""
        shown = [f"{k}={v!r}" if k != "surrogate_alpha" else f"surrogate_function=surrogate.Sigmoid(alpha={v})"
                 for k, v in self.kwargs.items()]
        args = ", ".join(shown)
        return f"{self.module}.{self.factory}({args})"

    def build(self) -> nn.Module:
        """The spikingjelly network (float32, as the factory returns it)."""
        import importlib

        from spikingjelly.activation_based import surrogate

        mod = importlib.import_module(f"spikingjelly.activation_based.model.{self.module}")
        kwargs = dict(self.kwargs)
        if "surrogate_alpha" in kwargs:  # a surrogate object, built here so that the case stays printable
            kwargs["surrogate_function"] = surrogate.Sigmoid(alpha=kwargs.pop("surrogate_alpha"))
        return getattr(mod, self.factory)(**kwargs)


CASES = [
    Case("spikformer_ti", "spikformer", "spikformer_ti", dict(T=2, img_size_h=32, img_size_w=32, num_classes=7)),
    Case("spikformer_s", "spikformer", "spikformer_s", dict(T=1, img_size_h=32, img_size_w=32, num_classes=3)),
    Case("spikformer_cifar10", "spikformer", "spikformer_cifar10", dict(T=2, num_classes=10)),
    Case("spikformer_ti_neurons", "spikformer", "spikformer_ti",
         dict(T=3, img_size_h=32, img_size_w=32, num_classes=5, tau=3.0, v_threshold=0.75, detach_reset=False,
              surrogate_alpha=2.5)),
    Case("spikformer_small_frames", "spikformer", "Spikformer",
         dict(T=3, in_channels=2, img_size_h=16, img_size_w=16, patch_size=4, num_classes=4, embed_dims=64,
              num_heads=4, mlp_ratio=2.0, depths=2), img_size=16, frames=True),
    Case("qkformer_10_384", "qkformer", "qkformer_10_384", dict(T=2, num_classes=6)),
    Case("qkformer_small", "qkformer", "QKFormer",
         dict(T=3, in_channels=2, num_classes=3, embed_dims=64, num_heads=(1, 2, 4), depths=(1, 1, 2),
              mlp_ratio=2.0)),
    Case("sdt_8_384", "spike_driven_transformer", "sdt_8_384", dict(T=2, num_classes=5)),
    Case("sdt_small_frames", "spike_driven_transformer", "SpikeDrivenTransformer",
         dict(T=3, in_channels=2, num_classes=4, embed_dims=64, num_heads=4, depths=2, mlp_ratio=2.0,
              pooling_stat="0011"), img_size=16, frames=True),
]


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (He-scaled, so that layers fire) and random batch-norm parameters and statistics."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=g)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(rand(n) + 0.5)
                m.bias.copy_(randn(n) * 0.5 + 0.3)
                m.running_mean.copy_(randn(n) * 0.3)
                m.running_var.copy_(rand(n) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                m.weight.copy_(randn(*m.weight.shape) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(randn(*m.bias.shape) * 0.3)
    return module


def case_input(case: Case, model: nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A float64 input for ``case``: ``[B, C, H, W]``, or ``[T, B, C, H, W]`` with ``frames``."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.in_chans, case.img_size, case.img_size)
    return torch.randn(((model.T,) if case.frames else ()) + shape, generator=g, dtype=torch.float64)


def measure(case: Case, seed: int = 0) -> dict[str, Any]:
    """Convert ``case`` and compare both networks in eval and training mode; returns the table row."""
    from spikformers.convert import check_parity, convert_spikingjelly

    start = time.perf_counter()
    src = randomize(case.build(), seed).double().eval()
    conversion = convert_spikingjelly(src, img_size=case.img_size)
    x = case_input(case, conversion.model, seed=seed + 1)
    ev = check_parity(conversion, x, train=False)
    tr = check_parity(conversion, x, train=True, seed=seed)
    rates = list(ev.rates.values()) + list(tr.rates.values())
    return {
        "case": case.name, "source": case.source(), "target": conversion.model.default_cfg["architecture"],
        "logits_eval": ev.logits, "logits_train": tr.logits,
        "spikes_identical": ev.spikes_identical and tr.spikes_identical,
        "points": len(ev.points), "grads": tr.grads, "buffers": tr.buffers,
        "rate_min": min(rates), "rate_max": max(rates), "worst": tr.worst, "seconds": time.perf_counter() - start,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as the markdown table of docs/checkpoints.md."""
    lines = [
        "| spikingjelly network | spikformers model | max \\|Δ logits\\| eval / train | spikes identical "
        "(outputs compared) | max \\|Δ grad\\| | max \\|Δ BN stats\\| | firing rates |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['source']}` | `{r['target']}` | {r['logits_eval']:.1e} / {r['logits_train']:.1e} | "
            f"{'yes' if r['spikes_identical'] else 'NO'} ({r['points']}) | {r['grads']:.1e} | {r['buffers']:.1e} | "
            f"{r['rate_min']:.2f}-{r['rate_max']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="*", default=None, choices=[c.name for c in CASES],
                        help="cases to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the networks are small; one thread is fastest and immune to a busy machine
    cases = [c for c in CASES if args.case is None or c.name in args.case]
    rows = [measure(c, args.seed) for c in cases]
    print(table(rows))
    print(f"torch {torch.__version__}, seed {args.seed}, float64, batch 2; "
          f"{sum(r['seconds'] for r in rows):.1f} s in all")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
