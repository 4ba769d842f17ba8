"""The raw-GL rasteriser behind :class:`hoigen.render.renderer.Renderer`: moderngl over EGL, no scene graph.

One standalone OpenGL 3.3 context (EGL: Mesa llvmpipe on CPU-only machines, the vendor driver on
GPU boxes; headless either way). Meshes are uploaded once as vertex buffers (per face corner:
mesh-frame position, shading normal, face normal) and drawn with per-instance uniforms; a hand
mesh that changes every frame rewrites its buffer in place.

Two passes per frame, each into one framebuffer with several attachments, read back once:

- *visible pass* (depth test, 32-bit float depth buffer; no multisampling, both faces drawn): the
  rasteriser interpolates (perspective-correct) each fragment's camera-frame position, shading
  normal and NOCS coordinate at the pixel centre, and the fragment shader writes the shaded colour,
  the encoded normal (``normal_colour``, rounded) and NOCS (rounded) as 8-bit colours, the
  instance's seg id, and the camera-frame z as a float. Camera z, NOCS and the normal are affine
  in the mesh position over a triangle, so interpolating them at the pixel centre gives the exact
  ray-triangle values up to float32 rounding.
- *amodal pass* (no depth test, MAX blending): every instance sets its own coverage channel (4
  instances per RGBA8 attachment), and the hand / every other instance leave their nearest -z in
  a float attachment (read at the joints' pixels only, for joint visibility).

Pixel convention: pixel (u, v) (OpenCV, row 0 on top) is sampled at its centre, i.e. window
position (u + 0.5, v + 0.5) with the projection mapping v to window y directly, so read-back rows
come out top first and no flip is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from hoigen.errors import HoigenError

MAX_LIGHTS = 3
COVERAGE_PER_ATTACHMENT = 4
MAX_INSTANCES = 16  # hand + object + table + 13 distractors (hoigen.data.contract)
FAR_NEG_Z = -1e30

VERTEX_SHADER = """
#version 330
uniform mat4 mv;        // mesh frame -> camera frame (OpenCV: x right, y down, z forward)
uniform mat3 nmat;      // normals: mesh frame -> camera frame
uniform mat4 nocs_T;    // mesh frame -> NOCS
uniform vec4 proj;      // clip.x = proj.x * x + proj.y * z, clip.y = proj.z * y + proj.w * z
uniform vec2 zmap;      // clip.z = zmap.x * z + zmap.y
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_fnormal;
in vec2 in_uv;
in vec3 in_color;
out vec3 v_cam;
out vec3 v_normal;
flat out vec3 v_fnormal;
out vec3 v_nocs;
out vec2 v_uv;
out vec3 v_color;
void main() {
    vec4 p = mv * vec4(in_pos, 1.0);
    v_cam = p.xyz;
    v_color = in_color;
    v_normal = nmat * in_normal;
    v_fnormal = nmat * in_fnormal;
    v_nocs = (nocs_T * vec4(in_pos, 1.0)).xyz;
    v_uv = in_uv;
    gl_Position = vec4(proj.x * p.x + proj.y * p.z, proj.z * p.y + proj.w * p.z, zmap.x * p.z + zmap.y, p.z);
}
"""

VISIBLE_SHADER = """
#version 330
const float FACING_EPS = 0.02;
uniform int smooth_normals;
uniform int round_normal;
uniform int has_nocs;
uniform float seg;
uniform vec3 base_color;
uniform int textured;        // 1: albedo from the texture (sRGB) at v_uv
uniform int vertex_colored;  // 1: albedo from the vertex colours (sRGB)
uniform sampler2D tex;
uniform float ambient;
uniform vec3 light_dir[3];   // camera frame, the direction light travels
uniform vec3 light_color[3]; // zero for unused lights
in vec3 v_cam;
in vec3 v_normal;
flat in vec3 v_fnormal;
in vec3 v_nocs;
in vec2 v_uv;
in vec3 v_color;
layout(location = 0) out vec4 o_shade;
layout(location = 1) out vec4 o_normal;
layout(location = 2) out vec4 o_nocs;
layout(location = 3) out float o_z;
layout(location = 4) out float o_seg;

vec3 safe_normalize(vec3 v, vec3 fallback) {
    float l = length(v);
    return l > 0.0 ? v / l : fallback;
}

