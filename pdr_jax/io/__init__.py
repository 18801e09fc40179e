"""pdr_jax.io: measurement files in, restorations out, as pdr-restore does it.

    measurement = read_measurement("frame.fits", units="adu", gain="auto", read_noise="auto",
                                   scale="auto")                       # electrons, mask, s, r, b
    physics = measurement.physics("astronomy")
    restored = restore_measurement(prior, measurement, physics, key=jax.random.key(0))
    write_restoration("restored.fits", restored, measurement, physics, history=["..."])

readers.py (with tiff.py and meta.py): the image file readers, stored values and what the file
says about them; measurement.py: a file as electrons with its calibration and noise parameters;
restoration.py: every frame and channel group through pdr_jax.restore.restore, and the file's
report; writers.py: outputs with the input's metadata, atomically, the preview and the report.
Importing this package does not import jax.
"""

from pdr_jax.io.measurement import (
    Measurement,
    PhysicsMismatch,
    check_measurement,
    read_measurement,
    read_psf,
)
from pdr_jax.io.readers import ImageMeta, UnreadableImageError, is_supported, read_image
from pdr_jax.io.restoration import MeasurementRestoration, restoration_report, restore_measurement
from pdr_jax.io.writers import (
    OUTPUT_FORMATS,
    write_image,
    write_preview,
    write_report,
    write_restoration,
    write_together,
)

__all__ = [
    "OUTPUT_FORMATS",
    "ImageMeta",
    "Measurement",
    "MeasurementRestoration",
    "PhysicsMismatch",
    "UnreadableImageError",
    "check_measurement",
    "is_supported",
    "read_image",
    "read_measurement",
    "read_psf",
    "restoration_report",
    "restore_measurement",
    "write_image",
    "write_preview",
    "write_report",
    "write_restoration",
    "write_together",
]
