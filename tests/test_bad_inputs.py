"""Property test: bad images are refused with a clear error before any compute; good ones run."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustwrap import PurifyConfig, RobustWrapper

from .tiny import tiny_classifier, tiny_unet

BAD_KINDS = ["not_tensor", "integer", "bool", "rank", "empty", "channels", "size", "nan", "inf", "above", "below"]


class CallCounter:
    def __init__(self, *modules):
        self.calls = 0
        for module in modules:
            module.register_forward_pre_hook(self._count)

    def _count(self, module, inputs):
        self.calls += 1


@pytest.fixture(scope="module")
def counted_wrapper():
    classifier, unet = tiny_classifier(), tiny_unet()
    counter = CallCounter(classifier, unet)
    wrapper = RobustWrapper(classifier, unet, PurifyConfig(steps=5, votes=2), image_size=16)
    return wrapper, counter


@st.composite
def image_batches(draw):
    kind = draw(st.sampled_from(["good"] * len(BAD_KINDS) + BAD_KINDS))
    batch = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    shape = [batch, 3, 16, 16]
    if kind == "rank":
        shape = draw(st.sampled_from([[16, 16], [3, 16, 16], [1, batch, 3, 16, 16]]))
    elif kind == "empty":
        shape[0] = 0
    elif kind == "channels":
        shape[1] = draw(st.sampled_from([1, 2, 4]))
    elif kind == "size":
        shape[2:] = draw(st.sampled_from([[8, 8], [16, 17], [32, 32], [15, 16]]))
    seed = draw(st.integers(0, 2**16))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    if kind in ("nan", "inf", "above", "below"):
        index = tuple(draw(st.integers(0, n - 1)) for n in shape)
        x[index] = {"nan": float("nan"), "inf": float("inf"), "above": 1.0 + 2**-6, "below": -(2**-6)}[kind]
    elif kind == "integer":
        x = (x * 255).to(draw(st.sampled_from([torch.uint8, torch.int32, torch.int64])))
    elif kind == "bool":
        x = x > 0.5
    elif kind == "not_tensor":
        x = draw(st.sampled_from([x.numpy().astype(np.float32) if dtype != torch.bfloat16 else x.float().numpy(), x.tolist(), None]))
    return kind, x


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_batches(), entry=st.sampled_from(["forward", "predict", "purify", "mask"]))
def test_bad_inputs_are_refused_before_compute_and_good_ones_run(counted_wrapper, case, entry):
    wrapper, counter = counted_wrapper
    kind, x = case
    before = counter.calls
    call = getattr(wrapper, entry)
    if kind == "good":
        with torch.no_grad():
            out = call(x)
        expected = {"forward": (x.shape[0], 10), "predict": (x.shape[0],), "purify": tuple(x.shape), "mask": (x.shape[0], 1, 16, 16)}
        assert tuple(out.shape) == expected[entry]
        assert torch.isfinite(out.float()).all()
        return
    error = TypeError if kind in ("not_tensor", "integer", "bool") else ValueError
    with pytest.raises(error) as raised:
        call(x)
    assert counter.calls == before, "a network ran before the input was refused"
    message = str(raised.value)
    assert "expected" in message or "NaN" in message, message