void main() {
    vec3 ray = normalize(v_cam);
    vec3 f = safe_normalize(v_fnormal, vec3(0.0));
    if (dot(f, ray) > 0.0) f = -f;                    // back faces flipped toward the camera
    vec3 n = f;
    if (smooth_normals == 1) {
        n = safe_normalize(v_normal, vec3(0.0));
        float side = dot(n, f);
        if (side < 0.0) n = -n;
        if (side == 0.0) n = f;
    }
    float c = dot(n, ray);
    if (c > -FACING_EPS) n = safe_normalize(n - (c + FACING_EPS) * ray, -ray);  // bend toward the camera
    vec3 enc = 127.5 - 127.5 * n;
    o_normal = vec4((round_normal == 1 ? floor(enc + 0.5) : enc) / 255.0, 1.0);
    vec3 q = floor(clamp((v_nocs + 0.5) * 255.0, 0.0, 255.0) + 0.5) / 255.0;
    o_nocs = vec4(has_nocs == 1 ? q : vec3(0.0), 1.0);
    o_seg = seg / 255.0;
    o_z = v_cam.z;
    // display-space albedo times the light (a surface lit squarely by the default light shows its colour)
    vec3 albedo = textured == 1 ? texture(tex, v_uv).rgb : (vertex_colored == 1 ? v_color : base_color);
    vec3 light = ambient + light_color[0] * max(-dot(n, light_dir[0]), 0.0)
                         + light_color[1] * max(-dot(n, light_dir[1]), 0.0)
                         + light_color[2] * max(-dot(n, light_dir[2]), 0.0);
    o_shade = vec4(clamp(albedo * light, 0.0, 1.0), 1.0);
}
"""

AMODAL_VERTEX_SHADER = """
#version 330
uniform mat4 mv;
uniform vec4 proj;
uniform vec2 zmap;
in vec3 in_pos;
out float v_z;
void main() {
    vec4 p = mv * vec4(in_pos, 1.0);
    v_z = p.z;
    gl_Position = vec4(proj.x * p.x + proj.y * p.z, proj.z * p.y + proj.w * p.z, zmap.x * p.z + zmap.y, p.z);
}
"""

AMODAL_SHADER = """
#version 330
uniform int slot;
uniform int is_hand;
in float v_z;
layout(location = 0) out vec2 o_negz;
layout(location = 1) out vec4 o_cov0;
layout(location = 2) out vec4 o_cov1;
layout(location = 3) out vec4 o_cov2;
layout(location = 4) out vec4 o_cov3;
vec4 channel(int first) {
    return vec4(slot == first, slot == first + 1, slot == first + 2, slot == first + 3);
}
void main() {
    o_cov0 = channel(0);
    o_cov1 = channel(4);
    o_cov2 = channel(8);
    o_cov3 = channel(12);
    o_negz = is_hand == 1 ? vec2(-v_z, -1e30) : vec2(-1e30, -v_z);
}
"""


def create_context():  # noqa: ANN201 - moderngl.Context
    """A standalone headless OpenGL 3.3 context over EGL; a clear :class:`HoigenError` if there is none."""
    try:
        import moderngl

        return moderngl.create_standalone_context(require=330, backend="egl")
    except Exception as exc:  # noqa: BLE001 - any failure here is a setup problem for the user
        raise HoigenError(
            f"render: cannot create an EGL OpenGL context ({type(exc).__name__}: {exc}); install moderngl and "
            "Mesa EGL (libegl1, libgl1-mesa-dri), or set HOIGEN_GL=pyrender"
        ) from exc


def projection(K: np.ndarray, width: int, height: int, znear: float, zfar: float) -> tuple[tuple, tuple]:
    """Uniforms mapping OpenCV camera coordinates to clip space so that pixel (u, v) of ``K``
    (centres at integer coordinates) is sampled at window position (u + 0.5, v + 0.5)."""
    fx, skew, cx = K[0]
    _, fy, cy = K[1]
    if abs(skew) > 1e-12:
        raise HoigenError("render: camera K has a skew term; use K with K[0, 1] = 0")
    proj = (2.0 * fx / width, 2.0 * (cx + 0.5) / width - 1.0, 2.0 * fy / height, 2.0 * (cy + 0.5) / height - 1.0)
    zmap = ((zfar + znear) / (zfar - znear), -2.0 * zfar * znear / (zfar - znear))
    return proj, zmap


def corner_buffer(triangles: np.ndarray, corners: np.ndarray, face_unit: np.ndarray,
                  uv: np.ndarray | None = None, colors: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Interleaved float32 vertex data per face corner (:data:`ATTRIBUTES`): position, shading
    normal, face normal, texture uv (F,3,2), sRGB colour in [0, 1] (F,3,3); absent ones are 0."""
    n = len(triangles) * 3
    out = np.empty((n, 14), dtype=np.float32)
    out[:, 0:3] = triangles.reshape(-1, 3)
    out[:, 3:6] = corners.reshape(-1, 3)
    out[:, 6:9] = np.repeat(face_unit, 3, axis=0)
    out[:, 9:11] = 0.0 if uv is None else uv.reshape(-1, 2)
    out[:, 11:14] = 0.0 if colors is None else colors.reshape(-1, 3)
    return out


