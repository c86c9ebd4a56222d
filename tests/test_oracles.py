"""The papers' equations written out by hand (tests/oracles.py) against the modules, the energy formula, the
SpiLiFormer loss, batch-size-independent evaluation, mixup on event frames, the EMA update and the frame cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import digits
from oracles import (
    atis_encode,
    batch_norm,
    frames_by_number,
    lif_loop,
    linear,
    randomize_bn,
    ternary_guo_loop,
    ternary_lif_loop,
)
from spikformers import create_model
from spikformers.attention import SSA
from spikformers.neurons import LIF, TernaryNeuron

# ---------------------------------------------------------------------------------------------------------
# neurons


def neuron_input(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 input ``[6, 3, 40]`` spread over both thresholds, and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(6, 3, 40, generator=gen, dtype=torch.float64) * 1.5 + 0.2).requires_grad_()
    return x, torch.randn(6, 3, 40, generator=gen, dtype=torch.float64)


def spikes_and_grad(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, g)
    return out.detach(), grad


@pytest.mark.parametrize("form, kwargs", [
    ("guo", {"decay": 0.25, "v_th": 1.0}), ("guo", {"decay": 0.5, "v_th": 0.6}),
    ("lif", {"tau": 2.0, "v_th": 1.0, "alpha": 4.0}), ("lif", {"tau": 1.5, "v_th": 0.7, "alpha": 3.0}),
])  # fmt: skip
def test_ternary_neuron_against_the_loop(form: str, kwargs: dict) -> None:
    x, g = neuron_input()
    out, grad = spikes_and_grad(TernaryNeuron(form, **kwargs), x, g)
    loop = ternary_guo_loop if form == "guo" else ternary_lif_loop
    ref_out, ref_grad = spikes_and_grad(lambda x: loop(x, **kwargs), x, g)
    assert set(out.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert (out == 1).sum() > 30 and (out == -1).sum() > 30
    assert torch.equal(out, ref_out)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("tau, v_th, alpha", [(2.0, 1.0, 4.0), (1.5, 0.5, 2.0)])
def test_lif_against_the_loop(tau: float, v_th: float, alpha: float) -> None:
    x, g = neuron_input(1)
    out, grad = spikes_and_grad(LIF(tau=tau, v_th=v_th, alpha=alpha), x, g)
    ref_out, ref_grad = spikes_and_grad(lambda x: lif_loop(x, tau=tau, v_th=v_th, alpha=alpha), x, g)
    assert out.sum() > 50 and torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# SSA end to end


def ssa_by_hand(attn: SSA, x: torch.Tensor, train: bool) -> torch.Tensor:
    """Spikformer's SSA as the paper writes it: Q, K, V = LIF(BN(X W)); per head A = LIF_0.5(Q K^T V * 0.125);
    out = LIF(BN(A W_o + b_o))."""
    q, k, v = (lif_loop(batch_norm(linear(x, p.linear), p.bn, train)) for p in (attn.q, attn.k, attn.v))
    d = x.shape[-1] // attn.heads
    heads = []
    for h in range(attn.heads):
        qh, kh, vh = (t[..., h * d : (h + 1) * d] for t in (q, k, v))
        heads.append(qh @ kh.transpose(-2, -1) @ vh)
    a = lif_loop(torch.cat(heads, -1) * 0.125, v_th=0.5)
    return lif_loop(batch_norm(linear(a, attn.proj.linear), attn.proj.bn, train))


@pytest.mark.parametrize("order", ["auto", "kv_first", "qk_first"])
@pytest.mark.parametrize("train", [False, True])
def test_ssa_matches_the_paper_equation(order: str, train: bool) -> None:
    torch.manual_seed(0)
    attn = SSA(32, heads=2, qkv_bias=True, order=order).double().train(train)
    randomize_bn(attn)
    x = (torch.rand(4, 2, 48, 32, dtype=torch.float64) < 0.4).double()
    store: dict = {}
    hook = attn.attn_neuron.register_forward_hook(lambda m, a, o: store.update(a=o))
    with torch.no_grad():
        out = attn(x)
    hook.remove()
    assert store["a"].sum() > 50 and out.sum() > 50  # the attention neuron and the output both fire
    assert torch.equal(out, ssa_by_hand(attn, x, train))


# ---------------------------------------------------------------------------------------------------------
# energy: the Spikformer paper's formula on a model small enough to count by hand


class CountableNet(nn.Module):
    """Encoding conv 1x1 (real image) -> LIF -> conv 3x3 on spikes -> LIF -> linear on spikes, at T = 3."""

    T = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1, bias=False)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 3, bias=False)
        self.lif1, self.lif2 = LIF(), LIF()
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([1.0, 0.6]).view(2, 1, 1, 1))
            self.conv2.weight.copy_(torch.linspace(-0.2, 0.9, 36).view(2, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = self.T, x.shape[0]
        y = self.conv1(x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1))  # the same image at every step
        s1 = self.lif1(y.unflatten(0, (T, B)))
        s2 = self.lif2(self.conv2(s1.flatten(0, 1)).unflatten(0, (T, B)))
        return self.fc(s2.flatten(2)).mean(0)


def test_energy_formula_counted_by_hand() -> None:
    from spikformers.energy import measure

    model = CountableNet().eval()
    x = torch.tensor([[[[2.5, 1.5], [0.9, 3.0]]], [[[1.2, 0.0], [4.0, 2.2]]]])  # two 1 x 2 x 2 images
    T, B = model.T, x.shape[0]
    # the spikes by hand
    s1 = lif_loop(F.conv2d(x, model.conv1.weight.detach()).unsqueeze(0).expand(T, -1, -1, -1, -1))
    s2 = lif_loop(torch.stack([F.conv2d(s1[t], model.conv2.weight.detach(), padding=1) for t in range(T)]))
    assert 0 < s1.sum() < s1.numel() and 0 < s2.sum() < s2.numel()
    # FLOPs of one single-step forward of one image; the encoding conv sees a static image: computed once
    flops_conv1 = 2 * 2 * 1 * 2 * 1  # H W C_in C_out k^2
    flops_conv2 = 2 * 2 * 2 * 2 * 9
    flops_fc = 8 * 3
    # SOPs = firing rate of the layer's input * T * FLOPs, per image
    sops_conv2 = (s1.sum().item() / s1.numel()) * T * flops_conv2
    sops_fc = (s2.sum().item() / s2.numel()) * T * flops_fc
    assert sops_fc == pytest.approx(s2.sum().item() * 3 / B)  # each spike reaches 3 outputs
    energy_pj = 4.6 * flops_conv1 + 0.9 * (sops_conv2 + sops_fc)  # E_MAC * FLOPs(first) + E_AC * SOPs(rest)
    report = measure(model, x)
    assert report.energy_mj == pytest.approx(energy_pj * 1e-9, rel=1e-9)
    rows = {r.name: r for r in report.layers}
    assert rows["conv1"].macs == flops_conv1 and rows["conv1"].acs == 0
    assert rows["conv2"].sops == pytest.approx(sops_conv2) and rows["fc"].sops == pytest.approx(sops_fc)
    assert rows["conv2"].macs == rows["fc"].macs == 0


# ---------------------------------------------------------------------------------------------------------
# SpiLiFormer: the two-pass loss and what pass 2 trains


def test_spiliformer_loss_by_hand_and_pass_two_trains_the_stem() -> None:
    from spikformers.outputs import output_loss

    torch.manual_seed(0)
    model = create_model("spiliformer_2_64_cifar", img_size=8, in_chans=1, num_classes=10, T=2, heads=4, beta=0.7)
    short_training(model, 8)  # an untrained model's feedback changes nothing yet: both passes would be equal
    x, y = digits(8)
    x, y = x[1400:1432], y[1400:1432]
    runs: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    hooks = [model.stage3[-1].register_forward_hook(lambda m, a, o: runs.append(o)),
             model.stage3[0].register_forward_pre_hook(lambda m, a: inputs.append(a[0]))]  # fmt: skip
    out = model.train()(x)
    for h in hooks:
        h.remove()
    assert len(runs) == 2 and len(inputs) == 2  # the last stage ran twice
    # logits of each pass by hand: mean over tokens and T, Linear; cross-entropy as -log softmax of the label
    logits = [r.mean(2).mean(0) @ model.head.weight.T + model.head.bias for r in runs]
    ce = [(torch.logsumexp(lg, 1) - lg[torch.arange(len(y)), y]).mean() for lg in logits]
    assert not torch.allclose(ce[0], ce[1])
    expected = 0.3 * ce[0] + 0.7 * ce[1]
    torch.testing.assert_close(output_loss(out, F.cross_entropy, y), expected, atol=1e-6, rtol=1e-6)
    # pass 2's loss alone trains the stem: the last stage re-runs from the same, undetached input
    stem = model.patch_embed1.convs[0].conv.conv.weight
    (grad,) = torch.autograd.grad(ce[1], stem, retain_graph=True, allow_unused=True)
    assert grad is not None and grad.abs().sum() > 0
    assert inputs[1] is inputs[0] and inputs[1].requires_grad


# ---------------------------------------------------------------------------------------------------------
# evaluation does not depend on the batch size


def short_training(model: nn.Module, steps: int) -> None:
    """Adam steps on batches of 32 real 8 x 8 digits: weights and running statistics no longer the initial ones."""
    x, y = digits(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        b = torch.randint(0, 1400, (32,), generator=gen)
        out = model(x[b])
        loss = out.loss(F.cross_entropy, y[b]) if hasattr(out, "loss") else F.cross_entropy(out, y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()


def logits_in_batches(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


@pytest.mark.parametrize("name, steps", [("spikformer_1_32_cifar", 60), ("spiliformer_2_64_cifar", 40)])
def test_eval_logits_do_not_depend_on_batch_size(name: str, steps: int) -> None:
    """QKFormer's published tracker scored 78.73 % at batch 32 and 74.20 % at batch 1: nothing may leak across
    the samples of a batch in evaluation."""
    from torch.utils.data import DataLoader, TensorDataset

    from spikformers.train.engine import evaluate

    torch.manual_seed(0)
    model = create_model(name, img_size=8, in_chans=1, num_classes=10, T=2)
    short_training(model, steps)
    x, y = digits(8)
    x, y = x[1400:1464], y[1400:1464]
    model.eval()
    one, many = logits_in_batches(model, x, 1), logits_in_batches(model, x, 32)
    assert (one.argmax(1) == y).float().mean() > 0.3  # trained: well above chance (10 %)
    torch.testing.assert_close(one, many, atol=1e-4, rtol=1e-4)
    assert torch.equal(one.argmax(1), many.argmax(1))
    data = TensorDataset(x, y)
    acc1, _ = evaluate(model, DataLoader(data, batch_size=1), torch.device("cpu"))
    acc32, _ = evaluate(model, DataLoader(data, batch_size=32), torch.device("cpu"))
    assert acc1 == acc32 == 100.0 * (one.argmax(1) == y).float().mean().item()
    # a short training leaves many neurons nearly silent; batch norms that make every layer fire densely show
    # any coupling between the samples of a batch (membrane carried across samples, batch statistics)
    randomize_bn(model)
    one, many = logits_in_batches(model, x, 1), logits_in_batches(model, x, 32)
    assert one.std(0).mean() > 1e-2
    torch.testing.assert_close(one, many, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# mixup on event frames [T, B, C, H, W]: one pairing, one box (or one lambda) for every time step


@pytest.mark.parametrize("kind, mode", [("cutmix", "batch"), ("cutmix", "elem"), ("mixup", "batch")])
def test_mixup_on_event_frames_is_the_same_at_every_step(kind: str, mode: str) -> None:
    from timm.data import Mixup

    from spikformers.train.engine import _mixup_time_first

    T, B, C, H, W = 3, 4, 2, 8, 8
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(T, B, C, H, W, generator=gen) + 10 * torch.arange(T).view(T, 1, 1, 1, 1)  # each step distinct
    y = torch.tensor([1, 4, 6, 9])
    alpha = {"cutmix": 1.0 if kind == "cutmix" else 0.0, "mixup": 1.0 if kind == "mixup" else 0.0}
    mix = Mixup(mixup_alpha=alpha["mixup"], cutmix_alpha=alpha["cutmix"], prob=1.0, mode=mode, label_smoothing=0.0,
                num_classes=10)
    np.random.seed(3)  # timm draws lambda and the box from NumPy
    mixed, target = _mixup_time_first(mix, x.clone(), y)
    assert mixed.shape == x.shape
    partner = B - 1 - torch.arange(B)  # timm mixes sample b with sample B-1-b
    for b in range(B):
        own, other = x[:, b], x[:, partner[b]]
        lam = target[b, y[b]].item()  # weight of the sample's own label
        assert target[b, y[partner[b]]].item() == pytest.approx(1 - lam)
        if kind == "mixup":
            torch.testing.assert_close(mixed[:, b], lam * own + (1 - lam) * other)  # same lambda at every t
            continue
        box = (mixed[:, b] != own).any(1)  # [T, H, W]: where the partner's pixels were pasted
        assert all(torch.equal(box[t], box[0]) for t in range(T))  # one box for every time step
        inside = box[0].expand(T, C, H, W)
        assert torch.equal(mixed[:, b][inside], other[inside]) and torch.equal(mixed[:, b][~inside], own[~inside])
        assert lam == pytest.approx(1 - box[0].sum().item() / (H * W))  # the label weight is the box's area
    if kind == "cutmix":
        assert any(0 < (mixed[0, b] != x[0, b]).any(0).sum() < H * W for b in range(B))  # a real box was drawn


# ---------------------------------------------------------------------------------------------------------
# EMA of the weights, as the training step updates it


def test_ema_update_by_hand() -> None:
    from timm.utils import ModelEmaV3

    from spikformers.train.config import load_config
    from spikformers.train.engine import build_criterion, build_optimizer, train_step

    cfg = load_config(None, ["train.ema=true", "train.ema_decay=0.9", "optim.lr=1e-2"])
    torch.manual_seed(0)
    model = create_model("spikformer_1_32_cifar", img_size=8, in_chans=1, num_classes=10, T=2)
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay)  # as the training loop builds it
    opt, scaler = build_optimizer(model, cfg), torch.amp.GradScaler("cpu", enabled=False)
    criterion = build_criterion(cfg, False)
    x, y = digits(8)
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    # step 0: timm's first update (step 1) copies the weights (no average over a single point)
    train_step(model, model, x[:32], y[:32], opt, scaler, criterion, cfg, None, ema, step=0)
    for k in floats:
        assert torch.equal(ema.module.state_dict()[k], model.state_dict()[k]), k
    for step in (1, 2):
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        params_before = {k: v.clone() for k, v in model.state_dict().items()}
        train_step(model, model, x[32 * step : 32 * step + 32], y[32 * step : 32 * step + 32], opt, scaler,
                   criterion, cfg, None, ema, step=step)
        now = model.state_dict()
        moved = 0
        for k in floats:
            expected = 0.9 * before[k] + 0.1 * now[k]  # ema = decay * ema + (1 - decay) * param
            torch.testing.assert_close(ema.module.state_dict()[k], expected, atol=1e-6, rtol=1e-6)
            moved += not torch.equal(now[k], params_before[k])
        assert moved > 10  # the step changed the weights and buffers that the average follows


# ---------------------------------------------------------------------------------------------------------
# the event-frame cache: parallel and serial builds give the same frames, the frames the events give by hand


def write_recordings(folder: Path, n: int = 6) -> list[tuple[Path, tuple[list, list, list, list]]]:
    """``n`` N-MNIST-style ATIS files of random events (34 x 34, increasing timestamps), with their events."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        m = int(rng.integers(3, 400))
        ev = (rng.integers(0, 34, m), rng.integers(0, 34, m), rng.integers(0, 2, m),
              np.sort(rng.integers(0, 2**23 - 1, m)))
        path = folder / f"rec{i}.bin"
        path.write_bytes(atis_encode(*ev))
        out.append((path, tuple(a.tolist() for a in ev)))
    return out


