"""Stochastic depth (drop-path): per-sample masks on time-first tensors, a linear ramp over blocks, eval unchanged,
no new parameters, and ``optim.drop_path`` reaching the model through the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spikformers import count_parameters, create_model
from spikformers.layers import DropPath, drop_path_rates
from spikformers.models.blocks import MembraneBlock
from spikformers.models.hst import HSTBlock
from spikformers.models.spikformer import Block
from spikformers.train.config import load_config

# (name, overrides): small instances of every backbone and block form.
MODELS = [
    ("spikformer_3_64_cifar", dict(img_size=16, T=2)),
    ("sdt_3_64_cifar", dict(img_size=16, T=2)),  # membrane-shortcut blocks
    ("qkformer_4_64_cifar", dict(img_size=8, T=2)),
    ("spiliformer_4_64_cifar", dict(img_size=8, T=2)),
]


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (Block, MembraneBlock, HSTBlock))]


def test_drop_path_mask_is_per_sample_and_shared_over_time_tokens_channels() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    x = torch.ones(4, 64, 5, 6)  # [T, B, N, C]
    y = dp(x)
    per_sample = y[0, :, 0, 0]
    assert torch.equal(y, per_sample.view(1, -1, 1, 1).expand_as(y))  # same for every t, n, c
    assert set(per_sample.tolist()) == {0.0, 2.0}  # dropped or kept and scaled by 1 / (1 - p)
    assert dp.eval()(x) is x and DropPath(0.0).train()(x) is x


def test_ramp_is_linear_from_zero_to_rate() -> None:
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.2, 1) == [0.0]  # timm's linspace(0, rate, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        drop_path_rates(1.0, 4)


@pytest.mark.parametrize("name, kw", MODELS)
def test_blocks_get_the_ramp_and_no_parameters(name: str, kw: dict) -> None:
    plain = create_model(name, **kw)
    dropped = create_model(name, drop_path_rate=0.3, **kw)
    assert count_parameters(dropped) == count_parameters(plain)
    assert dropped.state_dict().keys() == plain.state_dict().keys()
    rates = [b.drop_path.p for b in _blocks(dropped)]
    assert rates == pytest.approx(drop_path_rates(0.3, len(rates))) and rates[-1] == pytest.approx(0.3)
    assert all(b.drop_path.p == 0.0 for b in _blocks(plain))


@pytest.mark.parametrize("name, kw", MODELS)
def test_eval_output_is_unchanged_by_drop_path_rate(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    plain = create_model(name, **kw).eval()
    torch.manual_seed(0)
    dropped = create_model(name, drop_path_rate=0.5, **kw).eval()
    x = torch.rand(3, 3, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        assert torch.equal(plain(x), dropped(x))


@pytest.mark.parametrize("name, kw", MODELS)
def test_training_drops_residual_branches_per_sample_consistently_over_time(name: str, kw: dict) -> None:
    model = create_model(name, drop_path_rate=0.5, **kw).train()
    seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    blk = _blocks(model)[-1]  # p = 0.5
    blk.drop_path.register_forward_hook(lambda m, args, out: seen.append((args[0], out, m.p)))
    torch.manual_seed(0)
    out = model(torch.rand(16, 3, kw["img_size"], kw["img_size"]))
    assert seen
    dropped_any = kept_any = False
    for branch, result, p in seen:
        assert branch.shape[1] == 16
        for b in range(16):
            if torch.equal(result[:, b], torch.zeros_like(result[:, b])) and branch[:, b].abs().sum() > 0:
                dropped_any = True  # the whole [T, N, C] slab of this sample dropped
            else:
                torch.testing.assert_close(result[:, b], branch[:, b] / (1 - p))
                kept_any = True
    assert dropped_any and kept_any
    loss = (out.passes[0] if hasattr(out, "passes") else out).sum()
    loss.backward()


def test_training_step_with_optim_drop_path(tmp_path: Path) -> None:
    from spikformers.train.engine import build_model, train

    overrides = ["model.name=spikformer_1_32_cifar", "progress=false", f"out={tmp_path}", "optim.drop_path=0.2",
                 "optim.epochs=1", "model.T=1", "data.img_size=8", "data.limit_train=32", "data.limit_test=32",
                 "data.batch_size=16", "train.tensorboard=false"]
    cfg = load_config(None, overrides)
    model = build_model(cfg)
    assert model.default_cfg["overrides"]["drop_path_rate"] == 0.2
    result = train(cfg)
    assert result.epochs == 1 and (tmp_path / "metrics.csv").is_file()
    deeper = build_model(load_config(None, [*overrides, "model.name=spikformer_2_32_cifar"]))
    assert [b.drop_path.p for b in deeper.blocks] == pytest.approx([0.0, 0.2])
