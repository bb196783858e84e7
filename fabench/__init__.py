"""fabench: benchmark feedback-alignment learning rules on deep convolutional networks.

The package is split by concern: ``fabench.rules`` (how errors travel backward),
``fabench.archs`` (which networks), ``fabench.data`` (which images), ``fabench.train``
(one run), ``fabench.tasks`` (grids of runs) and ``fabench.report`` (tables and figures).
Heavy libraries (torch, timm) are imported inside those modules, never here, so that
``fabench --help`` stays fast.
"""

__version__ = "0.1.0"
