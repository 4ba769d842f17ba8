"""The paper's mixed training set: synthetic NOCS images beside a real NOCS-layout dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoigen.errors import HoigenError
from hoigen.export.mix import list_images, mix_lists, mixed_counts


def fake_nocs(root: Path, n: int, with_list: bool) -> list[str]:
    names = [f"train/{i // 3:05d}/{i % 3:04d}" for i in range(n)]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}_color.png").write_bytes(b"png")
    if with_list:
        (root / "train_list.txt").write_text("".join(f"{n}\n" for n in names))
    return names


def test_counts() -> None:
    assert mixed_counts(10, 6, 0.5, "replace") == (5, 5)
    assert mixed_counts(10, 3, 0.5, "replace") == (7, 3)  # limited by the synthetic images there are
    assert mixed_counts(10, 100, 0.5, "add") == (10, 10)
    assert mixed_counts(10, 6, 0.5, "add") == (10, 6)
    assert mixed_counts(10, 6, 0.0, "add") == (10, 0)


@pytest.mark.parametrize("mode, real_count, synth_count", [("replace", 5, 5), ("add", 10, 6)])
def test_mixed_list(tmp_path: Path, mode: str, real_count: int, synth_count: int) -> None:
    real, out = tmp_path / "camera", tmp_path / "export"
    fake_nocs(real, 10, with_list=True)
    synth = fake_nocs(out, 6, with_list=False)
    assert list_images(out, "train") == sorted(synth)
    path = mix_lists(out, real, 0.5, mode)
    lines = path.read_text().split()
    assert sum(line.startswith("real/") for line in lines) == real_count
    assert sum(not line.startswith("real/") for line in lines) == synth_count
    assert len(set(lines)) == len(lines)
    assert all((out / f"{line}_color.png").exists() for line in lines)  # real/ is linked in
    before = path.read_bytes()
    assert mix_lists(out, real, 0.5, mode).read_bytes() == before  # seeded: reruns agree


def test_mix_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(HoigenError, match="missing"):
        mix_lists(tmp_path, tmp_path / "missing", 0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HoigenError, match="no train images"):
        mix_lists(tmp_path, tmp_path / "empty", 0.5)
    with pytest.raises(HoigenError, match="--ratio"):
        mix_lists(tmp_path, tmp_path / "empty", 1.5)
