"""User errors end in one clear line per problem and exit code 2, never a traceback: device strings, numeric
ranges (config and create_model), files and names that are not there, and --download without a network."""

from __future__ import annotations

import argparse
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from spikformers import create_model
from spikformers.cli import build_parser, main
from spikformers.train.engine import effective_amp, resolve_device

TINY = ["--model", "spikformer_1_64_cifar", "--T", "1", "--img-size", "8", "--epochs", "1", "--batch-size", "16",
        "--no-progress", "--set", "data.limit_train=16", "--set", "data.limit_test=16",
        "--set", "optim.warmup_epochs=0", "--set", "train.tensorboard=false"]


def _errors(capsys: pytest.CaptureFixture, command: str) -> list[str]:
    """The error lines of the last command (each must carry the command's prefix)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith(f"spikformers {command}: error: ") or line.startswith("  ")
                         for line in lines), lines
    return [line.removeprefix(f"spikformers {command}: error: ") for line in lines]


# ----------------------------------------------------------------------------------------------- devices
def test_device_strings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for bad in ("gpu", "tpu", "cuda:x", "mps", "cuda:-1", ""):
        with pytest.raises(ValueError, match=r"^unknown device .*; expected one of: auto, cpu, cuda, cuda:N$"):
            resolve_device(bad)
    assert resolve_device("cpu") == torch.device("cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError) as e:
            resolve_device(name)
        msg = str(e.value)
        assert "\n" not in msg and f"device {name!r}: no CUDA GPU is usable here" in msg
        assert f"torch {torch.__version__}" in msg and ("built with" in msg or "built without CUDA" in msg)
        assert "CUDA device(s) found" in msg
    assert resolve_device("auto") == torch.device("cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"'cuda:2': 2 CUDA device\(s\) found, cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.undo()

    # every command that takes --device refuses before doing anything else
    for argv in (["train", *TINY, "--device", "gpu", "--out", str(tmp_path / "run")],
                 ["eval", "--checkpoint", str(tmp_path), "--device", "tpu"],
                 ["energy", "--model", "spikformer_1_64_cifar", "--device", "cuda:x"]):
        assert main(argv) == 2
        (line,) = _errors(capsys, argv[0])
        assert line.startswith("unknown device") and "expected one of: auto, cpu, cuda, cuda:N" in line
    assert not (tmp_path / "run").exists()


def test_fp16_recipe_runs_as_float32_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert effective_amp("fp16", torch.device("cuda")) == "fp16"
    assert effective_amp("fp16", torch.device("cpu")) == "none"
    assert effective_amp("bf16", torch.device("cpu")) == "bf16"
    assert main(["train", *TINY, "--amp", "fp16", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train.amp fp16 needs CUDA; on cpu this run computes in float32 (amp none)" in out
    assert "--amp bf16" in out and (tmp_path / "last.safetensors").is_file()
    assert "amp: fp16" in (tmp_path / "config.yaml").read_text()  # the recipe as written; the rule is per device


# ----------------------------------------------------------------------------------------------- ranges
def test_time_steps_and_limits_are_range_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--T", "0", "--set", "data.limit_train=-5", "--set", "data.limit_test=0",
                 "--set", "data.workers=-1", "--set", "data.eval_batch_size=0", "--epochs", "0",
                 "--out", str(out)]) == 2
    lines = _errors(capsys, "train")
    keys = [re.match(r"config key '([\w.]+)'", line)[1] for line in lines]  # type: ignore[index]
    assert keys == ["model.T", "data.eval_batch_size", "data.workers", "data.limit_train", "data.limit_test",
                    "optim.epochs"]
    assert "got -5" in lines[keys.index("data.limit_train")] and not out.exists()

    # the image size must fit the model's patch layout: named by its key, with the sizes that fit
    assert main(["train", *TINY, "--img-size", "10", "--out", str(out)]) == 2
    (line,) = _errors(capsys, "train")
    assert line.startswith("config key 'data.img_size'") and "multiple of 4, e.g. 8 or 12" in line
    assert main(["train", *TINY, "--set", "model.kwargs.heads=3", "--out", str(out)]) == 2
    (line,) = _errors(capsys, "train")
    assert line.startswith("config key 'model.kwargs.heads'") and "heads must divide 64" in line
    assert not out.exists()


def test_create_model_names_the_bad_argument() -> None:
    from spikformers.registry import list_models, model_problems

    with pytest.raises(ValueError, match=r"^create_model\('spikformer_2_64_cifar'\): T must be an integer >= 1, "
                                         r"got -2$"):
        create_model("spikformer_2_64_cifar", T=-2)
    with pytest.raises(ValueError) as e:
        create_model("spikformer_2_64_cifar", img_size=0, num_classes=0, in_chans=-1)
    assert [line.split(": ")[1].split()[0] for line in str(e.value).splitlines()] == ["img_size", "in_chans",
                                                                                      "num_classes"]
    with pytest.raises(ValueError, match="img_size 30 is not divisible by 4.*e.g. 28 or 32"):
        create_model("spikformer_2_64_cifar", img_size=30)
    with pytest.raises(ValueError, match=r"heads=7 does not divide the stage widths \[96, 192, 384\]"):
        create_model("spiliformer_4_384_cifar", heads=7)
    with pytest.raises(ValueError, match=r"dim 60 is not divisible by 8"):
        create_model("spikformer_2_60_cifar")
    with pytest.raises(ValueError, match=r"attn_v_th'\] \(a firing threshold\) must be > 0"):
        create_model("spikformer_2_64_cifar", attn_kwargs={"attn_v_th": 0.0})
    with pytest.raises(ValueError, match="LIF v_th must be > v_reset"):
        from spikformers.neurons import LIF

        LIF(v_th=-1.0)
    assert [name for name in list_models() if model_problems(name)] == []  # every published model passes


# ----------------------------------------------------------------------------------------------- audit
def test_user_errors_end_in_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim: [1\n")
    nowhere = tmp_path / "nowhere"
    cases = [
        (["eval", "--checkpoint", str(nowhere)], f"--checkpoint {nowhere}: no such run folder"),
        (["train", "--set", "foo"], "override 'foo' is not of the form section.key=value"),
        (["train", "--set", "data.batch_size=abc"], "config key 'data.batch_size': expected int, got str 'abc'"),
        (["train", "--set", "optim.lr=[1"], "override 'optim.lr=[1': the value is not valid YAML"),
        (["train", "--config", str(bad_yaml)], f"{bad_yaml}: not valid YAML at line 2, column 1"),
        (["train", "--config", str(tmp_path / "none.yaml")], f"config file {tmp_path / 'none.yaml'} not found"),
        (["train", "--config", str(tmp_path)], f"config file {tmp_path} is a folder"),
        (["train", "--model", "vit_1_2"], "unknown model 'vit_1_2'"),
        (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")], "cifar10: no dataset under"),
        (["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "nowhere")],
         f"dataset 'imagefolder': no folder {tmp_path / 'nowhere' / 'train'}"),
        (["train", "--resume", str(tmp_path / "nowhere")], f"--resume {tmp_path / 'nowhere'}: no such run folder"),
        (["models", "nosuch*"], "no published model matches 'nosuch*'"),
        (["energy", "--model", "spikformer_1_64_cifar", "--images", "0"], "--images must be a positive number"),
        (["eval", "--checkpoint", str(tmp_path), "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        lines = _errors(capsys, argv[0])
        assert lines[0].startswith(message), (argv, lines)


def test_version_and_every_option_has_help(capsys: pytest.CaptureFixture) -> None:
    import tomllib

    import spikformers

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    version = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"spikformers {version}" == f"spikformers {spikformers.__version__}"

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "eval", "models", "energy", "plot", "compare", "check-data", "doctor", "convert"} <= set(
        sub.choices)
    for command, parser in sub.choices.items():  # every command, including those added since
        missing = [a.dest for a in parser._actions if not a.help]
        assert missing == [], (command, missing)


# ----------------------------------------------------------------------------------------------- download
def test_download_without_network_names_url_and_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    asked: list[str] = []

    def offline(url, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "cifar"
    assert main(["train", *TINY, "--dataset", "cifar10", "--data-dir", str(root), "--download",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert asked and "Traceback" not in err
    assert "cifar10: could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    assert "Temporary failure in name resolution" in err
    assert f"{root / 'cifar-10-batches-py'}/{{data_batch_1..5, test_batch, batches.meta}}" in err
    assert f"{root / 'cifar-10-python.tar.gz'}" in err and not (tmp_path / "run").exists()

    # the event datasets' own downloader says the same
    from spikformers.data.events import datasets as ds_mod

    with pytest.raises(FileNotFoundError) as e:
        ds_mod.NMNIST(tmp_path / "nmnist", "train", T=2, download=True, progress=False)
    msg = str(e.value)
    assert "NMNIST: could not download http" in msg and "name resolution" in msg and "Expected" in msg
    assert sys.modules["urllib.request"].urlopen is offline  # nothing reached the network
