"""Energy counter: hand-counted operations on tiny hand-set models, the all-ones upper bound, operand types on
real activations, an independent FLOP count of Spikformer-8-768, and the ``energy`` / ``compare`` commands."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spikformers import create_model
from spikformers.attention import SSA
from spikformers.cli import main
from spikformers.energy import count_ops, measure, operand_kind, upper_bound_mj


class TinyLinear(nn.Module):
    """One linear layer fed ``[T, B, N, C]`` spikes as given."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.T = T
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_operand_kinds() -> None:
    assert operand_kind(torch.tensor([0.0, 1.0, 1.0])) == "binary"
    assert operand_kind(torch.tensor([0.0, -1.0, 1.0])) == "ternary"
    assert operand_kind(torch.tensor([0.0, 2.0, 3.0])) == "integer"
    assert operand_kind(torch.tensor([0.0, 0.5])) == "real"
    assert operand_kind(torch.tensor([True, False])) == "binary"


def test_linear_on_known_spikes_T2() -> None:
    T, B, N = 2, 1, 2
    model = TinyLinear(T)
    x = torch.zeros(T, B, N, 4)
    x[0, 0, 0] = torch.tensor([1.0, 0, 1, 0])  # 2 spikes
    x[0, 0, 1] = torch.tensor([0.0, 0, 0, 1])  # 1
    x[1, 0, 0] = torch.tensor([1.0, 1, 1, 1])  # 4
    x[1, 0, 1] = torch.tensor([0.0, 0, 0, 0])  # 0   -> 7 spikes of 16
    layers, images = count_ops(model, x, T=T, batch=B)
    fc = layers["fc"]
    assert images == 1 and fc.steps == 2
    assert fc.flops == N * 4 * 3  # 24 multiply-accumulates per single-step forward
    assert fc.firing_rate == pytest.approx(7 / 16)
    assert fc.sops == 7 * 3  # each input spike reaches 3 outputs: 21 ACs
    assert fc.sops == pytest.approx(fc.firing_rate * T * fc.flops)
    assert fc.macs == 0 and fc.operand_types == "binary x real(w)"
    report = measure(model, x, T=T, batch=B)
    assert report.energy_mj == pytest.approx(21 * 0.9 * 1e-9)  # 0.9 pJ per AC (45 nm), in mJ


def test_per_image_with_batches() -> None:
    """Two images in one batch, and the same two as two batches, give the per-image mean."""
    model = TinyLinear(1)
    a = torch.tensor([[[1.0, 1, 0, 0]]])  # [B=1, N=1, C]: 2 spikes
    b = torch.tensor([[[1.0, 1, 1, 1]]])  # 4 spikes
    both = torch.cat([a, b]).unsqueeze(0)  # [T=1, B=2, N=1, C]
    one, _ = count_ops(model, both, T=1, batch=2)
    two, images = count_ops(model, [a.unsqueeze(0), b.unsqueeze(0)], T=1, batch=1)
    assert images == 2
    assert one["fc"].sops == two["fc"].sops == (2 + 4) * 3 / 2
    assert one["fc"].flops == two["fc"].flops == 12


