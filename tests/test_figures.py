"""The Beta(alpha, alpha) density of the MixUp figure, computed without scipy."""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mixmatch.experiments.figures import beta_pdf


def test_beta_pdf_at_known_alphas():
    x = np.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(beta_pdf(x, 1.0), np.ones_like(x), rtol=1e-12)  # uniform
    np.testing.assert_allclose(beta_pdf(x, 2.0), 6 * x * (1 - x), rtol=1e-12)
    np.testing.assert_allclose(beta_pdf(x, 0.5), 1 / (math.pi * np.sqrt(x * (1 - x))), rtol=1e-12)  # arcsine


@given(st.floats(1.0, 50.0))
def test_beta_pdf_is_a_symmetric_density(alpha):
    x = np.linspace(0.0, 1.0, 20001)[1:-1]
    density = beta_pdf(x, alpha)
    np.testing.assert_allclose(density, density[::-1], rtol=1e-9)
    assert abs(density.sum() * (x[1] - x[0]) - 1) < 1e-3
