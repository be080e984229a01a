"""land_core.losses"""
