"""The one interval formula (Wilson 95%) against values computed independently."""

import math

import pytest

from robustwrap.statistics import Accuracy, format_accuracy, interval_record, wilson_interval


@pytest.mark.parametrize(
    "successes, n, low, high",
    [  # roots of (p - q)^2 = z^2 q (1 - q) / n found by bisection (not the closed form);
       # 0/10 and 5/10 are the textbook values [0, 0.2775] and [0.2366, 0.7634]
        (0, 10, 0.0, 0.27753279986288926),
        (10, 10, 0.7224672001371109, 1.0),
        (5, 10, 0.236593090512564, 0.7634069094874361),
        (1, 64, 0.0027635419233375076, 0.08334101600094268),
        (81, 263, 0.2552885198782743, 0.3662095769828001),
    ],
)
def test_wilson_matches_known_values(successes, n, low, high):
    got = wilson_interval(successes / n, n)
    assert got == pytest.approx((low, high), abs=1e-8)


def test_wilson_by_its_definition_and_properties():
    z = 1.959963984540054
    for p, n in ((0.3, 17), (0.99, 1000), (0.0, 1), (1.0, 3)):
        low, high = wilson_interval(p, n)
        # the interval's ends solve |p - q| = z sqrt(q (1 - q) / n) (the score test's boundary)
        for q in (low, high):
            if 0 < q < 1:
                assert abs(p - q) == pytest.approx(z * math.sqrt(q * (1 - q) / n), abs=1e-12)
        assert 0.0 <= low <= p <= high <= 1.0
    assert wilson_interval(0.0, 50)[1] > 0  # 0% is never reported as exact
    narrow, wide = wilson_interval(0.5, 1000), wilson_interval(0.5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


@pytest.mark.parametrize("p, n", [(-0.1, 10), (1.5, 10), (float("nan"), 10), (0.5, 0), (0.5, 2.5), (0.5, True)])
def test_bad_arguments_are_refused(p, n):
    with pytest.raises(ValueError):
        wilson_interval(p, n)


def test_formatting_and_comparisons():
    assert format_accuracy(0.5, 10) == "50.0% [23.7, 76.3]"
    assert interval_record(0.5, 10) == [0.236593, 0.763407]
    a, b = Accuracy(0.1, 100), Accuracy(0.3, 100)
    assert a.below(b) and b.above(a) and not a.below(Accuracy(0.12, 100))
    assert str(a) == format_accuracy(0.1, 100)


def test_one_interval_formula_in_one_place():
    """No module computes a binomial standard error of its own (the four copies this replaced)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"(\w+) \* \(1 - \1\)|stderr|_se\b")  # p * (1 - p), or a standard error's name
    for path in [*sorted((root / "robustwrap").rglob("*.py")), *sorted((root / "cli").glob("*.py"))]:
        if path.name != "statistics.py":
            text = path.read_text()
            assert not pattern.search(text), f"{path.relative_to(root)}: {pattern.search(text).group(0)!r}"


def test_paired_sign_test_is_mcnemars_exact_test():
    from robustwrap.statistics import paired_sign_test

    assert paired_sign_test(0, 0) == 1.0
    assert paired_sign_test(8, 0) == pytest.approx(2 / 256)  # all 8 changes one way
    assert paired_sign_test(7, 2) == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert paired_sign_test(2, 7) == paired_sign_test(7, 2) and paired_sign_test(3, 3) == 1.0
    with pytest.raises(ValueError):
        paired_sign_test(-1, 2)