def test_parallel_and_serial_frame_cache_give_the_frames_counted_by_hand(tmp_path: Path) -> None:
    from spikformers.data.events.cache import CacheTask, FrameCache, build_frame_cache
    from spikformers.data.events.readers import read_atis_bin

    recs = write_recordings(tmp_path)
    T, size = 4, (34, 34)
    x, y, p, t = recs[0][1]
    windows = [(0, t[len(t) // 2]), (t[len(t) // 2], 2**23)]  # one file cut into two samples by time

    def tasks() -> list[CacheTask]:
        whole = [CacheTask(str(path), read_atis_bin, [path.stem], {"size": size}) for path, _ in recs[1:]]
        cut = CacheTask(str(recs[0][0]), read_atis_bin, ["cut_a", "cut_b"], {"size": size}, windows)
        return [cut, *whole]

    serial = FrameCache(tmp_path / "serial", "nmnist", T, "number", size)
    parallel = FrameCache(tmp_path / "parallel", "nmnist", T, "number", size)
    assert build_frame_cache(serial, tasks(), workers=0, progress=False) == 7
    assert build_frame_cache(parallel, tasks(), workers=2, progress=False) == 7
    expected = {path.stem: frames_by_number(ev[0], ev[1], ev[2], T, *size) for path, ev in recs[1:]}
    for key, (a, b) in zip(("cut_a", "cut_b"), windows):
        keep = [i for i in range(len(t)) if a <= t[i] < b]
        expected[key] = frames_by_number([x[i] for i in keep], [y[i] for i in keep], [p[i] for i in keep], T, *size)
    for key, frames in expected.items():
        assert frames.sum() > 0
        np.testing.assert_array_equal(serial.load(key), frames)
        np.testing.assert_array_equal(parallel.load(key), frames)
    assert build_frame_cache(parallel, tasks(), workers=2, progress=False) == 0  # nothing left to convert
