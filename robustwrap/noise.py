"""Where the sampler's Gaussian noise comes from: in-graph, a seeded generator, per-image seeds,
or given tensors.

A :class:`NoiseSource` is made per call and hands out draws in the fixed order of the
sampling plan, so the same source (same seed or same tensors) gives the same purification
in eager mode, under ``torch.compile`` and in an exported graph.

Per-image seeds (``seeds=``, as EDM's ``generate.py`` does with one generator per sample) make
an image's noise a function of its own seed alone, whatever the batch it is in: see
:class:`NoiseSource` for what a seed means exactly. :func:`mix_seed` and :func:`derive_seeds`
derive independent seeds from (seed, image index, purpose, ...) without any global state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SEED_LIMIT = 2**63  # seeds are non-negative int64 values below this
_MASK64 = 2**64 - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def mix_seed(*parts: int) -> int:
    """One seed in [0, 2**63) from integer ``parts`` (splitmix64 chained over the parts).

    Different part tuples give statistically independent seeds; the same parts always give the
    same seed, on any machine. Parts may be any Python ints (negative ones are taken mod 2**64).
    """
    value = 0
    for part in parts:
        value = _splitmix64(value ^ (int(part) & _MASK64))
    return _splitmix64(value) >> 1


def derive_seeds(seeds: Tensor | Sequence[int], *parts: int) -> Tensor:
    """Per-image seeds ``mix_seed(seeds[i], *parts)``: a (B,) int64 tensor on ``seeds``' device.

    Used to give every image fresh, independent noise for another purpose (another attack
    step, another evaluation run) while keeping it a function of that image's seed alone.
    """
    base = check_seeds(seeds)
    return torch.tensor([mix_seed(s, *parts) for s in base.tolist()], dtype=torch.int64, device=base.device)


def check_seeds(seeds: Tensor | Sequence[int], batch: int | None = None) -> Tensor:
    """Validate per-image seeds; return them as a (B,) int64 tensor.

    Args:
        seeds: a (B,) tensor of an integer dtype, or a sequence of ints, each in [0, 2**63).
        batch: the B they must match (None: any B >= 1).

    Raises:
        TypeError: not integers (floats, bools, other objects).
        ValueError: wrong shape or length, or a negative seed.
    """
    if isinstance(seeds, Tensor):
        if seeds.dtype == torch.bool or seeds.is_floating_point() or seeds.is_complex():
            raise TypeError(f"seeds must be an integer tensor, got dtype {seeds.dtype}")
        tensor = seeds.to(torch.int64)
    else:
        values = list(seeds)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise TypeError(f"seeds must be ints, got {values[:4]!r}{'...' if len(values) > 4 else ''}")
        if any(v >= SEED_LIMIT for v in values):
            raise ValueError(f"seeds must be below 2**63, got {max(values)}")
        tensor = torch.tensor(values, dtype=torch.int64)
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(f"seeds must have shape (B,) with B >= 1, got {tuple(tensor.shape)}")
    if batch is not None and tensor.shape[0] != batch:
        raise ValueError(f"seeds must have shape ({batch},), one per image, got {tuple(tensor.shape)}")
    if bool((tensor < 0).any()):
        raise ValueError(f"seeds must be >= 0, got {int(tensor.min())}")
    return tensor


def per_image_generators(seeds: Tensor | Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per image, seeded with ``seeds[i]``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in check_seeds(seeds).tolist()]


def per_image_rand(seeds: Tensor | Sequence[int], shape: Sequence[int], *, device: torch.device | str,
                   dtype: torch.dtype = torch.float32, normal: bool = False) -> Tensor:
    """(B, *shape) uniform [0, 1) (or standard-normal) draws, row i from a generator seeded with seeds[i]."""
    draw = torch.randn if normal else torch.rand
    rows = [draw(tuple(shape), generator=g, device=device) for g in per_image_generators(seeds, device)]
    return torch.stack(rows).to(dtype)


class NoiseSource:
    """Hands out standard-normal tensors shaped like the sampler's state, one per draw.

    Args:
        generator: draw with ``torch.randn(..., generator=generator)`` (reproducible from a seed;
            the generator must live on the images' device). The whole batch shares its stream,
            so an image's noise depends on the batch it is in.
        explicit: a tensor of shape (D, N, C, H, W) whose D slices are returned in order;
            D must equal the plan's ``noise_draws`` and N the batch the sampler runs on.
        seeds: (B,) per-image seeds (see :func:`check_seeds`); the sampler's state must be
            (votes * B, C, H, W), vote-major. What a seed means: image i owns a generator
            ``torch.Generator(device).manual_seed(seeds[i])`` on the images' device, and at each
            of the plan's D draws, in the plan's order, takes ``torch.randn((votes, C, Hd, Wd))``
            from it in float32 (row s is vote s). Image i's noise therefore depends only on
            ``seeds[i]``, the plan and ``votes`` (not on the batch, its size or its order); with
            ``votes=1`` (``purify``) it equals vote 0 of a ``votes=1`` forward with the same seed.
        votes: S, the number of purifications per image in the sampler's batch (with ``seeds``).
        device: where the per-image generators live (with ``seeds``).
        With none of them, draws use ``torch.randn_like`` (exports to ONNX ``RandomNormalLike``).
    """

    def __init__(
        self,
        generator: torch.Generator | None = None,
        explicit: Tensor | None = None,
        *,
        seeds: Tensor | Sequence[int] | None = None,
        votes: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if sum(source is not None for source in (generator, explicit, seeds)) > 1:
            raise ValueError("pass one of generator=, noise= (explicit) and seeds=, not several")
        self._generator = generator
        self._explicit = explicit
        self._votes = votes
        self._per_image = None if seeds is None else per_image_generators(seeds, device)
        self.drawn = 0

    def __call__(self, like: Tensor) -> Tensor:
        """A standard-normal tensor with ``like``'s shape, dtype and device."""
        index = self.drawn
        self.drawn += 1
        if self._explicit is not None:
            return self._explicit[index].to(like)
        if self._generator is not None:
            return torch.randn(like.shape, generator=self._generator, device=self._generator.device).to(like)
        if self._per_image is not None:
            return self._draw_per_image(like)
        return torch.randn_like(like)

    def _draw_per_image(self, like: Tensor) -> Tensor:
        """(S * B, C, H, W) vote-major: image b's (S, C, H, W) block from its own generator."""
        batch = len(self._per_image)
        if like.shape[0] != self._votes * batch:
            raise ValueError(f"per-image noise for {batch} images x {self._votes} votes, but the sampler "
                             f"runs {like.shape[0]} rows")
        shape = (self._votes, *like.shape[1:])
        blocks = [torch.randn(shape, generator=g, device=g.device) for g in self._per_image]
        return torch.stack(blocks, dim=1).reshape(like.shape).to(like)
