"""The one image decoder (robustwrap.images) and the library helpers the CLI now calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robustwrap.data import draw_subset, image_folder, resolve_eps, stratified_subset
from robustwrap.evaluation import process_group_from_env
from robustwrap.images import decode_image, save_image, to_uint8


def test_decode_keeps_grey_files_grey_and_colour_files_colour(tmp_path):
    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    one, _ = decode_image(tmp_path / "grey.png")
    three, _ = decode_image(tmp_path / "rgb.png")
    assert one.shape == (1, 8, 8) and three.shape == (3, 8, 8) and one.dtype == torch.float32
    assert torch.equal(one[0], torch.from_numpy(grey.astype(np.float32) / 255))
    assert torch.equal(three[1], one[0])
    assert decode_image(tmp_path / "grey.png", channels=3)[0].shape == (3, 8, 8)


def test_decode_expands_palettes_instead_of_returning_their_indices(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = (200, 10, 10)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=2).save(tmp_path / "palette.png")
    image, _ = decode_image(tmp_path / "palette.png")
    assert image.shape == (3, 4, 4)
    assert image[0, 0, 0] == pytest.approx(200 / 255, abs=2 / 255) and image[0, 3, 3] == 0


def test_decode_composites_alpha_on_the_background_and_resizes(tmp_path):
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[2:4, 2:4] = (0, 0, 0, 255)  # an opaque black square on transparent pixels
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    on_white, warnings = decode_image(tmp_path / "alpha.png", channels=1)
    assert on_white.shape == (1, 6, 6) and on_white[0, 0, 0] == 1 and on_white[0, 2, 2] == 0 and not warnings
    _, warnings = decode_image(tmp_path / "alpha.png", channels=1, background=0)
    assert warnings and "--invert" in warnings[0]
    assert decode_image(tmp_path / "alpha.png", size=12)[0].shape == (3, 12, 12)


def test_save_image_round_trips_through_the_decoder(tmp_path):
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    save_image(image, tmp_path / "x.png")
    back, _ = decode_image(tmp_path / "x.png")
    assert back.shape == image.shape and (back - image).abs().max() <= 0.5 / 255 + 1e-6
    assert to_uint8(image[:1]).shape == (5, 7) and to_uint8(image).shape == (5, 7, 3)


def test_image_folder_reads_through_the_decoder_and_names_an_unreadable_file(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.full((4, 4), 255 if label == "b" else 0, dtype=np.uint8)).save(tmp_path / label / "x.png")
    images, labels = image_folder(tmp_path)
    assert images.shape == (2, 1, 4, 4) and labels.tolist() == [0, 1] and images[1].min() == 1
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder(tmp_path)


def test_resolve_eps_is_the_given_radius_else_mnists_under_linf_else_the_evaluations_default():
    assert resolve_eps(None, "mnist5k:heldout", "Linf") == 0.3 and resolve_eps(None, "foolbox:mnist", "Linf") == 0.3
    assert resolve_eps(None, "mnist5k:heldout", "L2") is None and resolve_eps(None, "cifar10:/data", "Linf") is None
    assert resolve_eps(0.1, "mnist5k:heldout", "Linf") == 0.1 and resolve_eps(0.0, "cifar10:/data", "L2") == 0.0


def test_draw_subset_is_the_stratified_subset_with_its_record():
    labels = torch.arange(40) % 4
    indices, record = draw_subset(labels, 8, seed=3, spec="tensors:x")
    assert torch.equal(indices, stratified_subset(labels, 8, 3))
    assert record["size"] == 8 and record["requested"] == 8 and record["data"] == "tensors:x"
    assert record["per_class"] == {"0": 2, "1": 2, "2": 2, "3": 2}


def test_process_group_from_env_is_rank_0_and_starts_nothing_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group_from_env() as rank:
        assert rank == 0 and not torch.distributed.is_initialized()


def test_grey_palettes_stay_one_channel_and_deep_grey_files_are_rescaled_not_clipped(tmp_path):
    grey = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    Image.fromarray(grey).convert("P").save(tmp_path / "grey-palette.png")
    image, _ = decode_image(tmp_path / "grey-palette.png")
    assert image.shape == (1, 2, 2) and torch.equal(image[0], torch.from_numpy(grey / np.float32(255)))
    deep = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a 16-bit grey PNG
    image, _ = decode_image(tmp_path / "deep.png")
    assert image.shape == (1, 2, 2)
    assert torch.allclose(image[0], torch.from_numpy(deep / np.float32(65535)), atol=0.5 / 255 + 1e-6)
    Image.fromarray(np.array([[0, 1], [1, 0]], dtype=bool)).save(tmp_path / "bits.png")
    assert decode_image(tmp_path / "bits.png")[0][0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
