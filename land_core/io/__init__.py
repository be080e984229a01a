"""Reading and writing volumes, masks and JSON, always atomically.

``read_volume`` / ``write_volume`` handle NIfTI, NRRD and MetaImage files and DICOM folders.
"""

from land_core.io.atomic import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic
from land_core.io.dicom import (
    list_dicom_series,
    read_dicom_series,
    read_dicom_series_with_slices,
    write_dicom_series,
)
from land_core.io.images import FORMATS, image_format, read_mask, read_volume, write_volume

__all__ = [
    "FORMATS",
    "atomic_path",
    "image_format",
    "list_dicom_series",
    "read_dicom_series",
    "read_dicom_series_with_slices",
    "read_mask",
    "read_volume",
    "write_bytes_atomic",
    "write_dicom_series",
    "write_json_atomic",
    "write_text_atomic",
    "write_volume",
]
