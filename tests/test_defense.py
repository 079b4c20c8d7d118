"""The two Defenses: the wrapper and the bare classifier, called alike."""

import torch

from robustwrap import BareClassifier, Defense, Noise, bare, log_mean_probability

from .tiny import tiny_wrapper


def test_both_are_defenses_and_the_bare_classifier_is_one_deterministic_vote(images):
    wrapper = tiny_wrapper(votes=3)
    plain = BareClassifier(wrapper)
    assert isinstance(wrapper, Defense) and isinstance(plain, Defense)
    assert (wrapper.deterministic, plain.deterministic) == (False, True)
    assert bare(plain) is plain and bare(wrapper).wrapper is wrapper
    noise = Noise.seeded([1, 2, 3])
    with torch.no_grad():
        logits = wrapper.classify(images)
        assert torch.equal(plain.vote_logits(images, noise=noise), logits.unsqueeze(0))
        assert torch.equal(plain.scores(images, noise=noise), logits)
        assert torch.equal(plain.predict(images, noise=noise), logits.argmax(1))
        assert torch.equal(plain.decide(logits.unsqueeze(0)), logits.argmax(1))
        assert plain.purify(images, noise=noise) is images and plain.mask(images) is None
        votes = wrapper.vote_logits(images, noise=noise)
        assert votes.shape == (3, 3, 10)
        torch.testing.assert_close(wrapper.scores(images, noise=noise), log_mean_probability(votes), rtol=0, atol=0)
        assert torch.equal(wrapper.predict(images, noise=noise), wrapper.decide(votes))
    assert plain.with_votes(5) is plain and plain.config is None and plain.calls_per_image == 0
    assert wrapper.with_votes(3) is wrapper and wrapper.with_votes(2).config.votes == 2
    assert wrapper.calls_per_image == wrapper.plan.denoiser_calls * 3
