"""``make bench``'s machine-readable BENCH lines."""

from __future__ import annotations

import re

from benchmarks.bench import Row, bench_key, bench_lines


def test_bench_lines_parse_back_to_the_rows_figures() -> None:
    rows = [
        ("render stage, 4 shards: --workers 1 vs 2", 3.0, 1.5),
        Row("render 512px: pyrender vs all passes", 1.0, 0.25, key="render-vs-pyrender"),
        Row("grasp: per core", 2.0, 1.0, key="grasp", rate=7.25),
        ("render stage, 4 shards: again", 1.0, 4.0),
    ]
    lines = bench_lines(rows)
    pattern = re.compile(r"^BENCH (\S+) ratio=([0-9.]+)(?: rate=([0-9.]+))?$")
    parsed = [pattern.match(line).groups() for line in lines]
    assert [p[0] for p in parsed] == ["render-stage-4-shards", "render-vs-pyrender", "grasp", "render-stage-4-shards-2"]
    assert [float(p[1]) for p in parsed] == [2.0, 4.0, 2.0, 0.25]
    assert [p[2] for p in parsed] == [None, None, "7.250", None]


def test_bench_key_is_a_slug_of_the_text_before_the_colon() -> None:
    assert bench_key("Synth sd15 512px: s/image") == "synth-sd15-512px"
    assert bench_key(": nothing") == "row"
