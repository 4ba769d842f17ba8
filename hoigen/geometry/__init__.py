"""Image geometry shared by the stages that make condition maps (render, ingest) and training data.

Below every stage (imports only :mod:`hoigen.data.contract`): :mod:`hoigen.geometry.normals` turns a
depth image into ``normal.png`` (DexYCB ingest and ``hoigen render --normals estimated`` use the one
function, so a model trained on estimated normals is fed the same kind at synthesis);
:mod:`hoigen.geometry.crop` crops images to a square (centred, or around the hand-object box) with
the intrinsics and 2D points following.
"""

#: ``--crop`` of ingest and train: ``none`` (the frame, or its centred square with a size) or ``hoi``
#: (the square around the hand-object box, :func:`hoigen.geometry.crop.hoi_crop`).
CROP_MODES = ("none", "hoi")
