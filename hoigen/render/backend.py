"""The OpenGL backend: which PyOpenGL platform pyrender runs on, chosen before pyrender is imported.

PyOpenGL reads ``PYOPENGL_PLATFORM`` once, at its first import, so the choice must be made before
anything imports ``OpenGL`` or ``pyrender``. Every pyrender import in hoigen therefore goes through
:func:`import_pyrender`.

Choice, in order: env ``HOIGEN_GL``, env ``PYOPENGL_PLATFORM``, else ``"egl"``.

Why EGL by default: pyrender 0.1.45 pins PyOpenGL 3.1.0, whose OSMesa path fails to import; EGL
works headless both on CPU-only machines (Mesa llvmpipe) and on GPU boxes (vendor EGL). ``osmesa``
works with pyrender-maintained or PyOpenGL >= 3.1.10; ``pyglet`` needs a display.

Multisampling: pyrender's offscreen framebuffer is 4x MSAA, and resolving it blends colours at
every triangle edge, which would corrupt the face-id pass that hoigen's exact maps are built on.
:func:`import_pyrender` therefore makes pyrender allocate single-sample framebuffers (it wraps
``glRenderbufferStorageMultisample`` in ``pyrender.renderer`` to ask for 0 samples). Anti-aliasing
of the condition maps is done by supersampling instead (``Renderer(supersample=...)``).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from hoigen.errors import HoigenError

DEFAULT_PLATFORM = "egl"
KNOWN_PLATFORMS = ("egl", "osmesa", "pyglet")


def gl_platform() -> str:
    """The PyOpenGL platform hoigen renders with (see the module docstring for the order)."""
    value = os.environ.get("HOIGEN_GL") or os.environ.get("PYOPENGL_PLATFORM") or DEFAULT_PLATFORM
    value = value.strip().lower()
    if value not in KNOWN_PLATFORMS:
        raise HoigenError(
            f"HOIGEN_GL/PYOPENGL_PLATFORM: unknown OpenGL platform {value!r}; "
            f"use one of {', '.join(KNOWN_PLATFORMS)}"
        )
    return value


def _single_sample_framebuffers(pyrender_renderer: ModuleType) -> None:
    """Make pyrender's offscreen framebuffers single-sample (exact ids; see module docstring)."""
    original = pyrender_renderer.glRenderbufferStorageMultisample
    if getattr(original, "_hoigen_single_sample", False):
        return

    def storage(target, samples, internalformat, width, height):  # noqa: ANN001, ANN202
        return original(target, 0, internalformat, width, height)

    storage._hoigen_single_sample = True  # type: ignore[attr-defined]
    pyrender_renderer.glRenderbufferStorageMultisample = storage


def import_pyrender() -> ModuleType:
    """Select the GL platform, import pyrender and return the module."""
    platform = gl_platform()
    if "OpenGL" in sys.modules and os.environ.get("PYOPENGL_PLATFORM", "").lower() != platform:
        raise HoigenError(
            f"hoigen.render: PyOpenGL was imported before the platform {platform!r} was selected; "
            "import hoigen.render before anything that imports OpenGL, or set PYOPENGL_PLATFORM"
        )
    os.environ["PYOPENGL_PLATFORM"] = platform
    try:
        import pyrender
        import pyrender.renderer
    except Exception as exc:  # noqa: BLE001 - any import failure is a setup problem for the user
        raise HoigenError(
            f"pyrender: cannot import with PYOPENGL_PLATFORM={platform} ({type(exc).__name__}: {exc}); "
            "install Mesa EGL (libegl1, libgl1-mesa-dri) or set HOIGEN_GL to another platform"
        ) from exc
    _single_sample_framebuffers(pyrender.renderer)
    return pyrender
