"""The pure parts of ``benchmarks/profile_kernels.py``: naming Numba's compiled functions and
attributing ``perf`` samples to them (the perf run itself needs Linux perf and is not run here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_kernels.py"
spec = importlib.util.spec_from_file_location("profile_kernels", SCRIPT)
profile_kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_kernels)


def test_demangle_numba_names():
    name = ("_ZN7lstmkit6engine7kernels6lstm_t14_backward_partB3v64B86c8tJTIeFIjxB2IKSgI4CrvQ"
            "Ck0Z4yRYcWsCAgXrKFt1X1erJ_2bXklRYnJJeq1msDALYIZgpSqwCKaAA_3d_3dExxx5ArrayIxLi1E1"
            "C7mutable")
    assert profile_kernels.demangle(name) == "lstmkit.engine.kernels.lstm_t._backward_part"
    closure = ("_ZN7lstmkit6engine7kernels6lstm_t16_backward_driver12_3clocals_3e15lstm_backward_t"
               "B3v59")
    assert (profile_kernels.demangle(closure)
            == "lstmkit.engine.kernels.lstm_t._backward_driver.<locals>.lstm_backward_t")
    assert profile_kernels.demangle("NRT_decref") == "NRT_decref"


def test_samples_go_to_the_function_they_fall_in():
    functions = [(0x2000, "_ZN1a1gB1v"), (0x1000, "_ZN1a1fB1v")]  # any order
    jit = "(/tmp/perf-123.map)"
    samples = [(0x1000, jit), (0x1fff, jit), (0x2000, jit), (0x2010, jit),
               (0x1500, "(/usr/lib/libscipy_openblas.so)"),  # a library at that address
               (0x0fff, jit),  # before every function
               (0x2000 + (1 << 20), jit)]  # too far past the last one
    per_function, per_library = profile_kernels.attribute(samples, functions)
    assert per_function == {"a.f": 2, "a.g": 2}
    assert per_library["compiled kernels (Numba)"] == 4
    assert per_library["libscipy_openblas.so"] == 1
    assert per_library["perf-123.map"] == 2
