"""land_core.diffusion"""
