"""The FID Inception-v3 network in plain torch, laid out so the standard FID weights load as they are.

The weights are TensorFlow's 2015-12-05 Inception graph ported to PyTorch by pytorch-fid
(``pt_inception-2015-12-05-6726825d.pth``, a state dict in torchvision's ``Inception3`` layout with
a 1008-class ``fc`` and no auxiliary head). Nothing here downloads; the user passes the file:

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

The FID variant differs from torchvision's Inception-v3 in two ways that change the features: the
average pools inside the mixed blocks do not count padding, and the last block pools with a max.
Input: RGB in [0, 1], resized bilinearly to 299x299 and scaled to [-1, 1]; output: the 2048-d
average-pooled features of the last block (what FID and KID compare).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hoigen.errors import HoigenError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
FEATURES = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as TensorFlow's), ReLU; state keys ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that ignores the zero padding (TensorFlow's behaviour)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (64 + 64 + 96 + ``pool`` channels)."""

    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class ReduceB(nn.Module):
    """35 -> 17 grid reduction: strided 3x3, strided double 3x3, max pool (384 + 96 + cin channels)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``mid`` inner channels; 4 x 192 out)."""

    def __init__(self, cin: int, mid: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, mid, 1)
        self.branch7x7_2 = ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(mid, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, mid, 1)
        self.branch7x7dbl_2 = ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(mid, mid, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(mid, mid, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(mid, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for i in range(1, 6):
            c = getattr(self, f"branch7x7dbl_{i}")(c)
        d = self.branch_pool(_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class ReduceD(nn.Module):
    """17 -> 8 grid reduction (320 + 192 + cin channels)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """8x8 block with split 1x3/3x1 branches (320 + 768 + 768 + 192 = 2048 channels).

    ``max_pool``: the FID graph's last block pools with a 3x3 max instead of an average.
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Inception-v3 as in the FID graph; :meth:`forward` maps images in [0, 1] (N, 3, H, W) to (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReduceB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReduceD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, NUM_CLASSES)  # unused by FID; kept so the weight file loads strictly

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def load_inception(path: Path | None, device: str | torch.device = "cpu") -> FIDInception:
    """The FID Inception with the weights in ``path`` (eval mode), or a one-line error naming the file to get."""
    if path is None or not Path(path).is_file():
        where = f"{path}: not found" if path is not None else "no --inception file given"
        raise HoigenError(f"{where}; download the FID Inception weights {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise HoigenError(f"{path}: not a torch state dict ({exc}); pass {FID_WEIGHTS_FILE}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = FIDInception()
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise HoigenError(f"{path}: not the FID Inception layout ({first}); pass {FID_WEIGHTS_FILE}") from None
    return model.eval().to(device)
