"""SpiLiFormer: FF-/FB-LiDiff on real activations, feedback generator, two-pass outputs, HST counts, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from oracles import batch_norm, lif_loop, linear, randomize_bn
from spikformers import count_parameters, create_model, list_models, model_config
from spikformers.attention import ATTENTIONS, FBLiDiff, FFLiDiff, create_attention
from spikformers.models.hst import FeedbackGenerator, SpiLiFormer, stage_depths
from spikformers.neurons import LIF
from spikformers.outputs import WeightedLogits, output_loss

SMALL = "spiliformer_2_64_cifar"
SMALL_KW = dict(img_size=8, in_chans=1, num_classes=10, T=2, heads=4)


def small_model(seed: int = 0, **kw) -> SpiLiFormer:
    torch.manual_seed(seed)
    return create_model(SMALL, **{**SMALL_KW, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: intra-op threads only add overhead, and spin badly when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Real 8x8 digits scaled to [0, 1], at the small models' input size: ``[1797, 1, 8, 8]``, labels ``[1797]``."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=SMALL_KW["img_size"], mode="bilinear", align_corners=False), torch.tensor(d.target)


@pytest.fixture(scope="module")
def trained(digits) -> tuple[SpiLiFormer, float]:
    """The small model after a short schedule on 1200 digits, and its accuracy on 397 held-out ones."""
    x, y = digits
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1200], perm[1400:]
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    for _ in range(3):
        model.train()
        for i in range(0, len(train), 50):
            b = train[i : i + 50]
            loss = output_loss(model(x[b]), F.cross_entropy, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    return model, acc


def calibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every batch norm's running statistics from one training-mode pass over ``x``, then switch to eval.

    A fresh model's running statistics (mean 0, variance 1) make almost no neuron fire in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one pass, exactly that pass's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def capture(module: torch.nn.Module, store: dict, key: str, inputs: bool = False):
    """Forward hook keeping ``module``'s output (or first input) under ``store[key]``."""

    def hook(mod, args, out):
        store[key] = (args[0] if inputs else out).detach().clone()

    return module.register_forward_hook(hook)


# ---------------------------------------------------------------------------------------------------------
# parameter counts (docs/models.md, "Parameter counts")


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("spiliformer_4_384_cifar", {}, 7_038_100),
        ("spiliformer_4_384_cifar", {"num_classes": 10}, 7_003_450),
        ("spiliformer_4_384_cifar", {"official_quirks": True}, 7_038_100),
        ("spiliformer_2_256_dvs", {}, 1_570_698),
        ("spiliformer_2_256_dvs", {"doubled_kv": True, "decoder_norm": "none"}, 1_702_282),
        ("spiliformer_2_256_dvs", {"decoder_norm": "none"}, 1_570_186),
        ("spiliformer_2_256_dvs", {"num_classes": 101}, 1_594_085),
        ("qkformer_4_384_cifar", {}, 6_740_884),
    ],
)
def test_parameter_counts(name: str, overrides: dict, expected: int) -> None:
    assert count_parameters(create_model(name, **overrides)) == expected


def test_parameter_count_imagenet_10_768() -> None:
    model = create_model("spiliformer_10_768")
    assert count_parameters(model) == 69_103_816
    assert model.depths == (1, 2, 7) and model.widths == [192, 384, 768]
    # without prompts and decoders: QKFormer HST-10-768 (64.96 M)
    assert count_parameters(model) - count_parameters(model.feedback) == 64_962_760
    assert count_parameters(model.patch_embed1) == 520_032 and count_parameters(model.stage3) == 49_674_240


def test_attention_closed_forms() -> None:
    C = 96
    assert count_parameters(FFLiDiff(C, 8)) == 3 * C * C + 7 * C
    assert count_parameters(FFLiDiff(C, 8, q_split=False)) == 3 * C * C + 7 * C
    assert count_parameters(FBLiDiff(C, 8)) == 4 * C * C + 9 * C
    assert count_parameters(FBLiDiff(C, 8, doubled_kv=True)) == 6 * C * C + 13 * C


