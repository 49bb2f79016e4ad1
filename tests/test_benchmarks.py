"""The benchmark scripts' shared helpers (benchmarks/throughput.py)."""

import importlib.util
import pathlib
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "throughput_benchmark", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("throughput_benchmark", None)


@pytest.mark.parametrize("native", [True, False])
def test_machine_line_times_bfloat16_only_where_it_is_native(throughput, monkeypatch, native):
    """On a CPU without native bfloat16 (AVX2: emulated, minutes for one
    2048 x 2048 product) the machine line names bfloat16 without timing it,
    so the main job and the test suite start as fast there as elsewhere."""
    timed = []
    monkeypatch.setattr(throughput, "matmul_peak", lambda dtype: timed.append(dtype) or 100.0)
    monkeypatch.setattr(throughput, "resolve_precision",
                        lambda precision, device: "bfloat16" if native else "float32")
    line = throughput.machine_line()
    assert "float32 100 GFLOP/s" in line
    if native:
        assert timed == [torch.float32, torch.bfloat16]
        assert "bfloat16 100 GFLOP/s" in line
    else:
        assert timed == [torch.float32]
        assert "bfloat16 not native here, not timed" in line


def test_resolve_precision_auto_follows_the_cpu_flags(monkeypatch):
    """The machine line asks the estimator's own "auto" rule, which reads the
    CPU flags: bfloat16 with AVX512-BF16 or AMX, float32 on AVX2 alone."""
    import builtins
    import io

    from fomaml_sklearn import _config

    real_open = builtins.open
    for flags, expected in (("fpu avx2 fma", "float32"),
                            ("fpu avx2 avx512f avx512_bf16", "bfloat16"),
                            ("fpu avx2 amx_bf16", "bfloat16")):
        monkeypatch.setattr(builtins, "open", lambda path, *a, _f=flags, **k: io.StringIO(
            f"flags\t: {_f}\n") if path == "/proc/cpuinfo" else real_open(path, *a, **k))
        assert _config.resolve_precision("auto", torch.device("cpu")) == expected
