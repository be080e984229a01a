"""LAND Studio's engine: volumes, condition masks, data, models, diffusion, training, generation.

Headless by design: nothing in here imports Qt, VTK or ``land_gui``.
"""

__version__ = "0.1.0"
