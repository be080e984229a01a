"""land_gui.model"""
