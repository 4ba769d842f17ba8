"""Synthesis with real-weight paths, on tiny random models of the real classes saved to local folders.

Conventions (known samples -> known pixels), public ControlNets as a MultiControlNet through the CLI,
the untrained refusal and the ``none`` opt-in, HOIDiffusion's release layout converted and painted
through the adapter path, single-file checkpoints and LoRAs. The hub is off (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clirun import run_hoigen as hoigen

from hoigen.data.shards import ShardWriter, list_shards, read_shard
from hoigen.diffusion import controls
from hoigen.diffusion.conditions import SEG_HAND_RGB, SEG_OBJECT_RGB

SIZE = 32
ARGS = ("--steps", "1", "--size", SIZE, "--batch-size", 2, "--quiet", "--device", "cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _hub_off(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hand_joints(scale: float = 1.0) -> np.ndarray:
    """21 joints of a spread hand in a 512 image: wrist low in the middle, five fingers fanning upward."""
    pts = [(256.0, 420.0)]
    for f, angle in enumerate(np.radians([-150, -115, -90, -65, -35])):
        direction = np.array([np.cos(angle), np.sin(angle)])
        for k in range(1, 5):
            pts.append(tuple(np.array([256.0, 420.0]) + direction * (40.0 + 45.0 * k) * (1 + 0.05 * f)))
    return np.asarray(pts) * scale


def _ann(key: str, category: str = "mug", side: int = 512) -> dict:
    eye = np.eye(4).tolist()
    visible = [True] * 21
    visible[20] = False  # the pinky tip is hidden
    return {
        "key": key,
        "hand": {"side": "right", "model": "test-hand", "global_orient": [0.0] * 3, "hand_pose": [0.0] * 45,
                 "betas": [0.0] * 10, "transl": [0.0] * 3, "joints3d": [[0.0] * 3] * 21,
                 "joints2d": _hand_joints(side / 512).tolist(), "joints_visible": visible},
        "object": {"id": "mug-1", "category": category, "mesh_sha256": "0" * 64, "pose": eye, "nocs_from_mesh": eye},
        "camera": {"K": np.eye(3).tolist(), "world_to_cam": eye, "width": side, "height": side},
        "trajectory": {"frame": 0, "frames": 1},
        "grasp": {},
    }


def _sample(side: int, category: str = "mug", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    seg = np.zeros((side, side), np.uint8)
    seg[side // 4 : side // 2, side // 4 : side // 2] = 1
    seg[side // 2 : 3 * side // 4, side // 3 : 3 * side // 4] = 2
    normal = (rng.integers(0, 256, (side, side, 3), dtype=np.uint8) * (seg > 0)[..., None]).astype(np.uint8)
    shade = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    return {"__key__": f"mug-1_0000_000_{seed:02d}", "normal.png": normal, "seg.png": seg, "shade.png": shade,
            "skeleton.png": np.zeros((side, side, 3), np.uint8), "ann.json": _ann(f"mug-1_0000_000_{seed:02d}",
                                                                                   category, side)}


# --- conventions: known samples -> known pixels ---------------------------------------------------


def test_openpose_hand_bone_colours_blue_joints_and_visibility():
    sample = _sample(512)
    image = controls.condition_map(sample, "pose", "controlnet", 512)
    pts = _hand_joints()
    for i, (a, b) in enumerate(controls.OPENPOSE_HAND_EDGES):
        mid = np.round((pts[a] + pts[b]) / 2).astype(int)
        pixel = image[mid[1], mid[0]].astype(int)
        if b == 20:  # hidden tip: its bone is not drawn
            assert pixel.tolist() == [0, 0, 0]
            continue
        expected = np.array(colorsys.hsv_to_rgb(i / 20, 1.0, 1.0)) * 255
        assert np.abs(pixel - expected).max() <= 1, (i, pixel, expected)
    for j in range(20):
        x, y = np.round(pts[j]).astype(int)
        assert image[y, x].tolist() == [0, 0, 255]
    x, y = np.round(pts[20]).astype(int)
    assert image[y, x].tolist() == [0, 0, 0]  # hidden joint: no dot
    # widths scale with the image: at 1024 px the line is twice as thick as at 512
    big = controls.condition_map(_sample(1024), "pose", "controlnet", 1024)
    mid = np.round(pts[5] + pts[6]).astype(int)  # bone 5 midpoint at 1024 (pts were for 512)
    column = big[:, mid[0]]
    assert (column == big[mid[1], mid[0]]).all(axis=1).sum() >= 3


def test_ade_seg_colours_for_hand_and_objects():
    for category, ade in (("mug", "glass"), ("laptop", "computer"), ("bottle", "bottle"), ("teapot-7", "box")):
        image = controls.condition_map(_sample(64, category), "seg", "controlnet", 64)
        assert image[20, 20].tolist() == [150, 5, 61]  # hand = person
        assert image[40, 30].tolist() == list(controls.ade_colour(ade))
        assert image[2, 2].tolist() == [0, 0, 0]  # background: black
    assert controls.ade_colour("bottle") == (0, 255, 10) and controls.ade_colour("box") == (0, 255, 20)


def test_normal_unchanged_and_adapter_conventions():
    sample = _sample(64)
    assert np.array_equal(controls.condition_map(sample, "normal", "controlnet", 64), sample["normal.png"])
    sample["normal.png"][0, 0] = (10, 20, 30)  # stray colour on the background
    masked = controls.condition_map(sample, "normal", "adapter", 64)
    assert masked[0, 0].tolist() == [0, 0, 0] and np.array_equal(masked[20, 20], sample["normal.png"][20, 20])
    mask = controls.condition_map(sample, "seg", "adapter", 64)
    assert mask[20, 20].tolist() == list(SEG_HAND_RGB) and mask[40, 30].tolist() == list(SEG_OBJECT_RGB)
    skeleton = controls.condition_map(_sample(512), "pose", "adapter", 512)
    pts = _hand_joints()
    for k, (a, b) in enumerate(controls.OPENPOSE_HAND_EDGES[:19]):
        mid = np.round((pts[a] + pts[b]) / 2).astype(int)
        assert skeleton[mid[1], mid[0]].tolist() == list(controls.hoi_skeleton_colour(k)), k
    assert controls.hoi_skeleton_colour(3) == (139 + 105 if 139 + 105 <= 255 else 255, 53 + 105, 255)


def test_option_parsing():
    cn, ad = controls.parse_controls(["pose=a", "seg=b"], None)
    assert cn == [("pose", "a"), ("seg", "b")] and ad == []
    assert controls.parse_controls("some/dir", None)[0] == [("hoi", "some/dir")]
    assert controls.parse_controls(["none"], None)[0] == [("none", "")]
    assert controls.parse_scales("--control-scale", "pose=0.5", ["normal", "pose"]) == [1.0, 0.5]
    assert controls.parse_scales("--control-scale", "0.7", ["normal", "pose"]) == [0.7, 0.7]
    assert controls.parse_loras(["a/b:0.5", "c"]) == [("a/b", 0.5), ("c", 1.0)]
    from hoigen.errors import HoigenError

    with pytest.raises(HoigenError, match="KIND"):
        controls.parse_scales("--control-scale", "hand=1", ["pose"])
    with pytest.raises(HoigenError, match="stands alone"):
        controls.parse_controls(["none", "pose=x"], None)


# --- tiny models saved to folders -----------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD folder, its LDM single file, three 3-channel ControlNets and three T2I-Adapters, on disk."""
    from safetensors.torch import save_file

    from hoigen.diffusion.backend import StableDiffusionPipeline
    from hoigen.diffusion.tiny import build_tiny_controlnet, build_tiny_pipeline, ldm_state_dict

    root = tmp_path_factory.mktemp("models")
    tiny = build_tiny_pipeline(0)
    sd = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sd.save_pretrained(root / "sd")
    save_file({k: v.contiguous() for k, v in ldm_state_dict(tiny).items()}, str(root / "sd.safetensors"))
    out = {"sd": root / "sd", "single": root / "sd.safetensors", "root": root}
    for i, kind in enumerate(("normal", "pose", "seg")):
        build_tiny_controlnet(3, seed=10 + i).save_pretrained(root / f"cn_{kind}")
        out[kind] = root / f"cn_{kind}"
    return out


