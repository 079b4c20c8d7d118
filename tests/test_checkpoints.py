"""Checkpoint reading and architecture detection: safe loads, clear errors, strict matches.

The real checkpoints are not available offline; their layouts are (tests/data/arch/*.txt,
recorded from the public reference code). Detection is tested on meta tensors built from those
recordings, so a file with exactly those names and shapes is known to be recognised and to fit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustwrap.architectures import check_checkpoint, check_state, load_checkpoint
from robustwrap.checkpoints import CheckpointError, load_state_dict, read_checkpoint
from robustwrap.cli.app import app
from robustwrap.nets import DMWideResNet, WideResNet
from robustwrap.nets.cifar_resnet import CifarResNet18, pyautoattack_resnet18_weights

from .recordings import recorded_meta_state



@pytest.mark.parametrize(
    ("recording", "architecture", "kind", "parameters"),
    [
        ("guided_diffusion_256_uncond.txt", "guided-diffusion UNet", "diffusion", 552_814_086),
        ("score_sde_cifar10_ddpmpp_continuous.txt", "score-SDE DDPM++", "diffusion", 106_632_579),
        ("edm_cifar10_uncond_vp.txt", "EDM DDPM++ (SongUNet)", "diffusion", 55_733_891),
        ("robustbench_wrn_28_10.txt", "RobustBench WideResNet", "classifier", 36_479_194),
        ("robustbench_dm_wrn_70_16.txt", "RobustBench DM WideResNet", "classifier", 266_796_506),
    ],
)
def test_real_layouts_are_detected_and_fit_exactly(recording, architecture, kind, parameters):
    report = check_state(recorded_meta_state(recording))
    assert (report.architecture, report.kind) == (architecture, kind)
    assert report.ok, (report.missing[:3], report.unexpected[:3], report.mismatched[:3])
    assert report.parameters == parameters


def test_score_sde_training_checkpoint_reports_its_ema():
    state = recorded_meta_state("score_sde_cifar10_ddpmpp_continuous.txt")
    raw = {"model": {"module." + k: v for k, v in state.items()}, "ema": {"shadow_params": [torch.empty(1)] * 3}, "step": 8}
    report = check_state(raw)
    assert report.ok and any("EMA with 3 shadow tensors" in note for note in report.notes)


def test_a_layout_with_one_wrong_shape_is_named():
    state = recorded_meta_state("robustbench_wrn_28_10.txt")
    state["fc.weight"] = torch.empty(100, 640, device="meta")  # a CIFAR-100 head on a 10-class bias
    report = check_state(state)
    assert not report.ok and report.mismatched == ["fc.bias: file (10,), expected (100,)"]


def test_checkpoints_load_strictly_with_depth_and_width_from_their_tensors(tmp_path):
    for model, name in ((WideResNet(depth=10, widen_factor=2), "wrn.pt"), (DMWideResNet(depth=10, width=1, num_classes=100), "dm.pt")):
        torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / name)
        loaded, report = load_checkpoint(tmp_path / name)
        assert report.ok and type(loaded) is type(model)
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_pyautoattack_resnet18_is_recognised():
    report = check_checkpoint(pyautoattack_resnet18_weights())
    assert report.ok and report.architecture == "CIFAR ResNet-18" and report.parameters == 11_173_962


def test_shipped_models_are_recognised():
    for path in ("models/mnist/Linf/Standard_SmallResNet.safetensors", "models/mnist/diffusion/DDPM_SmallUNet.safetensors"):
        assert check_checkpoint(Path(__file__).parents[1] / path).ok


def test_a_classifier_passed_as_diffusion_is_refused(tmp_path):
    torch.save(CifarResNet18().state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match=r"resnet.pt holds a classifier \(CIFAR ResNet-18\), but a diffusion was asked for"):
        load_checkpoint(tmp_path / "resnet.pt", kind="diffusion")


def test_unknown_architecture_is_refused_with_its_keys(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "mystery.pt")
    with pytest.raises(CheckpointError, match="mystery.pt: unrecognised architecture; first keys: encoder.weight"):
        load_checkpoint(tmp_path / "mystery.pt")


# --- files that are not usable checkpoints ------------------------------------------------------


def test_missing_file_names_the_path_and_the_store_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*absent.pt.*<dataset>/<threat_model>/<name>.pt"):
        read_checkpoint(tmp_path / "absent.pt")


def test_html_page_saved_as_pt_is_recognised(tmp_path):
    page = tmp_path / "Standard.pt"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Quota exceeded</title></head></html>")
    with pytest.raises(CheckpointError, match="Standard.pt is an HTML page .* failed download"):
        read_checkpoint(page)


def test_truncated_torch_file_is_reported_as_such(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(10_000.0)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or corrupted"):
        read_checkpoint(cut)


def test_truncated_safetensors_file_is_reported_as_such(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(10_000.0)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:20_000])
    with pytest.raises(CheckpointError, match="cut.safetensors is truncated or corrupted"):
        read_checkpoint(cut)


def test_empty_file_and_lfs_pointer(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(CheckpointError, match="git lfs pull"):
        read_checkpoint(tmp_path / "lfs.pt")


def test_file_that_would_run_code_is_refused_with_the_conversion(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match=r"(?s)refused: loading it would execute code \(it pickles argparse.Namespace\).*save_file"):
        read_checkpoint(tmp_path / "code.pt")


def test_state_dict_is_unwrapped_and_prefixes_stripped(tmp_path):
    torch.save({"state_dict": {"module.a": torch.ones(1)}, "epoch": 3}, tmp_path / "wrapped.pt")
    assert list(load_state_dict(tmp_path / "wrapped.pt")) == ["a"]
    torch.save({"epoch": 3, "note": "x"}, tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        load_state_dict(tmp_path / "nothing.pt")


# --- CLI -----------------------------------------------------------------------------------------


def test_models_check_and_list_commands(tmp_path):
    runner = CliRunner()
    torch.save(CifarResNet18().state_dict(), tmp_path / "resnet.pt")
    result = runner.invoke(app, ["models", "check", str(tmp_path / "resnet.pt")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "CIFAR ResNet-18" in result.output and "11,173,962" in result.output and "all keys and shapes match" in result.output

    (tmp_path / "page.pt").write_text("<html><body>Sign in</body></html>")
    result = runner.invoke(app, ["models", "check", str(tmp_path / "page.pt")], terminal_width=200)
    assert result.exit_code == 2 and "HTML page" in result.output

    store = tmp_path / "store" / "cifar10" / "Linf"
    store.mkdir(parents=True)
    torch.save(CifarResNet18().state_dict(), store / "Mine.pt")
    (store / "Mine.md").write_text("# My CIFAR-10 ResNet-18\n\ndetails")
    result = runner.invoke(app, ["models", "list", "--store", str(tmp_path / "store")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "cifar10/Linf/Mine.pt" in result.output and "My CIFAR-10 ResNet-18" in result.output


def test_robustbench_spec_reads_the_store_layout(tmp_path, monkeypatch):
    from robustwrap.specs import build_classifier

    monkeypatch.setenv("ROBUSTWRAP_MODEL_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no RobustBench checkpoint .*cifar10/Linf/Standard.pt"):
        build_classifier("robustbench:cifar10/Linf/Standard")
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    model = WideResNet(depth=10, widen_factor=1)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "cifar10" / "Linf" / "Standard.pt")
    loaded = build_classifier("robustbench:cifar10/Linf/Standard")
    assert isinstance(loaded, WideResNet) and not loaded.training


def test_diffusers_folder_loads_offline_and_a_missing_one_is_named(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from robustwrap.specs import build_diffusion

    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                 layers_per_block=1, norm_num_groups=8)
    unet.save_pretrained(tmp_path / "ddpm")  # config.json + diffusion_pytorch_model.safetensors
    loaded = build_diffusion(f"diffusers:{tmp_path / 'ddpm'}")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10.0])
    torch.testing.assert_close(loaded(x, t).sample, unet.eval()(x, t).sample)
    with pytest.raises(FileNotFoundError, match="no diffusers model folder at .*nowhere.*config.json"):
        build_diffusion(f"diffusers:{tmp_path / 'nowhere'}")


def test_numpy_values_saved_beside_the_weights_load_but_objects_in_arrays_do_not(tmp_path):
    np = pytest.importorskip("numpy")
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_prec1": np.float64(0.95), "epoch": np.int64(3),
                "curve": np.zeros(3)}, tmp_path / "numbers.pt")
    raw = read_checkpoint(tmp_path / "numbers.pt")
    assert float(raw["best_prec1"]) == 0.95 and list(load_state_dict(tmp_path / "numbers.pt")) == ["w"]
    hidden = np.array([argparse.Namespace(lr=0.1)], dtype=object)
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": hidden}, tmp_path / "hidden.pt")
    with pytest.raises(CheckpointError, match="would execute code"):
        read_checkpoint(tmp_path / "hidden.pt")


def test_timm_weights_come_from_an_existing_hub_cache_only(tmp_path, monkeypatch):
    import timm

    from robustwrap.specs import timm_cached_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    assert timm_cached_weights("resnet18", hub_cache=tmp_path) is None  # empty caches: nothing (and no download)
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0123abcd")
    save_file(timm.create_model("resnet18").state_dict(), str(snapshot / "model.safetensors"))
    assert timm_cached_weights("resnet18", hub_cache=tmp_path) == str(snapshot / "model.safetensors")


def test_release_variants_load(tmp_path):
    """Prefixes "model." (RobustBench strips it) and "module.0." inside "model_state_dict"."""
    model = DMWideResNet(depth=10, width=1)
    torch.save({"model_state_dict": {"module.0." + k: v for k, v in model.state_dict().items()}}, tmp_path / "indexed.pt")
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, tmp_path / "prefixed.pt")
    x = torch.rand(2, 3, 32, 32)
    for name in ("indexed.pt", "prefixed.pt"):
        loaded, report = load_checkpoint(tmp_path / name)
        assert report.ok, name
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_dm_wrn_without_mean_std_uses_the_datasets_statistics_and_says_so(tmp_path):
    from robustwrap.families import CIFAR100_MEAN

    for classes, mean in ((10, (0.4914, 0.4822, 0.4465)), (100, CIFAR100_MEAN)):
        weights = {k: v for k, v in DMWideResNet(depth=10, width=1, num_classes=classes).state_dict().items() if k not in ("mean", "std")}
        torch.save(weights, tmp_path / "deepmind.pt")
        loaded, report = load_checkpoint(tmp_path / "deepmind.pt")
        assert report.ok and any("no input mean/std" in note for note in report.notes)
        torch.testing.assert_close(loaded.mean.flatten(), torch.tensor(mean))


def test_layers_outside_the_recognised_network_are_not_dropped_silently(tmp_path):
    """A Sequential(normalisation, network) file: the network is found under "1.", but the
    normalisation's "0.mean"/"0.std" have nowhere to go, so the file does not load as is."""
    network = WideResNet(depth=10, widen_factor=1)
    state = {"0.mean": torch.zeros(3), "0.std": torch.ones(3), **{"1." + k: v for k, v in network.state_dict().items()}}
    torch.save(state, tmp_path / "sequential.pt")
    report = check_checkpoint(tmp_path / "sequential.pt")
    assert report.architecture == "RobustBench WideResNet" and not report.ok and report.unexpected == ["0.mean", "0.std"]
    with pytest.raises(CheckpointError, match=r"2 unexpected \(0.mean, 0.std\)"):
        load_checkpoint(tmp_path / "sequential.pt")


