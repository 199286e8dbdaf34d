"""Where an LSTM layer's call spends its time, by compiled kernel function (Linux ``perf``).

``perf`` cannot name the code Numba compiles (it is anonymous memory to it), so this script
runs the layer in a child process that compiles the kernels afresh (an empty
``NUMBA_CACHE_DIR``, about a minute: a kernel loaded from the disk cache has no LLVM module to
read its functions' names from), writes the address of every function of the LSTM kernels,
and then calls the layer in a loop. The parent attaches ``perf record`` to the child for a few
seconds (so compilation and warm-up are not sampled) and attributes each sample in the
compiled code to the function it falls in; the other samples are counted by library
(OpenBLAS, Python, the C library, the operating system). A function's share is its own time:
callees that were not inlined are listed on their own.

    python benchmarks/profile_kernels.py 200,1,32,128 [--mode train|infer] [--seconds 8]
        [--threads 2]

How it found the step-major gate gradients of a single sequence (ninth session):
``lstm_t._backward_part`` was 18% of a (200, 1, 32, 128) training step's compiled time on its
own, more than its recurrent product, and its copy of each step's gradients into a (GH, T)
matrix was the part of it that scales with the steps.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import json, sys, time
import numpy as np
import lstmkit
from lstmkit.engine.kernels import lstm, lstm_t
from lstmkit.benchmark import set_threads

shape, mode, seconds, threads_n, out = sys.argv[1:6]
T, B, D, H = map(int, shape.split(","))
set_threads(int(threads_n))
rng = np.random.default_rng(0)
layer = lstmkit.LSTM(D, H, seed=0)
x = rng.standard_normal((T, B, D)).astype(np.float32)
d = rng.standard_normal((T, B, H)).astype(np.float32)

def call():
    if mode == "train":
        layer(x)
        layer.backward(d)
    else:
        with lstmkit.no_grad():
            layer(x)

call()
call()
functions = []
for kernel in (lstm_t.lstm_forward_t, lstm_t.lstm_forward_t_serial, lstm_t.lstm_backward_t,
               lstm_t.lstm_backward_t_serial, lstm.lstm_forward, lstm.lstm_backward):
    for compiled in kernel.overloads.values():
        library = compiled.library
        for fn in library._final_module.functions:
            if not fn.is_declaration:
                address = library.get_pointer_to_function(fn.name)
                if address:
                    functions.append((address, fn.name))
with open(out, "w") as f:
    json.dump(functions, f)
print("ready", flush=True)
start = time.perf_counter()
calls = 0
while time.perf_counter() - start < float(seconds):
    call()
    calls += 1
print(f"{(time.perf_counter() - start) / calls * 1e3:.3f}", flush=True)
"""

_JIT_REACH = 1 << 20  # a sample further than this past the nearest function start: other code


def demangle(name: str) -> str:
    """``_ZN7lstmkit7kernels6lstm_t14_backward_partB3v64...`` -> ``lstmkit.engine.kernels.lstm_t.
    _backward_part`` (the qualified name in Numba's Itanium-style mangling; anything else is
    returned as it is)."""
    if not name.startswith("_ZN"):
        return name
    parts, i = [], 3
    while i < len(name) and name[i].isdigit():
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        parts.append(name[j:j + n])
        i = j + n
    qualified = ".".join(parts) or name
    return re.sub(r"_3clocals_3e", "<locals>", qualified)


def attribute(samples: list[tuple[int, str]], functions: list[tuple[int, str]]
              ) -> tuple[collections.Counter, collections.Counter]:
    """Samples (address, library) -> counts per JIT function and per library."""
    functions = sorted(functions)
    starts = [a for a, _ in functions]
    per_function: collections.Counter = collections.Counter()
    per_library: collections.Counter = collections.Counter()
    for address, library in samples:
        library = library.strip("()")
        anonymous = "perf-" in library or "JIT" in library or library == "[unknown]"
        i = bisect.bisect_right(starts, address) - 1
        if anonymous and i >= 0 and address - starts[i] < _JIT_REACH:
            per_function[demangle(functions[i][1])] += 1
            per_library["compiled kernels (Numba)"] += 1
        else:
            per_library[os.path.basename(library) or "?"] += 1
    return per_function, per_library


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", help="T,B,D,H")
    ap.add_argument("--mode", choices=("train", "infer"), default="train")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("profile_kernels.py needs Linux perf (e.g. apt install linux-tools-generic)")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba"))
        fmap, data = os.path.join(tmp, "functions.json"), os.path.join(tmp, "perf.data")
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, args.shape, args.mode, str(args.seconds + 2),
             str(args.threads), fmap], env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            sys.exit(f"the child process failed (exit status {child.wait()})")
        time.sleep(0.5)
        subprocess.run(["perf", "record", "-q", "-p", str(child.pid), "-o", data, "--", "sleep",
                        str(args.seconds)], check=True, stderr=subprocess.DEVNULL)
        ms = child.stdout.readline().strip()
        child.wait()
        script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,dso"], check=True,
                                capture_output=True, text=True).stdout
        with open(fmap) as f:
            functions = [(int(a), n) for a, n in json.load(f)]
    samples = []
    for line in script.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            samples.append((int(fields[0], 16), fields[1].strip()))
    per_function, per_library = attribute(samples, functions)
    total, jit = sum(per_library.values()), sum(per_function.values())
    print(f"{args.mode} {args.shape}, {args.threads} threads: {ms} ms per call; "
          f"{total} samples")
    print("by library (all threads):")
    for name, n in per_library.most_common(8):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("compiled kernels, by function (own time, % of the compiled kernels' samples):")
    for name, n in per_function.most_common(args.top):
        print(f"  {100 * n / max(jit, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()
