"""Qt panels and dialogs around the views: the 2x2 ``view_grid``, the ``tools_panel`` (tool, brush,
mask commands), the ``nodule_panel`` and the ``display_panel``; the ``shortcuts_dialog`` and the
``restore_dialog`` (unsaved work after a crash)."""
