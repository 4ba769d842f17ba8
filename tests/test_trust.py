"""Untrusted files: every loader of outside files treats them as data, and a crafted file runs nothing.

Each crafted file would create a marker file if any of its code ran; the tests assert the marker is
absent and that the one-line error names the file (and, for pickles, the refused ``module.name``).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import scipy.sparse as sp
import trimesh
from clirun import run_hoigen

from hoigen.errors import HoigenError
from hoigen.hand.embedded import EMBEDDED_DIR
from hoigen.hand.model import load_hand, load_mano_pickle
from hoigen.trust import MAX_ARRAY_ELEMENTS, check_mesh_file, prefer_safetensors, safe_torch_load

# ----------------------------------------------------------------------------------------------------
# Crafted pickles


class _Call:
    """Pickles as ``func(*args)``: what an attacker writes into a file."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_cmd(marker) -> str:
    return f"{sys.executable} -c \"open(r'{marker}', 'w').close()\""


def _crafted(kind: str, marker) -> bytes:
    """A pickle that would create ``marker`` when loaded by a plain unpickler."""
    code = f"open(r'{marker}', 'w').close()"
    if kind == "os.system":  # protocol 0, the classic
        return f"cos\nsystem\n(S{_touch_cmd(marker)!r}\ntR.".encode()
    if kind == "posix.system inside a MANO dict":  # protocol 4, after harmless arrays
        data = {"v_template": np.zeros((3, 3)), "shapedirs": _Call(os.system, _touch_cmd(marker))}
        return pickle.dumps(data, protocol=4)
    if kind == "builtins.eval (Python 2 name)":
        return f"\x80\x02c__builtin__\neval\n(X{struct.pack('<I', len(code)).decode('latin1')}{code}tR.".encode(
            "latin1"
        )
    if kind == "builtins.exec via INST":
        return f"(S{code!r}\nibuiltins\nexec\n.".encode()
    if kind == "subprocess.Popen":
        return pickle.dumps(_Call(subprocess.Popen, [sys.executable, "-c", code]), protocol=2)
    if kind == "numpy runstring":  # numpy.testing's exec helper
        from numpy.testing._private.utils import runstring

        return pickle.dumps(_Call(runstring, code, {}), protocol=4)
    if kind == "numpy.load of a pickled .npy":  # numpy.load(file, mmap_mode, allow_pickle=True)
        inner = marker.with_suffix(".npy")
        np.save(inner, np.array([_Call(os.system, _touch_cmd(marker))], dtype=object), allow_pickle=True)
        return pickle.dumps(_Call(np.load, str(inner), None, True), protocol=4)
    raise AssertionError(kind)


CRAFTED = {
    "os.system": "os.system",
    "posix.system inside a MANO dict": "system",
    "builtins.eval (Python 2 name)": "eval",
    "builtins.exec via INST": "builtins.exec",
    "subprocess.Popen": "subprocess.Popen",
    "numpy runstring": "runstring",
    "numpy.load of a pickled .npy": "numpy.load",
}


