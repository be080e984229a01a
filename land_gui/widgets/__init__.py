"""Qt panels around the views: the 2x2 ``view_grid``, the ``nodule_panel`` and the ``display_panel``."""
