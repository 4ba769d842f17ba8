"""Cameras, the scene and the render passes (condition maps and annotations).

The package is also the stage's API function: ``hoigen.render(...)`` calls :func:`hoigen.api.render`.
"""

import sys

from hoigen import StagePackage

sys.modules[__name__].__class__ = StagePackage
