"""What is built and where: the engine pin, the patch series, the installed llama_cpp and the
CPU features its build uses."""
from __future__ import annotations

import ctypes
import json
import re

from . import engine, quants


def ggml_type_name(type_id: int) -> str | None:
    """ggml_type_name() of the library the bindings load: proves which ggml this is."""
    try:
        lib = engine.ggml_base_library()
    except (ImportError, engine.EngineError):
        return None
    if not hasattr(lib, "ggml_tl_nbytes"):
        return None  # not our build: its type tables may end before our ids, so do not index them
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    if lib.ggml_blck_size(type_id) == 0:
        return None
    name = lib.ggml_type_name(type_id)
    return name.decode() if name else None


def cpu_features() -> dict[str, bool]:
    """CPU features compiled into the loaded build, as llama.cpp reports them."""
    try:
        import llama_cpp
        info = llama_cpp.llama_print_system_info().decode()
    except Exception:  # noqa: BLE001
        return {}
    feats = {}
    for name, value in re.findall(r"([A-Z0-9_]+) = (\d)", info):
        feats[name] = value == "1"
    return feats


def report() -> dict:
    pin = engine.read_pin()
    out: dict = {
        "pin": {"package": pin.package, "version": pin.version, "sha256": pin.sha256,
                "llama_cpp_commit": pin.llama_cpp_commit, "llama_cpp_build": pin.llama_cpp_build},
        "patch_series": [p.name for p in engine.series()],
        "series_hash": engine.series_hash()[:12],
        "source_tree": str(pin.llama_cpp_dir) if pin.llama_cpp_dir.exists() else None,
        "builds": {},
    }
    for flavor in engine.FLAVORS:
        stamp = engine.stamp_path(flavor)
        if stamp.exists():
            info = json.loads(stamp.read_text())
            key = engine.build_key(pin, flavor)
            out["builds"][flavor] = {"key": info["key"], "current": info["key"] == key,
                                     "tools": str(engine.tools_dir(flavor))}
    installed = engine.installed_version()
    out["llama_cpp_python"] = installed
    out["llama_cpp_lib"] = str(engine.library_dir()) if installed else None
    # our ternary types, as the loaded library names them: a stale or unpatched build misses some
    out["ternary_types_known"] = installed is not None and all(
        ggml_type_name(int(t.qtype)) == name for name, t in quants.OURS.items())
    # TL2 weights as the loaded library holds them: as stored, or as I2_S (docs/tl.md)
    out["tl2_held_as_i2_s"] = out["ternary_types_known"] and engine.tl2_held_as_i2_s(engine.library_dir())
    from .fastest import cached
    out["fastest_types"] = cached()  # bitnet setup's measured choices: key -> type and figures
    feats = cpu_features()
    out["cpu_features"] = {k: feats.get(k, False) for k in
                           ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX_VNNI", "NEON",
                            "DOTPROD")}
    return out
