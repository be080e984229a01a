"""land_gui.viewers"""
