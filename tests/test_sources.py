"""The point-source counter of the benchmark (pdr_jax.evaluation.sources) on synthetic star
fields with known stars."""

import numpy as np
import pytest

from pdr_jax.evaluation import sources

S, R, B = 50.0, 3.0, 2.5
STARS = [(20, 30), (64, 64), (100, 40), (40, 100), (90, 110)]


def _field(stars=STARS, amplitude=0.5, size=128):
    rows, cols = np.mgrid[:size, :size]
    image = np.full((size, size), 0.05) + 0.02 * np.sin(cols / 20.0)  # sky and a smooth nebula
    for y, x in stars:
        image += amplitude * np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * 1.2**2))
    return image


def test_the_stars_of_a_clean_field_are_found_where_they_are():
    clean = _field()
    found = sources.detect(clean, sources.noise_variance(clean, S, R, B))
    assert sorted(map(tuple, found)) == sorted(STARS)
    # Stars at ~2.5 sigma of the filtered noise (the ones above: ~9) are not ones the
    # measurement can show.
    faint = _field(amplitude=0.1)
    assert len(sources.detect(faint, sources.noise_variance(faint, S, R, B))) == 0


def test_invented_and_lost_stars_are_counted():
    clean = _field()
    assert sources.count(clean, clean, S, R, B) == {
        "true": 5,
        "detected": 5,
        "false": 0,
        "missed": 0,
    }
    invented = _field(STARS + [(70, 20), (15, 80)])
    assert sources.count(clean, invented, S, R, B) == {
        "true": 5,
        "detected": 7,
        "false": 2,
        "missed": 0,
    }
    lost = _field(STARS[1:])
    assert sources.count(clean, lost, S, R, B) == {
        "true": 5,
        "detected": 4,
        "false": 0,
        "missed": 1,
    }
    shifted = _field([(y + 1, x - 1) for y, x in STARS])  # within the 2 px match radius
    assert sources.count(clean, shifted, S, R, B)["false"] == 0
    empty = np.full((128, 128), 0.05)
    assert sources.count(empty, clean[..., None], S, R, B) == {
        "true": 0,
        "detected": 5,
        "false": 5,
        "missed": 0,
    }


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="expected"):
        sources.detect(np.zeros((8, 8)), np.zeros((8, 9)))


def test_aperture_photometry_of_the_true_stars():
    """The truth has no flux error; a restoration 10 % too bright everywhere (sky included) has a
    bias of +0.10 and no scatter; one star dimmed by half shows in the scatter, not the median
    (5 stars); a crop without stars has none."""
    clean = _field()
    s, r, b = 100.0, 2.0, 1.0
    assert sources.photometry(clean, clean, s, r, b) == {"bias": 0.0, "scatter": 0.0}
    brighter = sources.photometry(clean, 1.1 * clean, s, r, b)
    assert brighter["bias"] == pytest.approx(0.10, abs=1e-9) and brighter["scatter"] < 1e-9
    dimmed = clean.copy()
    row, col = STARS[0]
    dimmed[row - 4 : row + 5, col - 4 : col + 5] *= 0.5  # the star, not its sky annulus
    photometry = sources.photometry(clean, dimmed, s, r, b)
    assert abs(photometry["bias"]) < 0.02 and photometry["scatter"] < 0.3
    empty = np.full((64, 64), 0.05)
    assert sources.photometry(empty, empty, s, r, b) == {"bias": None, "scatter": None}