@pytest.fixture(scope="module")
def render_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render")
    with ShardWriter(folder / "shard-000000.tar") as writer:
        for seed in range(2):
            writer.write(_sample(64, seed=seed))
    (folder / "run.json").write_text(json.dumps({"stage": "render"}))
    (folder / "objects.parquet").write_bytes(b"")
    return folder


def _images(folder: Path) -> list[np.ndarray]:
    return [s["image.jpg"] for shard in list_shards(folder) for s in read_shard(shard)]


def test_multicontrolnet_of_three_through_the_cli(models, render_dir, tmp_path, capsys):
    nets = [f"--controlnet={k}={models[k]}" for k in ("normal", "pose", "seg")]
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "three", *ARGS, *nets,
                       "--control-scale", "pose=0", "--save-conditions", capsys=capsys)
    assert code == 0, err
    sample = next(read_shard(list_shards(tmp_path / "three")[0]))
    gen = sample["gen.json"]
    assert gen["kind"] == "controlnet" and [c["kind"] for c in gen["controls"]] == ["normal", "pose", "seg"]
    assert [c["scale"] for c in gen["controls"]] == [1.0, 0.0, 1.0]
    assert gen["controls"][1]["model"] == str(models["pose"])
    source = _sample(64, seed=0)
    for kind in ("normal", "pose", "seg"):
        assert np.array_equal(sample[f"cond_{kind}.png"], controls.condition_map(source, kind, "controlnet", SIZE))
    # a scale of 0 equals dropping that ControlNet
    two = [f"--controlnet={k}={models[k]}" for k in ("normal", "seg")]
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "two", *ARGS, *two, capsys=capsys)
    assert code == 0, err
    a, b = _images(tmp_path / "three"), _images(tmp_path / "two")
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # ... and a non-zero scale changes the images
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "on", *ARGS, *nets, capsys=capsys)
    assert code == 0, err
    assert not all(np.array_equal(x, y) for x, y in zip(a, _images(tmp_path / "on"), strict=True))
    run = json.loads((tmp_path / "three" / "run.json").read_text())
    assert [c["kind"] for c in run["diffusion_model"]["controls"]] == ["normal", "pose", "seg"]