ATTRIBUTES = (("in_pos", 3), ("in_normal", 3), ("in_fnormal", 3), ("in_uv", 2), ("in_color", 3))  # float32


def _layout(prog, vbo) -> tuple:  # noqa: ANN001
    """The vertex-array layout of :func:`corner_buffer` data for ``prog``, skipping attributes the
    compiled program does not use."""
    fmt, names = [], []
    for name, n in ATTRIBUTES:
        if name in prog:
            fmt.append(f"{n}f")
            names.append(name)
        else:
            fmt.append(f"{4 * n}x")
    return (vbo, " ".join(fmt), *names)


class GLMesh:
    """One mesh on the GPU: its vertex buffer and a vertex array per program."""

    def __init__(self, gl: GLCore, data: np.ndarray) -> None:
        self.gl = gl
        self.vertices = len(data)
        self.vbo = gl.ctx.buffer(data.tobytes())
        self.vao_visible = gl.ctx.vertex_array(gl.visible, [_layout(gl.visible, self.vbo)])
        self.vao_amodal = gl.ctx.vertex_array(gl.amodal, [_layout(gl.amodal, self.vbo)])
        self.texture = None

    def set_texture(self, image: np.ndarray) -> None:
        """Attach an sRGB texture (H,W,3|4 uint8, row 0 on top; uv (0, 0) is its bottom-left corner)."""
        image = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[::-1, :, :3])
        self.texture = self.gl.ctx.texture((image.shape[1], image.shape[0]), 3, image.tobytes(), alignment=1)
        self.texture.build_mipmaps()
        self.texture.repeat_x = self.texture.repeat_y = True

    def update(self, data: np.ndarray) -> None:
        """Rewrite the vertex data (same number of vertices: the faces are fixed), else reallocate."""
        if len(data) == self.vertices:
            self.vbo.write(data.tobytes())
            return
        self.release()
        self.__init__(self.gl, data)

    def release(self) -> None:
        for obj in (self.vao_visible, self.vao_amodal, self.vbo, self.texture):
            if obj is not None:
                obj.release()
        self.texture = None


class Targets:
    """The two framebuffers of one image size (and normal precision)."""

    def __init__(self, gl: GLCore, width: int, height: int, float_normal: bool) -> None:
        ctx, size = gl.ctx, (width, height)
        self.size = size
        self.shade = ctx.texture(size, 4)
        self.normal = ctx.texture(size, 4, dtype="f4" if float_normal else "f1")
        self.nocs = ctx.texture(size, 4)
        self.z = ctx.texture(size, 1, dtype="f4")
        self.seg = ctx.texture(size, 1)
        self.depth = ctx.depth_texture(size)
        self.visible = ctx.framebuffer([self.shade, self.normal, self.nocs, self.z, self.seg], self.depth)
        self.coverage = [ctx.texture(size, 4) for _ in range(MAX_INSTANCES // COVERAGE_PER_ATTACHMENT)]
        self.negz = ctx.texture(size, 2, dtype="f4")
        # amodal[k]: negz plus the first k + 1 coverage attachments (only as many as the frame needs)
        self.amodal = [ctx.framebuffer([self.negz, *self.coverage[: k + 1]]) for k in range(len(self.coverage))]


class GLCore:
    """Context, programs and per-size framebuffers: one per process (:func:`shared_core`), made
    current around every frame (:meth:`current`) since pyrender's contexts may be current."""

    def __init__(self) -> None:
        self.ctx = create_context()
        self.visible = self.ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=VISIBLE_SHADER)
        self.amodal = self.ctx.program(vertex_shader=AMODAL_VERTEX_SHADER, fragment_shader=AMODAL_SHADER)
        self._targets: dict[tuple[int, int, bool], Targets] = {}
        self._depth = 0

    @contextmanager
    def current(self) -> Iterator[GLCore]:
        """Make the context current for the block (re-entrant: leaving the EGL context makes none
        current, so only the outermost block enters and leaves it)."""
        if self._depth == 0:
            self.ctx.__enter__()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.ctx.__exit__(None, None, None)

    def targets(self, width: int, height: int, float_normal: bool) -> Targets:
        key = (width, height, float_normal)
        if key not in self._targets:
            self._targets[key] = Targets(self, width, height, float_normal)
        return self._targets[key]

    def release(self) -> None:
        self._targets.clear()
        self.ctx.release()


_CORE: GLCore | None = None


def shared_core() -> GLCore:
    """The process's one :class:`GLCore` (created on first use; renderers of every size share it)."""
    global _CORE
    if _CORE is None:
        _CORE = GLCore()
    return _CORE