def test_registry_defaults_and_names() -> None:
    names = list_models("spiliformer_*")
    assert {"spiliformer_10_768", "spiliformer_4_384_cifar", "spiliformer_2_256_dvs"} <= set(names)
    assert {"ff_lidiff", "fb_lidiff"} <= set(ATTENTIONS)
    assert model_config("spiliformer_2_256_dvs")["beta"] == 0.5
    assert model_config("spiliformer_4_384_cifar")["beta"] == 0.8
    assert model_config("spiliformer_10_768")["beta"] == 0.8
    assert stage_depths("imagenet", 10) == (1, 2, 7) and stage_depths("cifar", 4) == (1, 1, 2)
    assert stage_depths("dvs", 2) == (1, 1) and stage_depths("cifar", 2) == (1, 0, 1)


# ---------------------------------------------------------------------------------------------------------
# FF-LiDiff on real activations


@pytest.mark.parametrize("q_split", [True, False])
def test_ff_lidiff_token_mask_from_real_q_spikes(digits, trained, q_split: bool) -> None:
    # stage 1: width 16, 4 heads of d = 4
    model = trained[0] if q_split else calibrated(small_model(q_split=False), digits[0][:64])
    attn = model.stage1[0].attn
    store: dict = {}
    hooks = [
        capture(attn.q, store, "q"), capture(attn.k, store, "k"),
        capture(attn.attn_neuron, store, "s", inputs=True), capture(attn.attn_neuron, store, "mask"),
        capture(attn.proj, store, "proj_in", inputs=True),
    ]  # fmt: skip
    with torch.no_grad():
        model(digits[0][:32])
    for h in hooks:
        h.remove()
    q, k, mask = store["q"], store["k"], store["mask"]
    T, B, N, C = q.shape
    heads, d = 4, C // 4
    assert set(q.unique().tolist()) <= {0.0, 1.0} and 0 < q.mean() < 1
    # recompute the per-head scores with explicit channel indices (docs/models.md, FF-LiDiff's Q split)
    s = torch.zeros(T, B, N, heads)
    for h in range(heads):
        if q_split:
            pos = q[..., h * d // 2 : (h + 1) * d // 2].sum(-1)
            neg = q[..., C // 2 + h * d // 2 : C // 2 + (h + 1) * d // 2].sum(-1)
            s[..., h] = pos - neg
        else:
            s[..., h] = q[..., h * d : (h + 1) * d].sum(-1)
    assert torch.equal(s, store["s"])
    expected_mask = LIF(v_th=0.5, backend="reference")(s)
    assert torch.equal(mask, expected_mask)
    assert 0 < mask.mean() < 1  # some tokens pass, some are inhibited
    gated = torch.cat([k[..., h * d : (h + 1) * d] * mask[..., h : h + 1] for h in range(heads)], dim=-1)
    assert torch.equal(store["proj_in"], gated)


def test_ff_lidiff_split_needs_even_head_size() -> None:
    with pytest.raises(ValueError, match="even head size"):
        FFLiDiff(24, 8)


# ---------------------------------------------------------------------------------------------------------
# FB-LiDiff and the feedback


def last_stage_inputs(model: SpiLiFormer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real input of the first FB block and the feedback it receives in pass 2."""
    store: dict = {}

    def pre(mod, args, kwargs):
        if "feedback" in kwargs:
            store["x"], store["fb"] = args[0].detach().clone(), kwargs["feedback"].detach().clone()

    h = model.stage3[0].attn.register_forward_pre_hook(pre, with_kwargs=True)
    with torch.no_grad():
        model(x)
    h.remove()
    return store["x"], store["fb"]


def test_fb_lidiff_feedback_shares_value_weights(digits, trained) -> None:
    model = trained[0]
    x, fb = last_stage_inputs(model, digits[0][:16])
    attn: FBLiDiff = model.stage3[0].attn
    assert fb.shape == x.shape and set(fb.unique().tolist()) <= {0.0, 1.0} and fb.sum() > 0
    W = attn.v.linear.weight
    store: dict = {}
    h = capture(attn.v.bn, store, "pre_bn", inputs=True)

    def value_grad(feedback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn.zero_grad()
        pre_bn = []
        hk = attn.v.bn.register_forward_hook(lambda m, a, o: pre_bn.append(a[0]) or a[0].retain_grad())
        attn(x, feedback=feedback).sum().backward()
        hk.remove()
        return W.grad.clone(), pre_bn[0].grad.reshape(-1, W.shape[0])

    grad_fb, g = value_grad(fb)
    # V's pre-BN input is X W_v^T + F W_v^T with the same W_v
    assert torch.allclose(store["pre_bn"], (x @ W.T + fb @ W.T).reshape(-1, W.shape[0]), atol=1e-5)
    # the gradient of W_v collects both contributions: G^T X + G^T F
    xs, fs = x.reshape(-1, x.shape[-1]), fb.reshape(-1, fb.shape[-1])
    from_input, from_feedback = g.T @ xs, g.T @ fs
    assert from_feedback.abs().sum() > 0
    assert torch.allclose(grad_fb, from_input + from_feedback, rtol=1e-4, atol=1e-5)
    grad_zero, _ = value_grad(torch.zeros_like(fb))
    assert not torch.allclose(grad_fb, grad_zero)
    h.remove()


def test_train_mode_weighted_logits(digits) -> None:
    model = small_model(beta=0.7)
    x = digits[0][:16]
    model.train()
    out = model(x)
    assert isinstance(out, WeightedLogits)
    assert out.weights == pytest.approx((0.3, 0.7)) and [p.shape for p in out.passes] == [(16, 10), (16, 10)]
    out.loss(F.cross_entropy, digits[1][:16]).backward()
    assert all(p.grad is not None for p in model.parameters())  # prompts and decoders train through pass 2


def test_eval_mode_reports_pass_two(digits, trained) -> None:
    """In evaluation the model returns plain logits: the head on the last stage's second (feedback) run."""
    model = trained[0]
    last: list[torch.Tensor] = []
    hook = model.stage3[-1].register_forward_hook(lambda m, a, o: last.append(o))
    with torch.no_grad():
        plain = model(digits[0][:32])
    hook.remove()
    assert isinstance(plain, torch.Tensor) and len(last) == 2
    # the head by hand: mean over tokens, mean over T, then x W^T + b
    head = [o.mean(2).mean(0) @ model.head.weight.T + model.head.bias for o in last]
    assert torch.allclose(plain, head[1], atol=1e-5) and not torch.allclose(plain, head[0], atol=1e-3)


def test_second_pass_differs_from_first(digits, trained) -> None:
    """Within one forward, pass 2 (with feedback) changes the last stage's value spikes and attention product."""
    model = trained[0]
    attn = model.stage3[0].attn
    seen: dict = {"v": [], "a": []}
    hooks = [attn.v.neuron.register_forward_hook(lambda m, a, o: seen["v"].append(o)),
             attn.attn_neuron.register_forward_hook(lambda m, a, o: seen["a"].append(a[0]))]  # fmt: skip
    with torch.no_grad():
        model(digits[0][:64])
    for h in hooks:
        h.remove()
    assert len(seen["v"]) == len(seen["a"]) == 2  # the last stage ran twice, the earlier stages once
    assert not torch.equal(seen["v"][0], seen["v"][1])
    assert not torch.equal(seen["a"][0], seen["a"][1])
    with torch.no_grad():
        logits1, logits2 = model.forward_passes(digits[0][:64])
    assert not torch.allclose(logits1, logits2)


def test_doubled_kv_head_pair_difference() -> None:
    torch.manual_seed(0)
    attn = FBLiDiff(32, heads=2, doubled_kv=True).eval()
    x = (torch.rand(2, 3, 10, 32) < 0.4).float()
    fb = (torch.rand(2, 3, 10, 32) < 0.3).float()
    store: dict = {}
    hooks = [capture(attn.q, store, "q"), capture(attn.k, store, "k"), capture(attn.v.neuron, store, "v"),
             capture(attn.attn_neuron, store, "a", inputs=True)]  # fmt: skip
    with torch.no_grad():
        attn(x, feedback=fb)
    for h in hooks:
        h.remove()
    q, k, v = store["q"], store["k"], store["v"]
    assert k.shape[-1] == v.shape[-1] == 64
    d = 16
    parts = []
    for i in range(2):
        ka, kb = k[..., 2 * i * d : (2 * i + 1) * d], k[..., (2 * i + 1) * d : (2 * i + 2) * d]
        va, vb = v[..., 2 * i * d : (2 * i + 1) * d], v[..., (2 * i + 1) * d : (2 * i + 2) * d]
        diff = ka.transpose(-2, -1) @ va - kb.transpose(-2, -1) @ vb
        parts.append(q[..., i * d : (i + 1) * d] @ diff * 0.125)
    assert torch.allclose(store["a"], torch.cat(parts, -1))


def test_fold_proj_lif_quirk_equals_clean_for_batch_one() -> None:
    torch.manual_seed(0)
    clean = FBLiDiff(32, 4).eval()
    quirk = FBLiDiff(32, 4, fold_proj_lif=True).eval()
    randomize_bn(clean)  # running statistics under which the projection's LIF fires
    quirk.load_state_dict(clean.state_dict())
    x = (torch.rand(4, 1, 10, 32) < 0.5).float()
    assert torch.equal(clean(x), quirk(x))
    # batch 3: the quirk's projection LIF runs one sequence over the folded axis in (t, b) order, the clean one over t
    x2 = (torch.rand(4, 3, 10, 32) < 0.5).float()
    store: dict = {}
    hook = capture(clean.proj, store, "y")
    with torch.no_grad():
        out_clean, out_quirk = clean(x2), quirk(x2)
    hook.remove()
    y = store["y"]  # BN(A W_o + b_o), [T, B, N, C]; both modules hold the same weights
    T, B = y.shape[:2]
    assert torch.equal(out_clean, lif_loop(y))
    assert torch.equal(out_quirk, lif_loop(y.reshape(T * B, 1, *y.shape[2:])).view_as(y))
    assert out_clean.sum() > 50 and not torch.equal(out_clean, out_quirk)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_feedback_generator_masks_and_chain(order: str) -> None:
    torch.manual_seed(0)
    gen = FeedbackGenerator(16, 3, order=order, norm="bn", aug=2.0).eval()
    x = torch.randint(0, 3, (2, 3, 5, 16)).float()
    out = gen(x)
    assert len(out) == 3 and all(o.shape == x.shape for o in out)
    cos1 = (x @ gen.prompt1) / (x.norm(dim=-1) * gen.prompt1.norm()).clamp_min(1e-8)
    cos2 = (x @ gen.prompt2) / (x.norm(dim=-1) * gen.prompt2.norm()).clamp_min(1e-8)
    z = 2.0 * (x * cos1.clamp(0, 1)[..., None] - x * cos2.clamp(0, 1)[..., None])
    dec = gen.decoders
    with torch.no_grad():
        if order == "forward":
            expected = [dec[0](z)]
            expected += [dec[1](expected[0])]
            expected += [dec[2](expected[1])]
        else:
            e2 = dec[2](z)
            e1 = dec[1](e2)
            expected = [dec[0](e1), e1, e2]
    for o, e in zip(out, expected):
        assert torch.allclose(o, e, atol=1e-5)


def test_decoder_variants_and_raw_reshape_quirk() -> None:
    assert count_parameters(FeedbackGenerator(8, 1, norm="none")) == 64 + 16
    assert count_parameters(FeedbackGenerator(8, 1, norm="bn_first")) == 64 + 16 + 16
    torch.manual_seed(0)
    clean = FeedbackGenerator(8, 1, order="reverse").eval()
    quirk = FeedbackGenerator(8, 1, order="reverse", raw_reshape=True).eval()
    quirk.load_state_dict(clean.state_dict())
    x = torch.randn(2, 3, 5, 8)
    c, q = clean(x)[0], quirk(x)[0]
    assert torch.equal(q, c.reshape(2, 3, 8, 5).transpose(2, 3))  # N x C block read as C x N
    m = create_model("spiliformer_2_256_dvs", official_quirks=True)
    assert m.feedback.raw_reshape and m.stage2[0].attn.fold_proj_lif
    assert not create_model(SMALL, **SMALL_KW).feedback.raw_reshape


# ---------------------------------------------------------------------------------------------------------
# model inputs


def test_static_and_time_first_inputs_agree(digits) -> None:
    model = calibrated(small_model(), digits[0][:64])
    x = digits[0][:8]
    with torch.no_grad():
        a = model(x)
        b = model(x.unsqueeze(0).expand(2, *x.shape))
    assert a.shape == (8, 10) and torch.equal(a, b)


def test_wrong_image_size_is_a_clear_error() -> None:
    model = small_model()
    with pytest.raises(ValueError, match=r"1 x 8 x 8.*\(1, 20, 20\)"):
        model(torch.rand(2, 1, 20, 20))
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        model(torch.rand(2, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="not divisible"):
        create_model("spiliformer_4_384_cifar", img_size=30)


def ff_lidiff_by_hand(ff: FFLiDiff, x: torch.Tensor) -> torch.Tensor:
    """FF-LiDiff (eval mode) as the paper states it, per head h of d channels: Q, K = LIF(BN(X W)); token score
    q+ - q- with q+/q- the sums of Q over head h's d/2-channel group in the first / second half of C; mask
    m = LIF_0.5(score); out = LIF(BN((m * K_h) W_o + b_o))."""
    q = lif_loop(batch_norm(linear(x, ff.q.linear), ff.q.bn))
    k = lif_loop(batch_norm(linear(x, ff.k.linear), ff.k.bn))
    C, heads = x.shape[-1], ff.heads
    d = C // heads
    gated = torch.zeros_like(k)
    for h in range(heads):
        pos = q[..., h * d // 2 : (h + 1) * d // 2].sum(-1)
        neg = q[..., C // 2 + h * d // 2 : C // 2 + (h + 1) * d // 2].sum(-1)
        mask = lif_loop(pos - neg, v_th=0.5)
        gated[..., h * d : (h + 1) * d] = k[..., h * d : (h + 1) * d] * mask[..., None]
    return lif_loop(batch_norm(linear(gated, ff.proj.linear), ff.proj.bn))


def fb_lidiff_by_hand(fb: FBLiDiff, x: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
    """FB-LiDiff (eval mode): Q, K = LIF(BN(X W)), V = LIF(BN(X W_v + F W_v)) with the same W_v;
    A = LIF_0.5(Q_h K_h^T V_h * 0.125) per head; out = LIF(BN(A W_o + b_o))."""
    q = lif_loop(batch_norm(linear(x, fb.q.linear), fb.q.bn))
    k = lif_loop(batch_norm(linear(x, fb.k.linear), fb.k.bn))
    v = lif_loop(batch_norm(linear(x, fb.v.linear) + linear(feedback, fb.v.linear), fb.v.bn))
    d = x.shape[-1] // fb.heads
    heads = [q[..., i * d : (i + 1) * d] @ k[..., i * d : (i + 1) * d].transpose(-2, -1) @ v[..., i * d : (i + 1) * d]
             for i in range(fb.heads)]
    a = lif_loop(torch.cat(heads, -1) * 0.125, v_th=0.5)
    return lif_loop(batch_norm(linear(a, fb.proj.linear), fb.proj.bn))


def test_lidiff_plugs_into_other_backbones(digits) -> None:
    torch.manual_seed(0)
    ff = create_attention("ff_lidiff", 32, 4).double().eval()
    fb = create_attention("fb_lidiff", 32, 4).double().eval()
    randomize_bn(ff), randomize_bn(fb, seed=1)
    x = (torch.rand(4, 3, 7, 32) < 0.5).double()
    feedback = (torch.rand(4, 3, 7, 32) < 0.3).double()
    with torch.no_grad():
        out_ff, out_fb, out_fb0 = ff(x), fb(x, feedback=feedback), fb(x)
    assert out_ff.sum() > 20 and torch.equal(out_ff, ff_lidiff_by_hand(ff, x))
    assert out_fb.sum() > 20 and torch.equal(out_fb, fb_lidiff_by_hand(fb, x, feedback))
    assert torch.equal(out_fb0, fb_lidiff_by_hand(fb, x, torch.zeros_like(x)))  # no feedback: SSA with binary V
    # inside a flat Spikformer on real digits: every block's attention is FF-LiDiff and computes the equation
    torch.manual_seed(0)
    flat = create_model("spikformer_2_64_cifar", attn="ff_lidiff", img_size=8, in_chans=1, T=2)
    calibrated(flat, digits[0][:64]).double()
    assert all(isinstance(b.attn, FFLiDiff) for b in flat.blocks)
    store: dict = {}
    hooks = [capture(flat.blocks[1].attn, store, "x", inputs=True), capture(flat.blocks[1].attn, store, "out")]
    with torch.no_grad():
        logits = flat(digits[0][:16].double())
    for h in hooks:
        h.remove()
    assert logits.shape == (16, 10) and store["out"].sum() > 20
    assert torch.equal(store["out"], ff_lidiff_by_hand(flat.blocks[1].attn, store["x"]))


# ---------------------------------------------------------------------------------------------------------
# it learns


def test_small_spiliformer_learns_digits(trained) -> None:
    """Three short epochs on 1200 real digits put the held-out accuracy far above chance (10%)."""
    assert trained[1] >= 0.75, trained[1]  # 0.92 / 0.91 / 0.87 with seeds 0 / 1 / 2