def test_bare_model_refused_and_none_opt_in(models, render_dir, tmp_path, capsys):
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "x", *ARGS, "--model", models["sd"],
                       capsys=capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1
    assert "--controlnet normal=" in lines[0] and "hoigen convert hoidiffusion" in lines[0]
    assert "hoigen train" in lines[0] and "--controlnet none" in lines[0]
    assert not list_shards(tmp_path / "x") if (tmp_path / "x").exists() else True
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "plain", *ARGS, "--model", models["sd"],
                       "--controlnet", "none", capsys=capsys)
    assert code == 0, err
    assert err.count("warning:") == 1 and "will not match" in err
    gen = next(read_shard(list_shards(tmp_path / "plain")[0]))["gen.json"]
    assert gen["kind"] == "unconditioned" and gen["controls"] == []
    run = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert run["diffusion_model"]["kind"] == "unconditioned"


def test_single_file_model_equals_its_folder(models, render_dir, tmp_path, capsys):
    net = f"--controlnet=pose={models['pose']}"
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "file", *ARGS, net,
                       "--model", models["single"], "--model-config", models["sd"], capsys=capsys)
    assert code == 0, err
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "dir", *ARGS, net,
                       "--model", models["sd"], capsys=capsys)
    assert code == 0, err
    a, b = _images(tmp_path / "file"), _images(tmp_path / "dir")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    gen = next(read_shard(list_shards(tmp_path / "file")[0]))["gen.json"]
    assert gen["base"] == "single-file" and gen["model"] == str(models["single"])


