"""Background work for the app: ``background.FunctionThread`` runs one function off the GUI thread
(lung segmentation, autosave writing) and reports its result or error with Qt signals."""