def test_a_partial_file_is_reported_not_crashed_on(tmp_path):
    state = {k: v for k, v in WideResNet(depth=10, widen_factor=1).state_dict().items() if not k.startswith("block1.layer.0.conv1")}
    torch.save(state, tmp_path / "partial.pt")
    report = check_checkpoint(tmp_path / "partial.pt")
    assert not report.ok and report.missing == ["block1.layer.0.conv1.weight"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is text", "is not a torch checkpoint"),
        (b'{"error": "quota exceeded"}', "is not a torch checkpoint"),
        (b"\x80\x02\x8a\x0alz", "is truncated or corrupted"),  # a legacy torch file cut after 7 bytes
    ],
)
def test_non_checkpoints_get_named_errors_not_crashes(tmp_path, content, message):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path / "bad.pt")


def test_a_legacy_file_cut_inside_a_class_name_is_corrupted_not_code(tmp_path):
    from collections import OrderedDict

    torch.save(OrderedDict(w=torch.ones(100)), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "legacy.pt").read_bytes()
    cut = data.index(b"OrderedDict") + 8  # the stream ends in "collections OrderedD"
    (tmp_path / "cut.pt").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        read_checkpoint(tmp_path / "cut.pt")
    assert list(read_checkpoint(tmp_path / "legacy.pt")) == ["w"]


def test_score_sde_family_reads_ema_the_same_way_in_its_notes_and_its_filter():
    from robustwrap.families import FAMILIES

    family = next(f for f in FAMILIES if f.name == "score-SDE DDPM++")
    state = {"w": torch.zeros(1)}
    assert family.notes({"ema": None}, state) == [] and family.prepare({"ema": None}, state, torch.nn.Linear(1, 1)) is state
    with pytest.raises(CheckpointError, match="'shadow_params' list"):
        family.prepare({"ema": {"decay": 0.9}}, state, torch.nn.Linear(1, 1))
