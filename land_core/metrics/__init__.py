"""land_core.metrics"""
