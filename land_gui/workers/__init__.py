"""land_gui.workers"""
