"""LAND Studio's desktop application (PySide6 + VTK) on top of ``land_core``."""
