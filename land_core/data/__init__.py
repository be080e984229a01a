"""land_core.data"""