class FixedQKV(nn.Module):
    """SSA whose Q, K, V spikes are set by hand (forward hooks replace the projections' outputs)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: str) -> None:
        super().__init__()
        self.T = q.shape[0]
        self.attn = SSA(q.shape[-1], heads=1, order=order)
        for proj, value in ((self.attn.q, q), (self.attn.k, k), (self.attn.v, v)):
            proj.register_forward_hook(lambda m, a, out, value=value: value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def _qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # T=2, B=1, N=3 tokens, d=2 channels, one head
    q = torch.tensor([[[[1.0, 0], [1, 1], [0, 0]]], [[[0.0, 1], [0, 0], [0, 0]]]])
    k = torch.tensor([[[[1.0, 1], [0, 1], [0, 0]]], [[[1.0, 0], [1, 0], [1, 1]]]])
    v = torch.tensor([[[[0.0, 1], [1, 1], [1, 0]]], [[[1.0, 1], [0, 0], [0, 1]]]])
    return q, k, v


def test_ssa_known_qkv_kv_first() -> None:
    q, k, v = _qkv()
    model = FixedQKV(q, k, v, "kv_first")
    layers, _ = count_ops(model, torch.zeros(2, 1, 3, 2), T=2, batch=1)
    kv, qm = layers["attn.matmul1"], layers["attn.matmul2"]
    # K^T V: d x N times N x d: 2*3*2 = 12 MACs per step. Nonzero pairs: per token n, nnz(K[n]) * nnz(V[n])
    # t=0: 2*1 + 1*2 + 0*1 = 4;  t=1: 1*2 + 1*0 + 2*1 = 4   -> 8
    assert kv.flops == 12 and kv.steps == 2 and kv.sops == 8
    assert kv.operand_types == "binary x binary"
    # M = K^T V: t=0 [[0,1],[1,2]], t=1 [[1,2],[0,1]]; Q M: N x d times d x d = 12 MACs per step.
    # pairs: per inner index c, nnz(Q[:, c]) * nnz(M[c, :]); t=0: 2*1 + 1*2 = 4; t=1: 0*2 + 1*1 = 1 -> 5
    assert qm.flops == 12 and qm.sops == 5
    assert qm.operand_types == "binary x integer"
    assert qm.firing_rate == pytest.approx(5 / 24)
    assert kv.macs == qm.macs == 0


def test_ssa_known_qkv_qk_first() -> None:
    q, k, v = _qkv()
    model = FixedQKV(q, k, v, "qk_first")
    layers, _ = count_ops(model, torch.zeros(2, 1, 3, 2), T=2, batch=1)
    qk, av = layers["attn.matmul1"], layers["attn.matmul2"]
    # Q K^T: N x d times d x N = 18 per step; pairs per channel c: nnz(Q[:, c]) * nnz(K[:, c])
    # t=0: 2*1 + 1*2 = 4; t=1: 0*3 + 1*1 = 1 -> 5
    assert qk.flops == 18 and qk.sops == 5
    # A = Q K^T: t=0 [[1,0,0],[2,1,0],[0,0,0]], t=1 [[0,0,1],[0,0,0],[0,0,0]]
    # A V pairs per token m: nnz(A[:, m]) * nnz(V[m]); t=0: 2*1 + 1*2 + 0 = 4; t=1: 0 + 0 + 1*1 = 1 -> 5
    assert av.flops == 18 and av.sops == 5
    assert av.operand_types == "integer x binary"


def _small(attn: str = "ssa", **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model("spikformer_1_32_cifar", img_size=16, in_chans=1, attn=attn, **kw).eval()


def test_all_ones_firing_gives_upper_bound(digits_batch) -> None:
    T = 3
    model = _small(T=T)
    x = digits_batch[0][:4]
    r = measure(model, x, all_ones=True)
    first = r.layers[0]
    assert first.name == "embed.stages.0.conv.conv" and first.operands == "real x real(w)"
    assert first.macs == first.flops  # a static image is encoded once
    rest = [row for row in r.layers[1:]]
    assert all(row.firing_rate == 1.0 and row.macs == 0 for row in rest)
    head = [row for row in rest if row.name == "head"]
    assert head[0].steps == 1  # the head sees the time mean, once per image
    per_step = sum(row.flops for row in rest if row.name != "head")
    expected = (4.6 * first.flops + 0.9 * (T * per_step + head[0].flops)) * 1e-9  # the paper's pJ per MAC / AC
    assert r.energy_mj == pytest.approx(expected, rel=1e-12)
    assert r.energy_mj == pytest.approx(upper_bound_mj(r), rel=1e-12)
    real = measure(model, x)
    assert 0 < real.energy_mj < r.energy_mj


def test_flops_do_not_depend_on_T_and_sops_do(digits_batch) -> None:
    x = digits_batch[0][:2]
    r1, r4 = measure(_small(T=1), x), measure(_small(T=4), x)
    assert [a.flops for a in r1.layers] == [b.flops for b in r4.layers]
    assert r4.total_sops > r1.total_sops


def test_every_mechanism_counts(digits_batch) -> None:
    x = digits_batch[0][:4]
    ops = {}
    from spikformers.energy.cli import calibrate_bn

    for attn in ("ssa", "psa", "a2os2a", "sdsa"):
        model = _small(attn)
        calibrate_bn(model, [digits_batch[0]])  # centred pre-activations, so V's ternary neuron emits -1 too
        r = measure(model, x)
        ops[attn] = {row.name: row for row in r.layers if ".attn." in row.name}
        assert r.energy_mj > 0
    # A2OS2A: K^T V is real x ternary, Q (K^T V) binary x real: additions only, no MAC
    a2 = ops["a2os2a"]
    assert a2["blocks.0.attn.matmul1"].operands == "real x ternary"
    assert a2["blocks.0.attn.matmul2"].operands == "binary x real"
    assert sum(row.macs for row in a2.values()) == 0
    # SDSA: masks and a token sum, no matrix product
    assert not any("matmul" in n for n in ops["sdsa"]) and "blocks.0.attn.mul1" in ops["sdsa"]
    assert "blocks.0.attn.sum1" in ops["sdsa"]


def test_psa_structured_halves_attention_flops(digits_batch) -> None:
    x = digits_batch[0][:2]
    ssa = _small("ssa", attn_kwargs={"order": "kv_first"})
    psa = _small("psa", attn_kwargs={"mode": "structured", "ratio": 0.5})
    psa.load_state_dict(ssa.state_dict())

    def attn_flops(m: nn.Module) -> float:
        return sum(r.flops for r in measure(m, x).layers if "matmul" in r.name)

    assert attn_flops(psa) / attn_flops(ssa) == pytest.approx(0.5, abs=0.02)


def test_spiliformer_two_passes_and_feedback_path(digits_batch) -> None:
    torch.manual_seed(0)
    model = create_model("spiliformer_2_64_cifar", img_size=16, in_chans=1, num_classes=10).eval()
    r = measure(model, digits_batch[0][:2])
    names = [row.name for row in r.layers]
    assert "stage3.0.attn.linear1" in names  # F W_v of the second pass, a functional call inside FB-LiDiff
    q1 = next(row for row in r.layers if row.name == "stage3.0.attn.q.linear")
    assert q1.flops == 2 * 16 * 64 * 64  # both passes: 2 x (N=16 tokens x 64 x 64)


def test_spikformer_8_768_flops_match_flop_counter() -> None:
    """Independent count: torch's FlopCounterMode (2 FLOPs per MAC) on the same forward, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model("spikformer_8_768", T=1).eval()
        x = torch.rand(1, 3, 224, 224)
    with FlopCounterMode(display=False) as fc:
        r = measure(model, x)
    reference = fc.get_total_flops() / 2
    assert abs(r.total_flops - reference) / reference < 0.01
    assert r.total_flops == pytest.approx(18.743e9, rel=1e-3)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> list:
    """Two run folders of tiny digits models (weights untrained, BN statistics from digits)."""
    from spikformers.data import Digits
    from spikformers.energy.cli import calibrate_bn
    from spikformers.train.checkpoint import save_model_config, save_weights
    from spikformers.train.config import TrainConfig, dump_config

    x = Digits("train", img_size=16, augment=False).tensors[0][:64]
    runs = []
    for i, attn in enumerate(("ssa", "sdsa")):
        out = tmp_path_factory.mktemp(f"run_{attn}")
        torch.manual_seed(i)
        model = create_model("spikformer_1_32_cifar", img_size=16, in_chans=1, num_classes=10, T=2, attn=attn)
        calibrate_bn(model, [x])
        cfg = TrainConfig()
        cfg.model.name, cfg.out = "spikformer_1_32_cifar", str(out)
        dump_config(cfg, out / "config.yaml")
        save_model_config(model, out)
        save_weights(model, out / "last.safetensors")
        (out / "summary.json").write_text(json.dumps({"architecture": "spikformer_1_32_cifar", "test_acc": 50.0 + i,
                                                      "best_acc": 60.0, "params": 1234}))
        (out / "metrics.csv").write_text(
            "epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds\n"
            "1,0.001,2.0,20.0,1.9,25.0,100,1.0\n2,0.0005,1.5,45.0,1.4,50.0,110,2.0\n")
        runs.append(out)
    return runs


