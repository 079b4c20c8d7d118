"""Where the sampler's Gaussian noise comes from: one value, :class:`Noise`, for every call that purifies.

    Noise.fresh()             # draws inside the computation (torch.randn_like; ONNX RandomNormalLike)
    Noise.seeded(seeds)       # (B,) per-image seeds: an image's noise depends on its own seed alone
    Noise.stream(generator)   # one torch.Generator for the whole batch
    Noise.given(tensor)       # explicit draws, (B, D, S, C, Hd, Wd): the exported graph's layout

Every method of :class:`robustwrap.RobustWrapper` that purifies takes ``noise=`` (None: fresh),
and so do the engine-backed wrappers of ``load_bundle``. A :class:`NoiseSource` is made from it
per call and hands out draws in the fixed order of the sampling plan, so the same value (same
seeds or same tensor) gives the same purification in eager mode, under ``torch.compile`` and in
an exported graph.

Per-image seeds (as EDM's ``generate.py`` does with one generator per sample) make an image's
noise a function of its own seed alone, whatever the batch it is in: see :class:`NoiseSource` for
what a seed means exactly. :func:`mix_seed` and :func:`derive_seeds` derive independent seeds
from (seed, image index, purpose, ...) without any global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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


NoiseKind = Literal["fresh", "seeded", "stream", "given"]


@dataclass(frozen=True, eq=False)
class Noise:
    """Where one call's noise comes from; build it with one of the four constructors.

    Attributes:
        kind: "fresh", "seeded", "stream" or "given".
        seeds: with "seeded": (B,) int64 seeds in [0, 2**63), one per image.
        generator: with "stream": the generator every draw comes from (on the images' device).
        tensor: with "given": (B, D, S, C, Hd, Wd) standard-normal draws, where D is the plan's
            ``noise_draws``, S the votes of the call (1 for ``purify``) and (Hd, Wd) the diffusion
            size; ``RobustWrapper.noise_shape(x, votes)`` gives the shape. Image b's draw d for
            vote s is ``tensor[b, d, s]``, whatever the batch it is in.
    """

    kind: NoiseKind = "fresh"
    seeds: Tensor | None = None
    generator: torch.Generator | None = None
    tensor: Tensor | None = None

    def __post_init__(self) -> None:
        wanted = {"fresh": None, "seeded": "seeds", "stream": "generator", "given": "tensor"}
        if self.kind not in wanted:
            raise ValueError(f"Noise kind must be one of {sorted(wanted)}, got {self.kind!r}")
        given = {name for name in ("seeds", "generator", "tensor") if getattr(self, name) is not None}
        if given != ({wanted[self.kind]} - {None}):
            raise ValueError(f"a {self.kind} Noise holds {wanted[self.kind] or 'nothing'}, got {sorted(given)}: build "
                             "it with Noise.fresh(), Noise.seeded(seeds), Noise.stream(generator) or Noise.given(tensor)")

    @classmethod
    def fresh(cls) -> "Noise":
        """New draws each call (``torch.randn_like``): what the exported graphs do in-graph."""
        return cls()

    @classmethod
    def seeded(cls, seeds: Tensor | Sequence[int]) -> "Noise":
        """Image i's noise from its own generator seeded with ``seeds[i]`` (see :func:`check_seeds`)."""
        return cls("seeded", seeds=check_seeds(seeds).clone())  # a copy: the value stays what it was

    @classmethod
    def stream(cls, generator: torch.Generator) -> "Noise":
        """Every draw from ``generator``: reproducible from its seed, but an image's noise depends on its batch."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Noise.stream takes a torch.Generator, got {type(generator).__name__}")
        return cls("stream", generator=generator)

    @classmethod
    def given(cls, tensor: Tensor) -> "Noise":
        """Explicit draws, a (B, D, S, C, Hd, Wd) floating tensor (``RobustWrapper.noise_shape``)."""
        if not isinstance(tensor, Tensor):
            raise TypeError(f"Noise.given takes a (B, D, S, C, Hd, Wd) floating tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point() or tensor.dim() != 6:
            raise ValueError(f"Noise.given takes a (B, D, S, C, Hd, Wd) floating tensor, got a {tensor.dim()}-d "
                             f"{tensor.dtype} tensor")
        return cls("given", tensor=tensor)

    def check(self, shape: Sequence[int]) -> None:
        """ValueError unless this noise fits a call whose given noise would have ``shape`` (B, D, S, C, Hd, Wd)."""
        if self.kind == "seeded" and self.seeds.shape[0] != shape[0]:
            raise ValueError(f"seeded noise for {self.seeds.shape[0]} images, but the call has {shape[0]}: "
                             f"pass one seed per image")
        if self.kind == "given" and tuple(self.tensor.shape) != tuple(shape):
            raise ValueError(f"given noise must have shape {tuple(shape)} (B, D, S, C, Hd, Wd), "
                             f"got {tuple(self.tensor.shape)}")


def as_noise(noise: "Noise | None") -> Noise:
    """``noise`` itself, or :meth:`Noise.fresh` for None; TypeError for anything else (e.g. a bare tensor)."""
    if noise is None:
        return Noise()
    if not isinstance(noise, Noise):
        hint = " (explicit draws: Noise.given(tensor))" if isinstance(noise, Tensor) else ""
        raise TypeError(f"noise= takes a robustwrap.Noise, got {type(noise).__name__}{hint}")
    return noise


class NoiseSource:
    """Hands out standard-normal tensors shaped like the sampler's state, one per draw.

    Args:
        noise: where the draws come from (:class:`Noise`; None: fresh).
        votes: S, the number of purifications per image in the sampler's batch, which runs
            (S * B, C, Hd, Wd) rows, vote-major (row s * B + b is vote s of image b).

    What a seed means (``Noise.seeded``): image i owns a generator
    ``torch.Generator(device).manual_seed(seeds[i])`` on the images' device, and at each of the
    plan's D draws, in the plan's order, takes ``torch.randn((votes, C, Hd, Wd))`` from it in
    float32 (row s is vote s). Image i's noise therefore depends only on ``seeds[i]``, the plan
    and ``votes`` (not on the batch, its size or its order); with ``votes=1`` (``purify``) it
    equals vote 0 of a ``votes=1`` forward with the same seed. Fresh draws use
    ``torch.randn_like`` (exports to ONNX ``RandomNormalLike``).
    """

    def __init__(self, noise: Noise | None = None, *, votes: int = 1) -> None:
        self.noise = as_noise(noise)
        self._votes = votes
        self._per_image: list[torch.Generator] | None = None
        self._explicit = None
        if self.noise.kind == "given":  # (B, D, S, ...) -> (D, S * B, ...), vote-major like the sampler's rows
            self._explicit = self.noise.tensor.permute(1, 2, 0, 3, 4, 5).flatten(1, 2)
        self.drawn = 0

    def __call__(self, like: Tensor) -> Tensor:
        """A standard-normal tensor with ``like``'s shape, dtype and device."""
        index = self.drawn
        self.drawn += 1
        kind = self.noise.kind
        if kind == "given":
            return self._explicit[index].to(like)
        if kind == "stream":
            generator = self.noise.generator
            return torch.randn(like.shape, generator=generator, device=generator.device).to(like)
        if kind == "seeded":
            if self._per_image is None:
                self._per_image = per_image_generators(self.noise.seeds, like.device)
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
