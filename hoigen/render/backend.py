"""The OpenGL backend: which renderer draws (:func:`renderer_kind`) and which PyOpenGL platform
pyrender runs on, chosen before pyrender is imported.

``HOIGEN_GL``: ``egl`` (default) = the raw-GL renderer (:mod:`hoigen.render.gl`, moderngl over
EGL); ``pyrender`` = the pyrender renderer (:mod:`hoigen.render.pyrender_renderer`) on EGL;
``osmesa`` / ``pyglet`` = the pyrender renderer on that PyOpenGL platform. pyrender is also used
for asset previews and the baseline pass of ``make bench``.

PyOpenGL reads ``PYOPENGL_PLATFORM`` once, at its first import, so the choice must be made before
anything imports ``OpenGL`` or ``pyrender``. Every pyrender import in hoigen therefore goes through
:func:`import_pyrender`.

PyOpenGL platform, in order: ``HOIGEN_GL`` if it names one, env ``PYOPENGL_PLATFORM``, else ``"egl"``.

Why EGL by default: pyrender 0.1.45 pins PyOpenGL 3.1.0, whose OSMesa path fails to import; EGL
works headless both on CPU-only machines (Mesa llvmpipe) and on GPU boxes (vendor EGL). ``osmesa``
works with pyrender-maintained or PyOpenGL >= 3.1.10; ``pyglet`` needs a display.

Multisampling: pyrender's offscreen framebuffer is 4x MSAA, and resolving it blends colours at
every triangle edge, which would corrupt the face-id pass that hoigen's exact maps are built on.
:func:`import_pyrender` therefore makes pyrender allocate single-sample framebuffers (it wraps
``glRenderbufferStorageMultisample`` in ``pyrender.renderer`` to ask for 0 samples). Anti-aliasing
of the condition maps is done by supersampling instead (``Renderer(supersample=...)``).

Readback: pyrender's own readback blits the framebuffer, reads colour and depth and linearises the
whole depth image in numpy on every pass (about 6 ms at 512x512 here). :func:`install_raw_readback`
replaces it, for one offscreen renderer only, by a plain read of what the pass needs from the
(single-sample) framebuffer: raw window depth in [0, 1] (1 = no surface; :func:`linear_depth`
converts the few pixels that need metres) and, for colour passes, RGBA bytes; both are flipped
views, not copies.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import numpy as np

from hoigen.errors import HoigenError

DEFAULT_PLATFORM = "egl"
KNOWN_PLATFORMS = ("egl", "osmesa", "pyglet")
HOIGEN_GL_VALUES = ("egl", "pyrender", "osmesa", "pyglet")


def renderer_kind() -> str:
    """``"gl"`` (the raw-GL renderer) or ``"pyrender"``, from ``HOIGEN_GL`` (module docstring)."""
    value = (os.environ.get("HOIGEN_GL") or "egl").strip().lower()
    if value not in HOIGEN_GL_VALUES:
        raise HoigenError(f"HOIGEN_GL: unknown value {value!r}; use one of {', '.join(HOIGEN_GL_VALUES)}")
    return "gl" if value == "egl" else "pyrender"


def gl_platform() -> str:
    """The PyOpenGL platform pyrender renders with (see the module docstring for the order)."""
    chosen = (os.environ.get("HOIGEN_GL") or "").strip().lower()
    chosen = "" if chosen == "pyrender" else chosen
    value = chosen or os.environ.get("PYOPENGL_PLATFORM") or DEFAULT_PLATFORM
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


class RawReadback:
    """What the next pass reads back (set by the caller before each pass): ``depth``, and colour as
    RGBA (``rgba``, e.g. face ids viewed as 32-bit integers) or RGB."""

    def __init__(self) -> None:
        self.depth = True
        self.rgba = True


def install_raw_readback(offscreen: object) -> RawReadback:
    """Make ``offscreen`` (a ``pyrender.OffscreenRenderer``) return raw buffers (module docstring).

    A pass then returns raw depth (H,W) float32 for ``DEPTH_ONLY``, else ``(colour (H,W,4|3) uint8,
    raw depth or None)``. Returns the switch that says which buffers the next pass reads.
    """
    from OpenGL import GL

    inner = offscreen._renderer  # type: ignore[attr-defined]
    wants = RawReadback()

    def read(scene, flags):  # noqa: ANN001, ANN202 - pyrender's private signature
        import pyrender

        width, height = inner._main_fb_dims
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, inner._main_fb_ms)  # single-sample: no blit needed
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        depth = None
        if wants.depth or flags & pyrender.RenderFlags.DEPTH_ONLY:
            buf = GL.glReadPixels(0, 0, width, height, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT)
            depth = np.frombuffer(buf, dtype=np.float32).reshape(height, width)[::-1]
        if flags & pyrender.RenderFlags.DEPTH_ONLY:
            return depth
        channels, fmt = (4, GL.GL_RGBA) if wants.rgba else (3, GL.GL_RGB)
        buf = GL.glReadPixels(0, 0, width, height, fmt, GL.GL_UNSIGNED_BYTE)
        return np.frombuffer(buf, dtype=np.uint8).reshape(height, width, channels)[::-1], depth

    inner._read_main_framebuffer = read
    return wants


def linear_depth(raw: np.ndarray, znear: float, zfar: float) -> np.ndarray:
    """Camera-frame z (metres) from raw window depth of a perspective pass; 0 where raw >= 1."""
    raw = np.asarray(raw, dtype=np.float64)
    ndc = 2.0 * raw - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = 2.0 * znear * zfar / (zfar + znear - ndc * (zfar - znear))
    return np.where(raw < 1.0, z, 0.0)
