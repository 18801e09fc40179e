"""Camera RAW files the tests write themselves: a minimal DNG that LibRaw (rawpy) reads."""

import numpy as np
import tifffile


def write_tiny_dng(
    path,
    cfa: np.ndarray,
    black: int | tuple[int, int, int, int],
    white: int,
    *,
    pattern: str = "RGGB",
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> None:
    """A minimal DNG: uint16 mosaic [H, W] (LibRaw refuses one much smaller than 32 x 48) with
    its CFA pattern, BlackLevel (one, or one per 2x2 cell position), WhiteLevel and the
    AsShotNeutral of the R, G, B white-balance multipliers `white_balance` (their inverses)."""
    blacks = (black,) if np.isscalar(black) else tuple(black)
    neutral = [v for m in white_balance for v in (1000, round(1000 * m))]
    extratags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "pdr_jax test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, tuple("RGB".index(c) for c in pattern), True),  # CFAPattern
        *([(50713, "H", 2, (2, 2), True)] if len(blacks) == 4 else []),  # BlackLevelRepeatDim
        (50714, "H", len(blacks), blacks if len(blacks) > 1 else blacks[0], True),  # BlackLevel
        (50717, "H", 1, white, True),  # WhiteLevel
        (
            50721,
            "2i",
            9,
            (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1),
            True,
        ),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, tuple(neutral), True),  # AsShotNeutral
    ]
    tifffile.imwrite(path, cfa, photometric=32803, extratags=extratags, subfiletype=0)
