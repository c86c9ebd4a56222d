"""Bad configuration and resume input: every range check names its key, broken YAML and overrides name the file
or the override, and a damaged or foreign resume state names the file and loses nothing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from spikformers.cli import main
from spikformers.train.config import ConfigError, load_config

# (key, bad values, good values at or next to the boundary, other overrides the key needs)
RANGES = [
    ("data.batch_size", [0, -4], [1], []),
    ("optim.epochs", [0], [1], []),
    ("optim.lr", [0, -1e-3], [1e-12], []),
    ("optim.warmup_epochs", [-1], [0], []),
    ("optim.cooldown_epochs", [-1], [0], []),
    ("optim.label_smoothing", [-0.1, 1.0], [0.0, 0.99], []),
    ("optim.drop_path", [-0.1, 1.0], [0.0, 0.99], []),
    ("mixup.prob", [-0.1, 1.01], [0.0, 1.0], []),
    ("train.ema_decay", [0.0, 1.0], [1e-6, 0.999999], []),
    ("train.beta", [-0.1, 1.1], [0.0, 1.0], []),
    ("train.beta_end", [-0.1, 1.1], [0.0, 1.0], ["train.beta=0.5"]),
    ("train.save_every", [0], [1], []),
]
BAD = [pytest.param(key, v, extra, id=f"{key}={v}") for key, bad, _, extra in RANGES for v in bad]
GOOD = [pytest.param(key, v, extra, id=f"{key}={v}") for key, _, good, extra in RANGES for v in good]


def value_of(cfg: object, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("key, value, extra", BAD)
def test_out_of_range_value_names_its_key(key: str, value: float, extra: list[str]) -> None:
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': must be "):
        load_config(None, [*extra, f"{key}={value}"])


@pytest.mark.parametrize("key, value, extra", GOOD)
def test_boundary_value_is_accepted(key: str, value: float, extra: list[str]) -> None:
    assert value_of(load_config(None, [*extra, f"{key}={value}"]), key) == value


def test_range_error_in_a_recipe_names_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  drop_path: 1.5\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(recipe))}: config key 'optim.drop_path': must be in"):
        load_config(recipe)


def test_settings_that_need_another_are_named() -> None:
    with pytest.raises(ConfigError, match="'train.beta_end' needs 'train.beta'"):
        load_config(None, ["train.beta_end=0.9"])
    with pytest.raises(ConfigError, match="'train.ema_eval' needs 'train.ema: true'"):
        load_config(None, ["train.ema_eval=true"])
    assert load_config(None, ["train.ema=true", "train.ema_eval=true"]).train.ema_eval


def test_an_old_word_in_a_recipe_loads_as_the_new_one_with_a_note(tmp_path: Path) -> None:
    """``neuron_backend: fused`` (the old second name of ``auto``) still loads, as ``auto``, and says so."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  neuron_backend: fused\n")
    with pytest.warns(FutureWarning, match="'train.neuron_backend': 'fused' is the old name of 'auto'"):
        assert load_config(recipe).train.neuron_backend == "auto"
    with pytest.warns(FutureWarning, match="write 'auto'"):
        assert load_config(None, ["train.neuron_backend=fused"]).train.neuron_backend == "auto"
    from spikformers.kernels import BACKENDS

    assert "fused" not in BACKENDS and load_config(None, ["train.neuron_backend=cpp"]).train.neuron_backend == "cpp"


@pytest.mark.parametrize("text, message", [
    ("model:\n  name: [spikformer_2_64_cifar\n", "not valid YAML"),
    ("optim: {lr: 1e-3\n", "not valid YAML"),
    ("- optim\n- data\n", "expected a mapping at the top level, got list"),
])  # fmt: skip
def test_invalid_yaml_file_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture, text: str,
                                          message: str) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(recipe))}: {message}"):
        load_config(recipe)
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spikformers train: error: {recipe}: {message}") and "Traceback" not in err


@pytest.mark.parametrize("item, message", [
    ("optim.lr", r"override 'optim.lr' is not of the form section.key=value"),
    ("optim.lr.max=1", r"override 'optim.lr.max=1': 'lr' is not a section"),
    ("model.kwargs={depth: [1", r"override 'model.kwargs=\{depth: \[1': .*not valid YAML"),
    ("seed.x=1", r"override 'seed.x=1': 'seed' is not a section"),
])  # fmt: skip
def test_malformed_override_names_the_override(tmp_path: Path, capsys: pytest.CaptureFixture, item: str,
                                               message: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\nseed: 3\n")
    with pytest.raises(ConfigError, match=message):
        load_config(recipe, [item])
    assert main(["train", "--config", str(recipe), "--set", item]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith("spikformers train: error: ")


# ---------------------------------------------------------------------------------------------------------
# resume from a damaged or foreign state


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a tiny Spikformer on 32 digits: a run folder with a real state.safetensors."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--model", "spikformer_1_32_cifar", "--T", "1", "--img-size", "8", "--epochs", "1",
                 "--batch-size", "16", "--out", str(out), "--no-progress", "--set", "data.limit_train=32",
                 "--set", "data.limit_test=16", "--set", "train.tensorboard=false",
                 "--set", "optim.warmup_epochs=0"]) == 0
    return out


def resume_fails(run: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    """Resume ``run`` expecting a one-line error; the state and the metrics must come out untouched."""
    before = {name: (run / name).read_bytes() for name in ("state.safetensors", "metrics.csv")}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikformers train: error: ") and "Traceback" not in err
    assert {name: (run / name).read_bytes() for name in before} == before
    return err


@pytest.mark.parametrize("keep", ["header", "half", "all_but_one"])
def test_truncated_state_names_the_file(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        keep: str) -> None:
    run = tmp_path / "cut"
    shutil.copytree(finished_run, run)
    data = (run / "state.safetensors").read_bytes()
    size = {"header": 20, "half": len(data) // 2, "all_but_one": len(data) - 1}[keep]
    (run / "state.safetensors").write_bytes(data[:size])
    err = resume_fails(run, capsys)
    assert f"{run / 'state.safetensors'} is not a readable training state" in err


def test_weights_file_in_place_of_a_state_names_the_file(finished_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from spikformers import create_model
    from spikformers.train.checkpoint import save_weights

    run = tmp_path / "foreign"
    shutil.copytree(finished_run, run)
    save_weights(create_model("spikformer_1_64_cifar", img_size=8, in_chans=1), run / "state.safetensors")
    err = resume_fails(run, capsys)
    assert f"{run / 'state.safetensors'}: not a spikformers training state" in err


def test_state_of_another_architecture_names_the_file(finished_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "other"
    shutil.copytree(finished_run, run)
    err = resume_fails(run, capsys, "--set", "model.name=spikformer_2_32_cifar")
    assert f"{run / 'state.safetensors'} does not fit spikformer_2_32_cifar" in err
    assert "missing keys" in err and "blocks.1." in err
