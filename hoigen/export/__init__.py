"""Dataset writers (NOCS CAMERA layout, BOP) and the export stage.

The package is also the stage's API function: ``hoigen.export(...)`` calls :func:`hoigen.api.export`.
"""

import sys

from hoigen import StagePackage

sys.modules[__name__].__class__ = StagePackage
