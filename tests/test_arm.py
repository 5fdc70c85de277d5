"""The aarch64 build (flavor "armv8": ARMv8.2-A + dot product): cross-compiled on an x86-64
machine with Debian's aarch64 gcc and run under qemu-aarch64 (run directly on an aarch64 one).

- llama.cpp's test-quantize-fns passes for every type, I2_S, TL1 and TL2 included;
- test-backend-ops compares our NEON kernels (I2_S GEMV/GEMM and I8_S quantization, TL1
  lookups) with the scalar reference kernels (the CPU backend's use_ref mode) on every
  MUL_MAT shape of the ternary types, and tests/arm_kernels.c compares them byte for byte,
  with and without the dot product extension;
- the same tiny I2_S and TL1 models give the same logits through bitnet-logits on aarch64 as
  natively, and both match the float64 numpy reference of tests/test_i2_s.py.
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from bitnet_tools import dummy, engine
from conftest import ALL_COLUMNS, mul_mat_columns
from bitnet_tools.quants import I2_S
from bitnet_tools.writer import PendingTensor, write_gguf

from test_i2_s import _reference_logits, _tiny_weights
from test_tl import _write_tl

FLAVOR = "armv8"
CROSS = engine.is_cross(FLAVOR)
_missing = [t for t in ({**engine.CROSS_AARCH64, **engine.QEMU_AARCH64} if CROSS else {}) if shutil.which(t) is None]

# the tests that build and run aarch64 programs
needs_arm = pytest.mark.skipif(bool(_missing), reason=f"no {', '.join(_missing)} on this {platform.machine()} machine "
                                                      "(apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user)")

SCALE = 0.25
TOKENS = [1, 100, 7, 250, 31, 5, 299, 42]


def test_cross_build_settings_and_errors(monkeypatch, tmp_path):
    """On x86-64, armv8 is a cross build (toolchain settings, own key, qemu to run); on aarch64
    it is a native one. Missing tools give one line naming the Debian packages."""
    pin = engine.read_pin()
    monkeypatch.setattr(engine, "host_is_aarch64", lambda: True)
    assert not engine.is_cross("armv8") and engine.cross_cmake("armv8") == []
    assert engine.program_command("armv8", "/x/prog", "-v", 1) == ["/x/prog", "-v", "1"]
    native_key = engine.build_key(pin, "armv8")

    monkeypatch.setattr(engine, "host_is_aarch64", lambda: False)
    args = engine.cross_cmake("armv8")
    assert "-DCMAKE_SYSTEM_PROCESSOR=aarch64" in args and "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++" in args
    assert "-DBUILD_SHARED_LIBS=OFF" in args and engine.cross_cmake("avx2") == []
    assert engine.build_key(pin, "armv8") != native_key

    real = shutil.which
    monkeypatch.setattr(engine.shutil, "which", lambda t: "/usr/bin/" + t)
    assert engine.program_command("armv8", "/x/prog", "-v") == ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "/x/prog", "-v"]
    assert engine.program_command("avx2", "/x/prog") == ["/x/prog"]
    engine.check_cross_toolchain("armv8")

    monkeypatch.setattr(engine.shutil, "which", lambda t: None if t.startswith(("aarch64-", "qemu-")) else real(t))
    monkeypatch.setattr(engine, "BUILD", tmp_path)  # nothing built: the build would start here
    with pytest.raises(engine.EngineError, match=re.escape("apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu")) as e:
        engine.build_test_programs("armv8")
    assert "\n" not in str(e.value)
    with pytest.raises(engine.EngineError, match="apt-get install qemu-user") as e:
        engine.run_program("armv8", "/x/prog")
    assert "\n" not in str(e.value)
    engine.check_cross_toolchain("avx2")  # nothing to cross-compile


@pytest.fixture(scope="session")
def arm_bin():
    """bin/ of the aarch64 build of test-quantize-fns, test-backend-ops and bitnet-logits."""
    return engine.build_test_programs(FLAVOR)


@pytest.fixture(scope="session")
def native_bin():
    """bin/ of this machine's build of the same programs (the installed native build when current)."""
    return engine.build_test_programs("native")


def _arm(bindir, program, *args, timeout=900):
    t = time.monotonic()
    r = engine.run_program(FLAVOR, bindir / program, *args, timeout=timeout)
    print(f"{program} {' '.join(map(str, args))}: {time.monotonic() - t:.1f} s")
    return r