def test_lora_loading_and_scale(models, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from hoigen.diffusion.backend import StableDiffusionPipeline
    from hoigen.diffusion.pipeline import ModelSpec, generate, load_synthesis_pipeline

    base = StableDiffusionPipeline.from_pretrained(str(models["sd"]), local_files_only=True)
    torch.manual_seed(3)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(base.unet))
    conds = [controls.to_tensor([controls.condition_map(_sample(64), "pose", "controlnet", SIZE)])]

    def paint(loras: tuple) -> np.ndarray:
        spec = ModelSpec(model=str(models["sd"]), controlnets=(("pose", str(models["pose"])),), loras=loras)
        pipe, info = load_synthesis_pipeline(spec)
        return generate(pipe, conds, ["a mug"], [0], steps=2)[0], info

    plain, _ = paint(())
    off, _ = paint(((str(tmp_path / "lora"), 0.0),))
    on, info = paint(((str(tmp_path / "lora"), 1.0),))
    assert np.array_equal(plain, off) and not np.array_equal(plain, on)
    assert info["loras"] == [{"model": str(tmp_path / "lora"), "scale": 1.0}]


def test_init_shade_img2img(models, render_dir, tmp_path, capsys):
    net = f"--controlnet=pose={models['pose']}"
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "none", *ARGS, net,
                       "--model", models["sd"], "--init", "shade", "--strength", "0.5", capsys=capsys)
    assert code == 1 and "no denoising step" in err
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "img2img", *ARGS, net, "--steps", "4",
                       "--model", models["sd"], "--init", "shade", "--strength", "0.5", capsys=capsys)
    assert code == 0, err
    gen = next(read_shard(list_shards(tmp_path / "img2img")[0]))["gen.json"]
    assert gen["kind"] == "controlnet-img2img" and gen["init"] == {"image": "shade.png", "strength": 0.5}


# --- HOIDiffusion's release layout ------------------------------------------------------------------


def _original_adapter_state(channels: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of the original ``Adapter(cin=192, nums_rb=2, ksize=1, sk=True,
    use_conv=False)``: conv_in 3x3; per block block1 3x3 and block2 1x1; in_conv 1x1 where channels change."""
    g = torch.Generator().manual_seed(seed)

    def conv(out: int, inp: int, k: int, name: str, state: dict) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=g) * 0.05
        state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.05

    state: dict[str, torch.Tensor] = {}
    conv(channels[0], 192, 3, "conv_in", state)
    for i, c in enumerate(channels):
        for j in range(2):
            n = 2 * i + j
            if i > 0 and j == 0 and channels[i - 1] != c:
                conv(c, channels[i - 1], 1, f"body.{n}.in_conv", state)
            conv(c, c, 3, f"body.{n}.block1", state)
            conv(c, c, 1, f"body.{n}.block2", state)
    return state


def _original_adapter_forward(state: dict[str, torch.Tensor], x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The original Adapter's forward, written from its definition, on its own state dict."""
    import torch.nn.functional as F

    def conv(name: str, h: torch.Tensor) -> torch.Tensor:
        w = state[f"{name}.weight"]
        return F.conv2d(h, w, state[f"{name}.bias"], padding=w.shape[-1] // 2)

    h = conv("conv_in", F.pixel_unshuffle(x, 8))
    features = []
    for i in range(levels):
        for j in range(2):
            n = 2 * i + j
            if i > 0 and j == 0:
                h = F.avg_pool2d(h, 2, 2)
            if f"body.{n}.in_conv.weight" in state:
                h = conv(f"body.{n}.in_conv", h)
            h = conv(f"body.{n}.block2", F.relu(conv(f"body.{n}.block1", h))) + h
        features.append(h)
    return features


def test_release_layout_converts_and_paints(models, render_dir, tmp_path, capsys):
    from hoigen.diffusion.backend import quiet
    from hoigen.diffusion.tiny import build_tiny_pipeline, ldm_state_dict, tiny_adapter_channels

    release = tmp_path / "release"
    release.mkdir()
    channels = tiny_adapter_channels()
    prefixes = ("pose_ada", "depth_ada", "mask_ada")
    originals = {p: _original_adapter_state(channels, seed) for seed, p in enumerate(prefixes)}
    torch.save({f"{p}.{k}": v for p, s in originals.items() for k, v in s.items()}, release / "model_ad_5000.pth")
    torch.save(ldm_state_dict(build_tiny_pipeline(0)), release / "model_sd_5000.ckpt")  # flat dict, as their code
    out = tmp_path / "converted"
    code, err = hoigen("convert", "hoidiffusion", release, "--out", out, "--config", models["sd"], capsys=capsys)
    assert code == 0, err
    from diffusers import T2IAdapter

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for prefix, kind in zip(prefixes, ("pose", "normal", "seg"), strict=True):
        with quiet():
            adapter = T2IAdapter.from_pretrained(out / "adapters" / kind)
        with torch.no_grad():
            ours, ref = adapter(x), _original_adapter_forward(originals[prefix], x, len(channels))
        assert len(ours) == len(ref) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, ref, strict=True))
    record = json.loads((out / "hoidiffusion_convert.json").read_text())
    assert record["base"]["file"] == "model_sd_5000.ckpt"
    assert set(record["adapters"]["kinds"]) == {"pose", "normal", "seg"}
    adapters = [f"--adapter={k}={out / 'adapters' / k}" for k in ("pose", "normal", "seg")]
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "painted", *ARGS, "--model", out,
                       *adapters, "--adapter-scale", "seg=0.5", "--save-conditions", capsys=capsys)
    assert code == 0, err
    sample = next(read_shard(list_shards(tmp_path / "painted")[0]))
    gen = sample["gen.json"]
    assert gen["kind"] == "adapter" and [c["scale"] for c in gen["controls"]] == [1.0, 1.0, 0.5]
    assert sample["cond_seg.png"][10, 10].tolist() == list(SEG_HAND_RGB)
    # a pickled object in a checkpoint is refused (weights_only=True), with one line
    torch.save({"pose_ada.x": object()}, release / "model_ad_5000.pth")
    code, err = hoigen("convert", "hoidiffusion", release, "--out", tmp_path / "bad", capsys=capsys)
    assert code == 1 and "weights_only" in err


