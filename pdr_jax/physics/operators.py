"""Forward operators: what the detector measures of a clean image x, before the noise.

    y ~ Poisson(s * A(x) + b) + N(0, r^2)          A: [B, H, W, C_in] -> [B, H, W, C_out]

`Identity` (every pixel and channel measured: a denoising problem) and `Mosaic` (a colour filter
array: one colour per pixel, scaled by that channel's sensitivity, the other two never measured:
a camera RAW frame). Each is one small object with `forward`, `adjoint` and the channel counts,
so that the likelihood, the guidance, the chi-square and the tiling ask it instead of branching
on the kind of data (../shared/STYLE.md section 11; deepinv's `physics.A` / `A_adjoint`). Both
act pixel by pixel, so a tile whose top-left corner is at (top, left) of the image is measured
by the operator `at(top, left)`: the same operator, with the mosaic's colour phase shifted.

The noise model itself (pdr_jax.physics.noise) sees only A(x): its log-likelihoods and their
closed-form gradients are per measured pixel, and the gradient with respect to x is the adjoint
of the gradient with respect to A(x) (linear A), which `jax.vjp` gives as well.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

# The colour (0 R, 1 G, 2 B) of each pixel of the 2x2 cell, row by row.
CFA_PATTERNS = {
    "RGGB": ((0, 1), (1, 2)),
    "BGGR": ((2, 1), (1, 0)),
    "GRBG": ((1, 0), (2, 1)),
    "GBRG": ((1, 2), (0, 1)),
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """Every pixel and channel measured as it is: A(x) = x."""

    channels: int = 1

    channels_in = property(lambda self: self.channels)
    channels_out = property(lambda self: self.channels)

    def forward(self, x):
        """x [B, H, W, C] -> the same."""
        return x

    def adjoint(self, y):
        return y

    def at(self, top: int, left: int) -> Identity:
        """The operator of a tile at (top, left): the same."""
        del top, left
        return self


@dataclasses.dataclass(frozen=True)
class Mosaic:
    """A colour filter array: pixel (h, w) measures colour c = cfa(h, w) of x, times gains[c].

    pattern: a key of CFA_PATTERNS, the 2x2 cell at the operator's origin. gains: the channels'
    relative sensitivities (R, G, B), the inverses of a RAW file's white-balance multipliers,
    so that x is white-balanced linear camera RGB. phase: (row, column) of the origin within the
    cell, (0, 0) for a whole image; `at` sets it for a tile.
    """

    pattern: str = "RGGB"
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    phase: tuple[int, int] = (0, 0)

    channels_in = 3
    channels_out = 1

    def __post_init__(self):
        if self.pattern not in CFA_PATTERNS:
            raise ValueError(
                f"unknown CFA pattern {self.pattern!r}; expected one of {tuple(CFA_PATTERNS)}"
            )
        if len(self.gains) != 3 or not all(float(g) > 0 for g in self.gains):
            raise ValueError(f"gains must be 3 numbers > 0 (R, G, B), got {self.gains}")

    def colours(self, height: int, width: int) -> np.ndarray:
        """[H, W] int: the colour each pixel measures (0 R, 1 G, 2 B), from this phase."""
        cell = np.asarray(CFA_PATTERNS[self.pattern])
        rows = (np.arange(height) + self.phase[0]) % 2
        columns = (np.arange(width) + self.phase[1]) % 2
        return cell[rows[:, None], columns[None, :]]

    def weights(self, height: int, width: int) -> np.ndarray:
        """[H, W, 3] float32: gains[c] at each pixel's colour c, 0 at the other two."""
        one_hot = np.eye(3, dtype=np.float32)[self.colours(height, width)]
        return one_hot * np.asarray(self.gains, np.float32)

    def forward(self, x):
        """x [B, H, W, 3] -> the mosaic [B, H, W, 1]."""
        weights = self.weights(*x.shape[-3:-1])
        return jnp.sum(x * weights, axis=-1, keepdims=True)

    def adjoint(self, y):
        """y [B, H, W, 1] -> [B, H, W, 3]: each value back in its colour, times its gain."""
        return y * self.weights(*y.shape[-3:-1])

    def at(self, top: int, left: int) -> Mosaic:
        """The operator of a tile whose top-left pixel is (top, left) of this one's."""
        phase = ((self.phase[0] + top) % 2, (self.phase[1] + left) % 2)
        return dataclasses.replace(self, phase=phase)