def test_energy_command_checkpoint_json(tiny_runs, tmp_path, capsys) -> None:
    path = tmp_path / "e.json"
    assert main(["energy", "--checkpoint", str(tiny_runs[0]), "--data", "digits", "--images", "8",
                 "--batch-size", "3", "--json", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "J per image" in lines[-1] and "SOPs" in lines[-1] and "8 images" in lines[-1]
    doc = json.loads(path.read_text())
    for key in ("total_flops", "total_sops", "total_macs", "total_acs", "energy_mj", "layers"):
        assert key in doc
    for key in ("name", "flops", "firing_rate", "sops", "energy_mj"):
        assert key in doc["layers"][0]
    assert doc["energy_mj"] == pytest.approx(sum(row["energy_mj"] for row in doc["layers"]))
    assert doc["images"] == 8
    # a tiny model's energy (under 0.001 mJ) is shown in nJ with three decimals, in the table, the parts and the
    # last line; not in mJ with five decimals
    assert 1e-6 <= doc["energy_mj"] < 1e-3
    assert f"{doc['energy_mj'] * 1e6:.3f} nJ per image" in lines[-1]
    table = "\n".join(lines)
    assert "energy nJ" in lines[0] and "energy by part (nJ)" in table and "mJ" not in table


def test_energy_command_model_several_T(capsys) -> None:
    assert main(["energy", "--model", "spikformer_1_32_cifar", "--img-size", "16", "--T", "1", "2",
                 "--images", "2", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("energy:") and "T=2" in out[-1]
    assert any(line.startswith("T=  1") for line in out)


def test_compare_command(tiny_runs, capsys) -> None:
    assert main(["compare", *map(str, tiny_runs), "--images", "8", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "SOPs" in out[0] and "energy nJ" in out[0] and "nJ per image" in out[-1]
    assert any("50.00" in line and "ssa" in line for line in out)
    assert any("51.00" in line and "sdsa" in line for line in out)
    assert out[-1].startswith("lowest energy:")


def test_event_driven_linears_do_not_change_the_count(digits_batch) -> None:
    """The counter watches F.linear; the event-driven CPU linears must step aside while it runs."""
    from spikformers.kernels import kernel_config

    x = digits_batch[0][:2]
    model = _small(T=4)
    with kernel_config(event_driven=True):
        on = measure(model, x)
    with kernel_config(event_driven=False):
        off = measure(model, x)
    assert [a.sops for a in on.layers] == [b.sops for b in off.layers]
    assert [a.flops for a in on.layers] == [b.flops for b in off.layers] and on.total_sops > 0
