"""Convert NVIDIA's EDM CIFAR-10 pickle to a safetensors state dict, once, in a trusted environment.

    SECURITY: this script unpickles the network file, and unpickling runs code stored in it
    (EDM pickles embed the source of their network classes). Only use it on a file you trust,
    e.g. the official https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl,
    in an environment you are prepared to run that code in. The safetensors file it writes
    holds tensors only and is safe to load anywhere.

    git clone https://github.com/NVlabs/edm && cd edm       # dnnlib and torch_utils must import
    PYTHONPATH=. python /path/to/robustwrap/examples/convert_edm.py \\
        edm-cifar10-32x32-uncond-vp.pkl edm-cifar10-32x32-uncond-vp.safetensors

It takes ``data['ema']`` (the EDMPrecond network) and saves ``net.state_dict()`` (keys
``model.<SongUNet key>``). Load the result with

    from robustwrap.adapters import EDMDenoiserEps
    from robustwrap.nets import EDMDenoiser
    from robustwrap.checkpoints import load_state_dict
    denoiser = EDMDenoiser.cifar10_uncond_vp()
    denoiser.load_state_dict(load_state_dict("edm-cifar10-32x32-uncond-vp.safetensors"), strict=True)
    diffusion = EDMDenoiserEps(denoiser.eval())
"""

from __future__ import annotations

import argparse
import pickle
from typing import Callable, IO

import torch
from safetensors.torch import save_file


def _open_with_dnnlib(source: str) -> IO[bytes]:
    import dnnlib  # noqa: PLC0415  (NVlabs/edm's, on PYTHONPATH)

    return dnnlib.util.open_url(source)


def convert(source: str, dest: str, opener: Callable[[str], IO[bytes]] | None = None) -> dict[str, torch.Tensor]:
    """Unpickle ``source`` (runs code from it: trusted files only), save ``data['ema'].state_dict()``
    to ``dest`` with safetensors, and return the saved tensors."""
    with (opener or _open_with_dnnlib)(source) as f:
        data = pickle.load(f)  # noqa: S301 - documented above: trusted files only
    net = data["ema"]
    state = {key: value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype).contiguous()
             for key, value in net.state_dict().items()}
    save_file(state, dest, metadata={"source": str(source), "format": "EDMPrecond.state_dict"})
    return state


def _check_layout(state: dict[str, torch.Tensor]) -> str:
    """Compare with robustwrap's EDMDenoiser when robustwrap is importable here."""
    try:
        from robustwrap.nets import EDMDenoiser  # noqa: PLC0415
    except ImportError:
        return "robustwrap not importable here, layout not checked"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in EDMDenoiser.cifar10_uncond_vp().state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        shapes = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        raise SystemExit(f"layout differs from EDMDenoiser.cifar10_uncond_vp(): missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, shape mismatches {shapes[:5]}")
    return "layout matches EDMDenoiser.cifar10_uncond_vp()"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="EDM network pickle (path or URL), trusted files only")
    parser.add_argument("dest", help="output .safetensors file")
    args = parser.parse_args()
    state = convert(args.source, args.dest)
    note = _check_layout(state)
    print(f"wrote {len(state)} tensors ({sum(v.numel() for v in state.values()):,} elements) to {args.dest}; {note}")


if __name__ == "__main__":
    main()
