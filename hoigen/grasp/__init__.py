"""Grasp synthesis, approach trajectories and grasp quality metrics.

The package is also the stage's API function: ``hoigen.grasp(...)`` calls :func:`hoigen.api.grasp`.
"""

import sys

from hoigen import StagePackage

sys.modules[__name__].__class__ = StagePackage
