"""Independent, slow reference implementation of the robustwrap algorithm.

Written only from docs/algorithm.md (the algorithm as specified) plus the test brief;
it deliberately does not import or mirror anything from ``robustwrap``.
Everything is computed in float64 with plain Python loops.
"""
import math

import torch
import torch.nn.functional as F


def _schedule():
    """Linear DDPM schedule: (alpha, abar) as float64 tensors indexed by timestep 0..999."""
    betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    alpha = 1.0 - betas
    abar = torch.cumprod(alpha, dim=0)
    return alpha, abar


def _grid(t_l, steps):
    """Reversed DDIM grid: stride k = 1000 // steps, first int(steps * t_l) + 1 entries."""
    k = 1000 // steps
    n = int(steps * t_l) + 1
    return [i * k for i in range(n)][::-1]


def reference_mask(activations, size, p=2.0, root=False, normalization="minmax",
                   rule="threshold", tau=0.9, top_fraction=0.15):
    """Attention mask (B, 1, H, W) float64 of 0/1 from per-stage activations.

    Per stage: G = sum_c |A|^p (optionally ** (1/p)), bilinear upsample
    (align_corners=False) to ``size``, per-image min-max or softmax normalisation;
    element-wise max over stages; then threshold at ``tau`` or keep the top
    k = max(1, floor(top_fraction * H * W)) pixels of each image.
    """
    H, W = size
    combined = None
    for A in activations:
        A = A.detach().to(torch.float64)
        G = A.abs().pow(p).sum(dim=1, keepdim=True)  # (B, 1, Hm, Wm)
        if root:
            G = G.pow(1.0 / p)
        G = F.interpolate(G, size=(H, W), mode="bilinear", align_corners=False)
        N = torch.empty_like(G)
        for b in range(G.shape[0]):
            g = G[b, 0]
            if normalization == "minmax":
                N[b, 0] = (g - g.min()) / (g.max() - g.min() + 1e-12)
            elif normalization == "softmax":
                N[b, 0] = torch.softmax(g.reshape(-1), dim=0).reshape(H, W)
            else:
                raise ValueError(normalization)
        combined = N if combined is None else torch.maximum(combined, N)

    mask = torch.zeros_like(combined)
    for b in range(combined.shape[0]):
        m = combined[b, 0]
        if rule == "threshold":
            mask[b, 0] = (m >= tau).to(torch.float64)
        elif rule == "top_fraction":
            k = max(1, int(top_fraction * H * W))  # floor, as the reference code
            idx = torch.topk(m.reshape(-1), k).indices
            flat = torch.zeros(H * W, dtype=torch.float64)
            flat[idx] = 1.0
            mask[b, 0] = flat.reshape(H, W)
        else:
            raise ValueError(rule)
    return mask


class _Noise:
    """Sequential noise source: consumes the given list in order, or draws randn."""

    def __init__(self, noise, like):
        self.noise = None if noise is None else list(noise)
        self.like = like
        self.used = 0

    def draw(self):
        if self.noise is None:
            z = torch.randn_like(self.like)
        else:
            assert self.used < len(self.noise), "ran out of noise tensors"
            z = self.noise[self.used].to(torch.float64)
            assert z.shape == self.like.shape, (z.shape, self.like.shape)
        self.used += 1
        return z


def _walk(x0, mask, t_l, t_s, steps, U, resampling, eta, eps, rng):
    """The purification loop. ``eps(x, t)`` gives the prediction; ``rng.draw()`` the noise.

    Shared by reference_purify (real tensors) and reference_noise_count (dummy ones)
    so that the count is obtained by walking exactly the same loop.
    """
    if resampling not in ("single", "repaint", "none"):
        raise ValueError(resampling)
    alpha, abar = _schedule()
    a = lambda t: float(abar[t])  # noqa: E731
    grid = _grid(t_l, steps)

    def renoise_to(t):
        return math.sqrt(a(t)) * x0 + math.sqrt(1.0 - a(t)) * rng.draw()

    def ddim(x, t, s):
        e = eps(x, t)
        x0_hat = (x - math.sqrt(1.0 - a(t)) * e) / math.sqrt(a(t))
        sigma = eta * math.sqrt((1.0 - a(s)) / (1.0 - a(t)) * (1.0 - a(t) / a(s)))
        out = math.sqrt(a(s)) * x0_hat + math.sqrt(1.0 - a(s) - sigma ** 2) * e
        if eta > 0:
            out = out + sigma * rng.draw()
        return out

    x = renoise_to(grid[0])
    for t, s in zip(grid[:-1], grid[1:]):
        if s >= t_s * 1000:  # stage 1: inpainting (+ resampling)
            if resampling == "repaint":
                for _ in range(U):
                    x = mask * x + (1 - mask) * renoise_to(t)
                    x_s = ddim(x, t, s)
                    r = a(t) / a(s)
                    x = math.sqrt(r) * x_s + math.sqrt(1.0 - r) * rng.draw()
            x = mask * x + (1 - mask) * renoise_to(t)
            if resampling == "single":
                for i in range(1, U + 1):
                    al = float(alpha[t + i])
                    x = math.sqrt(al) * x + math.sqrt(1.0 - al) * rng.draw()
                t = t + U
        x = ddim(x, t, s)
    return x.clamp(-1.0, 1.0)


def reference_purify(eps_fn, x0, mask, t_l, t_s, steps, U, resampling="single",
                     eta=0.0, noise=None):
    """Heterogeneous-noise two-stage purification of x0 (N, C, H, W) in [-1, 1].

    ``mask`` (N, 1, H, W) is 1 on attended pixels (strong noise). ``noise`` is a
    sequence of tensors shaped like x0, consumed in order; all of it must be used.
    ``eps_fn(x, t)`` is called with x in x0's dtype and t a float tensor (N,) filled
    with the integer timestep. Returns float64 (N, C, H, W) clamped to [-1, 1].
    """
    dtype = x0.dtype
    x0_64 = x0.detach().to(torch.float64)
    mask_64 = mask.detach().to(torch.float64)
    rng = _Noise(noise, x0_64)

    def eps(x, t):
        tt = torch.full((x.shape[0],), float(t), dtype=dtype, device=x0.device)
        with torch.no_grad():
            e = eps_fn(x.to(dtype), tt)
        return e.detach().to(torch.float64)

    out = _walk(x0_64, mask_64, t_l, t_s, steps, U, resampling, eta, eps, rng)
    if noise is not None:
        assert rng.used == len(rng.noise), f"used {rng.used} of {len(rng.noise)} noise draws"
    return out


def reference_noise_count(t_l, t_s, steps, U, resampling="single", eta=0.0):
    """Number of noise draws reference_purify consumes (by walking the same loop)."""
    x0 = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    rng = _Noise(None, x0)
    _walk(x0, torch.ones_like(x0), t_l, t_s, steps, U, resampling, eta,
          lambda x, t: torch.zeros_like(x), rng)
    return rng.used
