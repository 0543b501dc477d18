"""The headline's disagreement check and fall-back (relmon.analysis.robust, issue 18)."""

import math

import pytest

from relmon.analysis.robust import headline


def test_default_kept_while_the_median_of_all_lies_inside_its_interval():
    est = {"regression_relevance": (0.80, 0.70, 0.90), "atc": (0.78, 0.6, 0.9), "doc": (0.75, 0.6, 0.9),
           "cbpe_isotonic": (0.76, 0.6, 0.9)}
    h = headline(est, "regression_relevance")
    assert (h["estimator"], h["estimate"], h["fallback"]) == ("regression_relevance", 0.80, False)
    assert h["ensemble"] == pytest.approx(0.77) and h["disagreement"] == pytest.approx(0.03)


def test_falls_back_to_the_median_when_the_default_breaks():
    """The issue's case: the default says 0.66 [0.60, 0.72] while ATC, DoC and CBPE say 0.95-0.97: the
    median of all four (0.955) is outside the default's interval → headline 0.955, interval spanning
    both [0.60, 0.955], disagreement 0.295.

    Mutation caught: comparing the median with the default's point estimate instead of its interval
    (or never falling back)."""
    est = {"regression_relevance": (0.66, 0.60, 0.72), "atc": (0.97, 0.9, 1.0), "doc": (0.95, 0.88, 1.0),
           "cbpe_isotonic": (0.96, 0.9, 1.0)}
    h = headline(est, "regression_relevance")
    assert h["fallback"] and h["estimator"] == "median_of_all"
    assert (h["estimate"], h["lower"], h["upper"]) == pytest.approx((0.955, 0.60, 0.955))
    assert h["disagreement"] == pytest.approx(0.295)


def test_missing_default_gives_no_headline_and_nan_disagreement():
    h = headline({"atc": (0.9, 0.8, 1.0)}, "cot")
    assert math.isnan(h["estimate"]) and math.isnan(h["disagreement"]) and not h["fallback"]