@pytest.mark.parametrize(
    "args, match",
    [
        (("--controlnet", "pose=x", "--control-scale", "hand=1"), "--control-scale 'hand=1'"),
        (("--adapter", "somewhere"), "--adapter 'somewhere': write KIND=ID|DIR"),
        (("--init", "depth"), "--init must be shade"),
        (("--controlnet", "none", "--controlnet", "pose=x"), "--controlnet none stands alone"),
        (("--control-start", "0.6", "--control-end", "0.4"), "--control-start/--control-end"),
        (("--adapter", "pose=x", "--controlnet", "seg=y"), "cannot be combined"),
    ],
)
def test_bad_weight_options_are_one_line_errors(render_dir, tmp_path, capsys, args, match):
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "x", *ARGS, *args, capsys=capsys)
    assert code != 0 and match in err and err.count("\n") == 1, err


def test_lora_on_the_tiny_stand_in_keeps_its_controlnet(tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from hoigen.diffusion.backend import StableDiffusionPipeline
    from hoigen.diffusion.pipeline import ModelSpec, load_synthesis_pipeline
    from hoigen.diffusion.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline(0)
    tiny.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(tiny.unet))
    pipe, info = load_synthesis_pipeline(ModelSpec(loras=((str(tmp_path / "lora"), 0.5),)))
    reference = build_tiny_pipeline(0).controlnet.state_dict()
    assert pipe.controlnet.config.conditioning_channels == 9 and info["controls"][0]["kind"] == "hoi"
    assert all(torch.equal(v, pipe.controlnet.state_dict()[k]) for k, v in reference.items())


def test_video_with_public_controlnets_saves_conditions(models, render_dir, tmp_path, capsys):
    nets = [f"--controlnet={k}={models[k]}" for k in ("pose", "seg")]
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "v", *ARGS, *nets, "--video",
                       "--save-conditions", capsys=capsys)
    assert code == 0, err
    samples = [s for shard in list_shards(tmp_path / "v") for s in read_shard(shard)]
    assert len(samples) == 2 and all("cond_pose.png" in s and "cond_seg.png" in s for s in samples)
    assert samples[0]["gen.json"]["video"]["frames"] == 1
