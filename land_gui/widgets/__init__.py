"""land_gui.widgets"""
