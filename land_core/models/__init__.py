"""land_core.models"""
