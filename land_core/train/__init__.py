"""land_core.train"""