def test_crafted_pickles_really_run_code_with_plain_pickle(tmp_path):
    """The crafted files are live: a plain ``pickle.loads`` creates the marker (so its absence below means
    hoigen refused them, not that they were harmless)."""
    for kind in CRAFTED:
        marker = tmp_path / f"ran-{abs(hash(kind))}"
        data = _crafted(kind, marker)
        try:
            obj = pickle.loads(data, encoding="latin1")
            if isinstance(obj, subprocess.Popen):
                obj.wait()
        except Exception:  # noqa: BLE001 - runstring/eval return values we do not care about
            pass
        assert marker.exists(), kind


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_mano_loader_refuses_crafted_pickles_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(_crafted(kind, marker))
    with pytest.raises(HoigenError) as err:
        load_mano_pickle(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg and CRAFTED[kind] in msg and "\n" not in msg
    assert not marker.exists()
    with pytest.raises(HoigenError):  # through the hand model too (what --mano-dir does)
        load_hand("right", mano_dir=tmp_path)
    assert not marker.exists()


def test_cli_grasp_with_a_crafted_mano_dir_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    mano = tmp_path / "mano"
    mano.mkdir()
    (mano / "MANO_RIGHT.pkl").write_bytes(_crafted("os.system", marker))
    shutil.copy(EMBEDDED_DIR / "MANO_LEFT.pkl", mano / "MANO_LEFT.pkl")
    code, err = run_hoigen(
        "grasp", "--mano-dir", mano, "--out", tmp_path / "out", "--categories", "mug", "--grasps", "1", capsys=capsys
    )
    assert code == 1 and "os.system" in err and str(mano / "MANO_RIGHT.pkl") in err
    assert "Traceback" not in err and not marker.exists()


def test_allowlisted_functions_refuse_hostile_arguments(tmp_path):
    """What the allowlist does let through cannot be turned against the machine either."""
    from hoigen.trust import RestrictedUnpickler

    def load(data: bytes):
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()

    huge = MAX_ARRAY_ELEMENTS * 4
    for data in (
        f"cnumpy\nzeros\n(I{huge}\ntR.".encode(),  # numpy.zeros of a huge shape: no allocation
        f"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I{huge}\ntS'b'\ntR.".encode(),
        f"cnumpy\nndarray\n(I{huge}\ntR.".encode(),  # ndarray is a name for _reconstruct, not callable
        b"c_codecs\nencode\n(Vx\nVrot13\ntR.",  # only latin1 bytes
        b"ccopy_reg\n_reconstructor\n(c__builtin__\nlist\nc__builtin__\nobject\nNtR.",  # only shims
    ):
        with pytest.raises((pickle.UnpicklingError, TypeError)):
            load(data)
    assert load(b"c__builtin__\nset\n((lp0\nI1\naI2\natR.") == {1, 2}  # Python 2 names map to Python 3


def test_python2_protocol0_chumpy_object_loads_through_copy_reg():
    """Protocol 0/1 pickles build objects with ``copy_reg._reconstructor``: allowed for the chumpy stand-ins only."""
    from hoigen.hand.model import _MANOUnpickler, _to_array

    data = b"(dp0\nS'v'\nccopy_reg\n_reconstructor\n(cchumpy.ch\nCh\nc__builtin__\nobject\nNtR"
    data += b"(dS'x'\n(lp1\nF1.5\naF-2.0\nasbs."
    obj = _MANOUnpickler(io.BytesIO(data), encoding="latin1").load()
    np.testing.assert_array_equal(_to_array(obj, "t")["v"], [1.5, -2.0])


# ----------------------------------------------------------------------------------------------------
# Real MANO v1.2 layout, written byte by byte as Python 2's pickle (protocol 2) wrote it


class _G:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Obj:
    """A new-style Python 2 object: NEWOBJ of ``module.name`` then BUILD with ``state``."""

    def __init__(self, module: str, name: str, state: dict) -> None:
        self.cls, self.state = _G(module, name), state


def _py2_pickle(obj) -> bytes:
    """Python 2 pickle protocol 2 bytes: ``str`` as 8-bit strings (BINSTRING), numpy as numpy 1.x on Python 2."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend((b"U" + bytes([len(b)])) if len(b) < 256 else (b"T" + struct.pack("<i", len(b))))
        out.extend(b)

    def save(x) -> None:
        if x is None:
            out.extend(b"N")
        elif isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))
        elif isinstance(x, float):
            out.extend(b"G" + struct.pack(">d", x))
        elif isinstance(x, str):
            string(x.encode("latin1"))
        elif isinstance(x, bytes):
            string(x)
        elif isinstance(x, _G):
            out.extend(f"c{x.module}\n{x.name}\n".encode())
        elif isinstance(x, tuple):
            out.extend(b"(")
            for v in x:
                save(v)
            out.extend(b"t")
        elif isinstance(x, list):
            out.extend(b"](")
            for v in x:
                save(v)
            out.extend(b"e")
        elif isinstance(x, dict):
            out.extend(b"}(")
            for k, v in x.items():
                save(k)
                save(v)
            out.extend(b"u")
        elif isinstance(x, set):
            save(_G("__builtin__", "set"))
            save((sorted(x),))
            out.extend(b"R")
        elif isinstance(x, np.dtype):
            save(_G("numpy", "dtype"))
            save((x.str[1:], 0, 1))
            out.extend(b"R")
            save((3, x.str[0], None, None, None, -1, -1, 0))
            out.extend(b"b")
        elif isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
            save(_G("numpy.core.multiarray", "_reconstruct"))
            save((_G("numpy", "ndarray"), (0,), "b"))
            out.extend(b"R")
            save((1, tuple(x.shape), x.dtype, False, x.tobytes()))
            out.extend(b"b")
        elif isinstance(x, _Obj):
            save(x.cls)
            out.extend(b")\x81")  # NEWOBJ with no arguments
            save(x.state)
            out.extend(b"b")
        else:
            raise TypeError(type(x))

    save(obj)
    out.extend(b".")
    return bytes(out)


def _ch(x: np.ndarray) -> _Obj:
    """A chumpy ``Ch`` as chumpy's ``__getstate__`` pickles it."""
    state = {"x": x, "_dirty_vars": {"x"}, "_itr": None, "_depends_on_deps": {}, "_make_dense": False,
             "_make_sparse": False}  # fmt: skip
    return _Obj("chumpy.ch", "Ch", state)


def _csc(dense: np.ndarray) -> _Obj:
    """A scipy 0.x ``csc_matrix`` as Python 2 pickled it."""
    m = sp.csc_matrix(dense)
    state = {"format": "csc", "_shape": dense.shape, "maxprint": 50, "data": m.data,
             "indices": m.indices.astype(np.int32), "indptr": m.indptr.astype(np.int32)}  # fmt: skip
    return _Obj("scipy.sparse.csc", "csc_matrix", state)


def test_real_mano_v12_layout_python2_pickle_loads(tmp_path, one_torch_thread):
    emb = load_mano_pickle(EMBEDDED_DIR / "MANO_RIGHT.pkl")
    v = np.asarray(emb["v_template"], dtype=np.float64)
    data = {
        "hands_components": np.asarray(emb["hands_components"]),
        "f": np.asarray(emb["f"], dtype=np.uint32),
        "J_regressor": _csc(np.asarray(emb["J_regressor"])),
        "kintree_table": np.asarray(emb["kintree_table"], dtype=np.int64),
        "J": _ch(np.zeros((16, 3))),
        "bs_style": "lbs",
        "hands_coeffs": np.zeros((4, 45)),
        "weights": _ch(np.asarray(emb["weights"], dtype=np.float64)),
        "posedirs": _ch(np.zeros((len(v), 3, 135))),
        "hands_mean": np.asarray(emb["hands_mean"]),
        "v_template": _ch(v),
        "shapedirs": _ch(np.asarray(emb["shapedirs"], dtype=np.float64)),
        "bs_type": "lrotmin",
        "note": "t\xe9l\xe9charg\xe9",  # a Latin-1 byte string, as Python 2 wrote them
    }
    raw = _py2_pickle(data)
    assert b"\x80\x02" == raw[:2] and b"c__builtin__\nset\n" in raw and b"cchumpy.ch\nCh\n" in raw
    assert any(b >= 0x80 for b in raw[100:])  # array bytes travel as 8-bit strings
    mano = tmp_path / "mano"
    mano.mkdir()
    (mano / "MANO_RIGHT.pkl").write_bytes(raw)
    loaded = load_mano_pickle(mano / "MANO_RIGHT.pkl")
    np.testing.assert_array_equal(loaded["v_template"], v)
    np.testing.assert_array_equal(loaded["J_regressor"], emb["J_regressor"])
    np.testing.assert_array_equal(loaded["shapedirs"], np.asarray(emb["shapedirs"], dtype=np.float64))
    assert loaded["note"] == "t\xe9l\xe9charg\xe9" and loaded["bs_type"] == "lrotmin"
    hand = load_hand("right", mano_dir=mano)
    assert hand.name == "mano-v1.2"
    pose = np.linspace(-0.3, 0.3, 45)
    ref = load_hand("right")
    np.testing.assert_allclose(hand.forward(hand_pose=pose).vertices, ref.forward(hand_pose=pose).vertices, atol=1e-6)


def test_embedded_hand_files_load_through_the_allowlist():
    for side in ("right", "left"):
        data = load_mano_pickle(EMBEDDED_DIR / f"MANO_{side.upper()}.pkl")
        assert data["posedirs"].shape == (len(data["v_template"]), 3, 135) and not data["posedirs"].any()
        assert data["J_regressor"].shape[0] == 16 and isinstance(data["J_regressor"], np.ndarray)


def test_smplx_never_unpickles_the_users_file(tmp_path, monkeypatch):
    """smplx.MANO reads the pickle itself (plain ``pickle.load``) unless given ``data_struct``: hoigen
    always gives it, so smplx's own loaders are never reached."""
    import smplx.body_models

    def boom(*args, **kwargs):
        raise AssertionError("smplx unpickled the file itself")

    monkeypatch.setattr(smplx.body_models.pickle, "load", boom)
    monkeypatch.setattr(smplx.body_models.np, "load", boom)
    mano = tmp_path / "mano"
    mano.mkdir()
    shutil.copy(EMBEDDED_DIR / "MANO_LEFT.pkl", mano / "MANO_LEFT.pkl")
    hand = load_hand("left", mano_dir=mano)
    assert hand.forward().vertices.shape[1] == hand.num_vertices


def test_mano_size_cap(tmp_path, monkeypatch):
    import hoigen.hand.model as model

    path = tmp_path / "MANO_RIGHT.pkl"
    shutil.copy(EMBEDDED_DIR / "MANO_RIGHT.pkl", path)
    monkeypatch.setattr(model, "MANO_MAX_BYTES", 1000)
    with pytest.raises(HoigenError, match="MiB hoigen reads"):
        load_mano_pickle(path)


# ----------------------------------------------------------------------------------------------------
# torch weights


def _evil_torch_file(path, marker) -> None:
    import torch

    torch.save({"weight": torch.zeros(2), "x": _Call(os.system, _touch_cmd(marker))}, path)


def test_torch_load_defaults_to_weights_only(tmp_path):
    """torch 2.13's ``torch.load`` refuses code by default (diffusers and transformers pass weights_only=True too)."""
    import torch

    marker, path = tmp_path / "ran", tmp_path / "model.bin"
    _evil_torch_file(path, marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert not marker.exists()


def test_safe_torch_load(tmp_path):
    import torch
    from safetensors.torch import save_file

    marker, evil = tmp_path / "ran", tmp_path / "evil.ckpt"
    _evil_torch_file(evil, marker)
    with pytest.raises(HoigenError) as err:
        safe_torch_load(evil)
    assert str(evil) in str(err.value) and "system" in str(err.value) and not marker.exists()
    good = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    torch.save({"state_dict": good, "step": 3}, tmp_path / "good.ckpt")
    loaded = safe_torch_load(tmp_path / "good.ckpt")
    assert loaded["step"] == 3 and torch.equal(loaded["state_dict"]["a"], good["a"])
    save_file(good, tmp_path / "good.safetensors")
    assert torch.equal(safe_torch_load(tmp_path / "good.safetensors")["b"], good["b"])
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(HoigenError, match="cut.safetensors"):
        safe_torch_load(tmp_path / "cut.safetensors")


def test_diffusers_from_pretrained_refuses_a_crafted_bin(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=2, layers_per_block=1)
    vae.save_pretrained(tmp_path / "bin", safe_serialization=False)
    vae.save_pretrained(tmp_path / "safe", safe_serialization=True)
    assert prefer_safetensors(tmp_path / "safe") == {"use_safetensors": True}
    assert prefer_safetensors(tmp_path / "bin") == {}
    marker = tmp_path / "ran"
    _evil_torch_file(tmp_path / "bin" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(OSError) as err:  # diffusers' own error; pipeline.py turns it into one line
        AutoencoderKL.from_pretrained(tmp_path / "bin")
    chain, exc = [], err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__context__
    assert "diffusion_pytorch_model.bin" in chain[0] and any("GLOBAL posix.system" in c for c in chain)
    assert not marker.exists()


def test_resuming_a_checkpoint_with_a_crafted_custom_state_runs_nothing(tmp_path):
    """accelerate loads ``custom_checkpoint_*.pkl`` (the EMA) with ``weights_only=False``: hoigen checks first."""
    import torch

    from hoigen.diffusion.checkpoint import STATE_FILE, load_checkpoint

    class Accelerator:
        loaded = False

        def load_state(self, path):
            self.loaded = True

    folder = tmp_path / "step-00000002"
    folder.mkdir()
    (folder / STATE_FILE).write_text('{"step": 2}')
    torch.save({"decay": 0.9, "updates": 2, "shadow": [torch.zeros(3)]}, folder / "custom_checkpoint_0.pkl")
    acc = Accelerator()
    assert load_checkpoint(acc, folder) == {"step": 2} and acc.loaded
    marker = tmp_path / "ran"
    _evil_torch_file(folder / "custom_checkpoint_0.pkl", marker)
    acc = Accelerator()
    with pytest.raises(HoigenError, match="custom_checkpoint_0.pkl"):
        load_checkpoint(acc, folder)
    assert not acc.loaded and not marker.exists()


# ----------------------------------------------------------------------------------------------------
# Meshes


def _ply_header(faces: int) -> bytes:
    head = "ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
    head += f"property float z\nelement face {faces}\nproperty list uchar int vertex_indices\nend_header\n"
    return head.encode()


GARBAGE = {
    "noise.obj": bytes(range(256)) * 8,
    "noise.ply": b"ply\n" + bytes(range(256)) * 8,
    "noise.glb": b"glTF\x02\x00\x00\x00" + bytes(range(256)) * 2,
    "noise.stl": bytes(range(256)) * 3,
    "cut.ply": _ply_header(1) + b"\x00" * 7,
    "huge.ply": _ply_header(10**12) + b"\x00" * 64,
    "huge.stl": b"\x00" * 80 + struct.pack("<I", 4_000_000_000) + b"\x00" * 100,
    "huge.off": b"OFF\n3 1000000000000 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n",
}


def test_header_caps_refuse_before_parsing(tmp_path):
    for name in ("huge.ply", "huge.stl", "huge.off"):
        (tmp_path / name).write_bytes(GARBAGE[name])
        with pytest.raises(HoigenError, match="declares") as err:
            check_mesh_file(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    trimesh.creation.box().export(tmp_path / "box.ply")
    check_mesh_file(tmp_path / "box.ply")


def test_garbage_meshes_are_skipped_with_one_line_reasons(tmp_path, monkeypatch):
    from hoigen.objects.library import load_objects

    root = tmp_path / "objects"
    root.mkdir()
    for name, data in GARBAGE.items():
        (root / name).write_bytes(data)
    with pytest.raises(HoigenError) as err:  # nothing usable: one line naming the folder
        load_objects(root)
    assert str(root) in str(err.value)
    trimesh.creation.box(extents=(0.05, 0.08, 0.05)).export(root / "box.obj")
    lib = load_objects(root)
    assert [a.id for a in lib] == ["box"]
    reasons = {os.path.basename(s.path): s.reason for s in lib.skipped}
    assert set(reasons) == set(GARBAGE)
    assert "declares" in reasons["huge.ply"] and "declares" in reasons["huge.stl"]
    assert all("\n" not in r for r in reasons.values())
    monkeypatch.setenv("HOIGEN_MESH_MAX_MB", "0.0001")
    with pytest.raises(HoigenError, match="MiB"):
        load_objects(root)


# ----------------------------------------------------------------------------------------------------
# Arrays, images, labels, recipes, tar members, hooks


def test_npy_fields_never_unpickle(tmp_path):
    from hoigen.data.codec import decode_field, encode_field

    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.save(buf, np.array([_Call(os.system, _touch_cmd(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(HoigenError, match="shard-000000.tar"):
        decode_field("pose.npy", buf.getvalue(), "shard-000000.tar")
    assert not marker.exists()
    with pytest.raises(ValueError):
        encode_field("pose.npy", np.array([object()], dtype=object))
    np.testing.assert_array_equal(decode_field("a.npy", encode_field("a.npy", np.arange(3))), np.arange(3))


def test_png_pixel_cap():
    from hoigen.data.codec import decode_field

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
    with pytest.raises(HoigenError, match="100000x100000"):
        decode_field("image.png", bomb + b"\x00" * 16, "shard-000000.tar")


def test_dexycb_labels_refuse_pickled_objects(tmp_path):
    from hoigen.ingest.dexycb import convert_frame

    marker = tmp_path / "ran"
    folder = tmp_path / "20200709-subject-01" / "seq" / "836212060125"
    folder.mkdir(parents=True)
    evil = np.array([_Call(os.system, _touch_cmd(marker))], dtype=object)
    np.savez(folder / "labels_000000.npz", seg=evil, pose_y=evil, pose_m=evil, joint_3d=evil, joint_2d=evil)
    ref = {"root": str(tmp_path), "sequence": "20200709-subject-01/seq", "serial": "836212060125", "frame": 0}
    with pytest.raises(HoigenError, match="labels_000000.npz"):
        convert_frame(ref, None, None, {})
    (folder / "labels_000000.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(HoigenError, match="labels_000000.npz"):
        convert_frame(ref, None, None, {})
    assert not marker.exists()


def test_recipes_are_safe_yaml(tmp_path):
    from hoigen.recipe import load_recipe

    marker = tmp_path / "ran"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f'seed: !!python/object/apply:os.system ["{_touch_cmd(marker)}"]\n')
    with pytest.raises(HoigenError, match="evil.yaml"):
        load_recipe(recipe)
    assert not marker.exists()


def test_tar_member_names_cannot_escape(tmp_path):
    from hoigen.data.shards import ShardWriter, read_shard

    for key in ("a/b_0000_000", "..", "../x_0000_000"):
        with pytest.raises(ValueError), ShardWriter(tmp_path / "w.tar") as writer:
            writer.write({"__key__": key, "ann.json": {}})
    crafted = tmp_path / "run" / "shard-000000.tar"
    crafted.parent.mkdir()
    with tarfile.open(crafted, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("../../escaped.json", "/abs/escaped2.json"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        link = tarfile.TarInfo("link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    samples = list(read_shard(crafted))
    assert [s["__key__"] for s in samples] == ["escaped", "escaped2"]  # read in memory, never extracted
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and not any("link" in s for s in samples)


def test_caption_hook_is_code_by_design(tmp_path, monkeypatch):
    """The one input that is code: ``--caption-hook module:function`` imports and runs user code."""
    from hoigen.diffusion.captions import load_caption_hook

    (tmp_path / "my_hook_mod.py").write_text("RAN = True\ndef caption(image, ann):\n    return 'a hand'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = load_caption_hook("my_hook_mod:caption")
    assert hook(np.zeros((2, 2, 3), np.uint8), {}) == "a hand" and sys.modules["my_hook_mod"].RAN
    assert "code" in load_caption_hook.__doc__