@pytest.mark.slow
@needs_arm
def test_quantize_fns(arm_bin):
    r = _arm(arm_bin, "test-quantize-fns", "-v")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for name in ("i2_s", "tl1", "tl2"):
        lines = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(name + " ")]
        # quantization, reference and dot product errors, each checked and passed
        assert len(lines) >= 3 and all(ln.rstrip().split()[-2] == "ok" for ln in lines), (name, lines)
        assert any("dot product" in ln for ln in lines), name


@pytest.mark.slow
@needs_arm
def test_ternary_kernels_are_distinct_from_the_reference(arm_bin):
    """use_ref must reach other code: the build has NEON versions of the kernels next to the
    generic ones (on aarch64, bitnet.h no longer aliases one to the other), and they use the
    dot product and table lookup instructions."""
    # static libraries in a cross build: the kernels are in the program; else in libggml-cpu
    prog = arm_bin / "test-backend-ops" if CROSS else sorted(arm_bin.glob("libggml-cpu.so*"))[0]
    nm = shutil.which("aarch64-linux-gnu-nm") or shutil.which("nm")
    objdump = shutil.which("aarch64-linux-gnu-objdump") or shutil.which("objdump")
    if nm is None or objdump is None:
        pytest.skip("no binutils for aarch64")
    syms = {}
    for line in subprocess.run([nm, prog], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = (parts[0], parts[1])
    for name in ("quantize_row_i8_s", "ggml_gemm_i2_s_i8_s", "ggml_gemm_tl_i8_s"):
        assert syms[name][1] == "T" and syms[name + "_generic"][1] == "T", name
        assert syms[name][0] != syms[name + "_generic"][0], name
    asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", prog], capture_output=True, text=True, check=True).stdout
    bodies = dict(re.findall(r"^[0-9a-f]+ <([^>]+)>:\n(.*?)(?=\n\n)", asm, flags=re.S | re.M))
    neon = "".join(body for fn, body in bodies.items() if fn.startswith(("i2s_", "tl1_", "ggml_gemm_i2_s_i8_s", "ggml_gemm_tl_i8_s"))
                   and not fn.endswith("_generic"))
    assert "sdot" in neon and "udot" in neon and re.search(r"\btbl\s+v\d+\.16b, \{v\d+\.16b-v\d+\.16b\}", neon)
    generic = bodies["ggml_gemm_i2_s_i8_s_generic"]
    assert "sdot" not in generic


@pytest.mark.slow
@needs_arm
@pytest.mark.parametrize("march,qemu_cpu", [("armv8.2-a+dotprod", None), ("armv8-a", "cortex-a53")])
def test_kernels_are_bit_identical_to_the_generic_ones(arm_bin, tmp_path, march, qemu_cpu):
    """tests/arm_kernels.c calls the NEON and generic kernels directly on many shapes (and the
    quantizer on ties, NaN, infinities, short tails) and compares their outputs byte for byte.
    Built twice: with the dot product extension (the armv8 flavor's path) and without it (the
    plain NEON path, run on a CPU model that has no dot product instructions)."""
    tree = engine.read_pin().llama_cpp_dir / "ggml"
    prefix = "aarch64-linux-gnu-" if CROSS else ""
    base = sorted(arm_bin.parent.rglob("libggml-base.a")) or sorted(arm_bin.glob("libggml-base.so*"))
    assert base, f"no libggml-base in {arm_bin.parent}"
    objs = []
    for src in (Path(__file__).parent / "arm_kernels.c", tree / "src/ggml-cpu/bitnet.c",
                tree / "src/ggml-cpu/arch/arm/bitnet-i2_s.c", tree / "src/ggml-cpu/arch/arm/bitnet-tl.c"):
        obj = tmp_path / f"{src.parent.name}-{src.stem}.o"
        r = subprocess.run([f"{prefix}gcc", "-O3", f"-march={march}", "-std=gnu11", "-I", tree / "include",
                            "-I", tree / "src", "-I", tree / "src/ggml-cpu", "-c", src, "-o", obj], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        objs.append(obj)
    exe = tmp_path / "arm_kernels"
    r = subprocess.run([f"{prefix}g++", *objs, base[0], f"-Wl,-rpath,{base[0].parent}", "-fopenmp", "-lm", "-lpthread", "-o", exe],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    cmd = engine.program_command(FLAVOR, exe)
    if qemu_cpu and cmd[0] == "qemu-aarch64":
        cmd[1:1] = ["-cpu", qemu_cpu]
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(f"arm_kernels ({march}): {time.monotonic() - t:.1f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r": \d+ cases, 0 mismatches", r.stdout), r.stdout[-2000:]
    assert r.stdout.startswith("dotprod" if "dotprod" in march else "plain NEON"), r.stdout


@pytest.mark.slow
@needs_arm
@pytest.mark.parametrize("name,min_ok", [("i2_s", 130), ("tl1", 160), ("tl2", 160)])
def test_backend_ops_mul_mat(arm_bin, name, min_ok):
    """Kernels vs scalar reference on aarch64: GEMV and GEMM, tile and chunk edges (tl2 has no
    NEON kernel: this checks that its generic path runs correctly in the aarch64 build)."""
    r = _arm(arm_bin, "test-backend-ops", "test", "-b", "CPU", "-o", "MUL_MAT", "-p", f"type_a={name},")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    n_ok = sum(1 for line in r.stdout.splitlines() if f"type_a={name}," in line and "OK" in line)
    assert n_ok >= min_ok and "FAIL" not in r.stdout, r.stdout[-3000:]
    assert mul_mat_columns(r.stdout, name) >= ALL_COLUMNS


def _write_i2_s(path, shape, weights):
    def pending(name, kind, value):
        if kind == "i2_s":
            return PendingTensor(name, value.shape, T.I2_S, lambda: I2_S.quantize(value.astype(np.float32) * np.float32(SCALE)))
        return PendingTensor(name, value.shape, T.F32, lambda: value)

    return write_gguf(path, "bitnet-b1.58", dummy.metadata(shape, path.stem, 200),
                      [pending(n, k, v) for n, (k, v) in weights.items()])


def _logits(cmd_prefix: list, path, out, n_vocab, *opts) -> np.ndarray:
    cmd = [*cmd_prefix, "-m", path, "-t", 2, "-o", out, *opts, *TOKENS]
    t = time.monotonic()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900)
    print(f"{cmd_prefix[0]} ... bitnet-logits {' '.join(map(str, opts))}: {time.monotonic() - t:.1f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.split()[-2:] == [str(len(TOKENS)), str(n_vocab)]
    return np.fromfile(out, dtype=np.float32).reshape(len(TOKENS), n_vocab)


@pytest.mark.slow
@needs_arm
@pytest.mark.parametrize("qtype", ["i2_s", "tl1", "tl2"])
def test_logits_match_native_and_reference(arm_bin, native_bin, tmp_path, qtype):
    """A tiny model through bitnet-logits, all tokens in one batch (GEMM kernels) and one token
    at a time (GEMV kernels), on aarch64 and natively.

    The ternary matmuls are exact integer dots on both machines, with the same float operations
    after them; what differs is float32 rounding in the other ops (norms, rope, softmax, the f32
    attention and output matmuls run different SIMD code with other summation orders). So
    aarch64 and native agree to float32 rounding: atol 2e-6 * max|logit| (observed 2.2e-7:
    1.1e-5 on logits up to 52). Both match the float64 reference within the bound of
    tests/test_i2_s.py, 1e-5 * max|logit|. A wrong kernel result, or an int8 activation rounded
    differently, moves logits by orders of magnitude more."""
    shape = dummy.Shape(256, 2, 512, 4, 2, 300)
    weights = _tiny_weights(shape, seed=31)
    path = tmp_path / f"tiny-{qtype}.gguf"
    if qtype == "i2_s":
        _write_i2_s(path, shape, weights)
    else:
        _write_tl(path, shape, weights, SCALE, T.TL1 if qtype == "tl1" else T.TL2)  # TL2: held as I2_S on aarch64
    ref = _reference_logits(shape, weights, SCALE, TOKENS)
    atol_ref = 1e-5 * np.abs(ref).max()
    atol = 2e-6 * np.abs(ref).max()

    got = {}
    for batch in (len(TOKENS), 1):
        opts = ["-b", batch]
        native = _logits([native_bin / "bitnet-logits"], path, tmp_path / "native.bin", shape.n_vocab, *opts)
        arm = _logits(engine.program_command(FLAVOR, arm_bin / "bitnet-logits"), path, tmp_path / "arm.bin",
                      shape.n_vocab, *opts)
        assert np.isfinite(arm).all() and arm.std() > 0
        print(f"{qtype} batch {batch}: max |arm - native| = {np.abs(arm - native).max():.3g} (atol {atol:.3g}), "
              f"max |arm - ref| = {np.abs(arm - ref).max():.3g} (atol {atol_ref:.3g})")
        np.testing.assert_allclose(arm, native, rtol=0, atol=atol)
        np.testing.assert_allclose(arm, ref, rtol=0, atol=atol_ref)
        np.testing.assert_allclose(native, ref, rtol=0, atol=atol_ref)
        got[batch] = arm
    # GEMV (token by token) and GEMM (whole batch) paths: the same integer dots
    np.testing.assert_allclose(got[1], got[len(TOKENS)], rtol=0, atol=atol)
