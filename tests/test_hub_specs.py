"""``hf:`` specs read a populated hub cache offline; nothing is downloaded in tests."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from robustwrap import PurifyConfig, RobustWrapper
from robustwrap.specs import build_classifier, build_diffusion

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id: str, files: dict[str, object]) -> None:
    """Lay ``files`` out as the hub cache does: blobs, a snapshot per commit, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir()
    for name, write in files.items():
        blob = repo / "blobs" / f"blob-{name.replace('/', '-')}"
        write(blob)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hf_timm_repository_loads_from_the_cache_with_its_weights_and_normalisation(offline_cache):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False, num_classes=7)
    config = {"architecture": "resnet18", "num_classes": 7,
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": [3, 64, 64]}}
    _cache_repo(offline_cache, "someone/resnet18.tiny", {
        "config.json": lambda p: p.write_text(json.dumps(config)),
        "model.safetensors": lambda p: save_file(source.state_dict(), str(p)),
    })
    model = build_classifier("hf:someone/resnet18.tiny")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    wrapper = RobustWrapper(model, build_diffusion("small-unet", image_size=32), PurifyConfig(steps=10))
    assert wrapper.normalize.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert wrapper(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_hf_diffusers_unet_loads_from_the_cache_at_a_revision(offline_cache):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                 layers_per_block=1, norm_num_groups=4)
    config = dict(unet.config)
    _cache_repo(offline_cache, "someone/ddpm-tiny", {
        "config.json": lambda p: p.write_text(json.dumps({**config, "_class_name": "UNet2DModel"})),
        "diffusion_pytorch_model.safetensors": lambda p: save_file(unet.state_dict(), str(p)),
    })
    loaded = build_diffusion(f"hf:someone/ddpm-tiny@{COMMIT}")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t).sample, unet(x, t).sample)


def test_an_uncached_repository_offline_is_a_clear_error(offline_cache):
    with pytest.raises(FileNotFoundError, match="hf:nobody/nothing is not in the hub cache.*HF_HUB_OFFLINE"):
        build_diffusion("hf:nobody/nothing")
    with pytest.raises(ValueError, match="hf:<org>/<name>"):
        build_classifier("hf:not-a-repo-id")
