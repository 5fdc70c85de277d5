"""The engine: llama.cpp from the pinned llama-cpp-python sdist, patched and built.

Steps, each skipped when already done:
  fetch   pip downloads the pinned sdist; its sha256 must match vendor/pin.json
  unpack  into vendor/llama_cpp_python-<version>/ (git-ignored)
  patch   patches/files/ copied in, patches/*.patch applied in patches/series order
  build   1. the llama-cpp-python wheel from that tree, installed into this environment
          2. llama.cpp's own tools and tests from the same tree, in build/<flavor>/tools

A build is identified by a key over (sdist hash, patch series, build flags). The key goes into
the wheel's version ("0.3.36+bitnet.<key>") so pip can never reuse an unpatched wheel, and into
a stamp written only after everything succeeded: an interrupted build has no stamp and is
rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "vendor"
PATCHES = ROOT / "patches"
BUILD = ROOT / "build"

TOOLS = ["llama-quantize", "llama-bench", "llama-batched-bench", "llama-perplexity", "llama-completion", "llama-server",
         "ggml-rpc-server", "test-quantize-fns", "test-backend-ops", "bitnet-logits", "bitnet-roofline"]

# Debian packages that provide the build tools, for the error message when one is missing
BUILD_REQUIREMENTS = {"cmake": "cmake", "cc": "gcc", "c++": "g++", "ninja": "ninja-build", "git": "git"}


class EngineError(RuntimeError):
    """A failure the user can act on; the message names the cause and the fix."""


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    sha256: str
    llama_cpp_commit: str
    llama_cpp_build: str

    @property
    def sdist_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"

    @property
    def source_dir(self) -> Path:
        return VENDOR / f"{self.package.replace('-', '_')}-{self.version}"

    @property
    def llama_cpp_dir(self) -> Path:
        return self.source_dir / "vendor" / "llama.cpp"


def read_pin() -> Pin:
    return Pin(**json.loads((VENDOR / "pin.json").read_text()))


# ---------------------------------------------------------------- flavors (build flags)

FLAVORS = {
    # this machine's CPU: everything the compiler can use here (AVX-512 VNNI on the project machines)
    "native": ["-DGGML_NATIVE=ON"],
    # any x86-64 with AVX2 (Haswell and later), no AVX-512: for distributing, and to test the AVX2 path
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
             "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF"],
    # plain ARMv8.2 with dot product, for aarch64 machines
    "armv8": ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod"],
}
COMMON_CMAKE = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
# llama-server without its web UI: no npm at build time, no download of prebuilt assets (the
# sdist carries the UI's sources only); the API endpoints are all there
SERVER_CMAKE = ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]


def rpc_cmake() -> list[str]:
    """llama.cpp's RPC backend, tagged with our series id: RPC workers and clients compare it in
    their handshake (patch 0009), so hosts of different builds refuse each other. The id leaves
    out the CPU flavor on purpose: an AVX2 worker and an AVX-512 client run the same types."""
    return ["-DGGML_RPC=ON", "-DGGML_RPC_RDMA=OFF", f"-DBITNET_SERIES={series_hash()[:12]}"]


def wheel_cmake_args(flavor: str) -> list[str]:
    """CMake arguments of the llama-cpp-python wheel (the library `import llama_cpp` loads)."""
    return FLAVORS[flavor] + COMMON_CMAKE + rpc_cmake() + ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
                                                           "-DLLAMA_BUILD_SERVER=OFF"]


def tools_cmake_args(flavor: str) -> list[str]:
    """CMake arguments of llama.cpp's own tools and tests built from the same tree."""
    return ["-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_TOOLS=ON", *COMMON_CMAKE, *rpc_cmake(), *SERVER_CMAKE,
            *FLAVORS[flavor], *cross_cmake(flavor)]


def host_is_aarch64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def portable_flavor() -> str:
    return "armv8" if host_is_aarch64() else "avx2"


# ---------------------------------------------------------------- cross build (aarch64 on x86-64)

# Debian's cross compilers and user-mode emulator; tool -> package, for the error message
CROSS_AARCH64 = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
QEMU_AARCH64 = {"qemu-aarch64": "qemu-user"}
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's aarch64 libc and libstdc++ (libc6-dev-arm64-cross, ...)


def is_cross(flavor: str) -> bool:
    """True when this flavor's programs are built for another CPU than this machine's."""
    return flavor == "armv8" and not host_is_aarch64()


def cross_cmake(flavor: str) -> list[str]:
    """CMake toolchain settings for a cross build (none for a native one). Libraries are static
    so that the programs need nothing but the sysroot's libc/libstdc++ under qemu."""
    if not is_cross(flavor):
        return []
    return ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
            "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
            f"-DCMAKE_FIND_ROOT_PATH={AARCH64_SYSROOT}", "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
            "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY", "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY", "-DBUILD_SHARED_LIBS=OFF"]


def _missing(tools: dict) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def check_cross_toolchain(flavor: str) -> None:
    missing = _missing(CROSS_AARCH64) if is_cross(flavor) else []
    if missing:
        raise EngineError(f"cross-building the {flavor} flavor needs {', '.join(missing)}: install them with "
                          f"'apt-get install {' '.join(CROSS_AARCH64.values())}' (and qemu-user to run the programs)")


def program_command(flavor: str, program, *args) -> list[str]:
    """The command line that runs a program of this flavor's build here: as is, or for an aarch64
    build on another CPU under qemu-aarch64 with Debian's aarch64 libraries."""
    cmd = [str(program), *map(str, args)]
    if not is_cross(flavor):
        return cmd
    if _missing(QEMU_AARCH64):
        raise EngineError("running aarch64 programs here needs qemu-aarch64: install it with 'apt-get install qemu-user'")
    return ["qemu-aarch64", "-L", AARCH64_SYSROOT, *cmd]


def run_program(flavor: str, program, *args, timeout: float | None = None, text: bool = True) -> subprocess.CompletedProcess:
    """Run a program of this flavor's build (see program_command), capturing its output."""
    return subprocess.run(program_command(flavor, program, *args), capture_output=True, text=text, timeout=timeout)


# ---------------------------------------------------------------- patch series

def series() -> list[Path]:
    names = [ln.strip() for ln in (PATCHES / "series").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return [PATCHES / n for n in names]


def own_files() -> list[Path]:
    """Our kernel sources, copied into the tree at the same relative path."""
    base = PATCHES / "files"
    return sorted(p for p in base.rglob("*") if p.is_file())


def series_hash() -> str:
    h = hashlib.sha256()
    for p in series() + own_files():
        h.update(str(p.relative_to(PATCHES)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def build_key(pin: Pin, flavor: str) -> str:
    h = hashlib.sha256()
    h.update(pin.sha256.encode())
    h.update(series_hash().encode())
    # exactly the arguments both builds get, so no flag can change without a rebuild
    h.update(" ".join(wheel_cmake_args(flavor)).encode() + b"\0" + " ".join(tools_cmake_args(flavor)).encode())
    return h.hexdigest()[:12]


def _git_apply(tree: Path, patch: Path, *args: str) -> bool:
    # the tree sits inside our own checkout: stop git from finding that repository, or it would
    # take paths relative to the checkout's top instead of the tree
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
    r = subprocess.run(["git", "apply", "--whitespace=nowarn", *args, str(patch)],
                       cwd=tree, capture_output=True, text=True, env=env)
    return r.returncode == 0


def touched_files(patches: list[Path]) -> list[str]:
    """The tree-relative paths these patches change, in order of first mention."""
    files: list[str] = []
    for p in patches:
        for line in p.read_text().splitlines():
            if line.startswith("+++ b/") and line[len("+++ b/"):] not in files:
                files.append(line[len("+++ b/"):])
    return files


def _applied_together(tree: Path, patches: list[Path]) -> bool:
    """Whether all these patches are in the tree, applied in this order: they reverse-apply last
    first on a scratch copy of the files they touch. One at a time is not enough: a later patch
    may add lines beside an earlier one's, changing the context that one's reverse needs."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "tree"
        for rel in touched_files(patches):
            if (tree / rel).exists():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tree / rel, scratch / rel)
        return all(_git_apply(scratch, p, "-R") for p in reversed(patches))


def apply_patches(tree: Path) -> list[str]:
    """Bring the tree to the current series; returns what was done, one line per patch.

    The applied series is recorded in <tree>/.bitnet-applied/ (copies of the patches). A patch
    already in place (same content, same position) is left alone so that unchanged files keep
    their timestamps and rebuilds stay incremental; a changed series is rolled back to the
    common prefix and re-applied. A tree that is patched but has no record is detected by
    reverse-applying, never patched twice.
    """
    record = tree / ".bitnet-applied"
    record.mkdir(exist_ok=True)
    old = [record / n for n in (record / "series").read_text().split()] if (record / "series").exists() else []
    new = series()

    keep = 0
    while keep < min(len(old), len(new)) and old[keep].read_bytes() == new[keep].read_bytes():
        keep += 1
    for p in reversed(old[keep:]):
        if not _git_apply(tree, p, "-R"):
            raise EngineError(f"cannot roll back {p.name} in {tree}: delete {tree} and run 'bitnet setup' again")

    done = []
    for i, p in enumerate(new[keep:], keep):
        if _git_apply(tree, p, "--check"):
            _git_apply(tree, p)
            done.append(f"applied {p.name}")
        elif _git_apply(tree, p, "-R", "--check") or _applied_together(tree, new[i:]):
            done.append(f"{p.name} already applied")
        else:
            raise EngineError(f"patch {p.name} does not apply to {tree}: delete {tree} and run 'bitnet setup' again")
    for p in new[:keep]:
        done.append(f"{p.name} unchanged")

    for f in own_files():
        dst = tree / f.relative_to(PATCHES / "files")
        if not dst.exists() or dst.read_bytes() != f.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)

    for p in record.glob("*.patch"):
        p.unlink()
    for p in new:
        shutil.copyfile(p, record / p.name)
    (record / "series").write_text("\n".join(p.name for p in new) + "\n")
    return done


# ---------------------------------------------------------------- fetch and unpack

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(pin: Pin, log) -> Path:
    """The pinned sdist in vendor/, downloaded with pip from the package index if missing."""
    path = VENDOR / pin.sdist_name
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=VENDOR) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--no-build-isolation", f"{pin.package}=={pin.version}", "-d", tmp]
            r = _run(cmd, log)
            got = Path(tmp) / pin.sdist_name
            if r.returncode != 0 or not got.exists():
                raise EngineError(f"could not download {pin.package}=={pin.version} from the package index "
                                  f"(see {log.name}): check the network or pip's index settings")
            os.replace(got, path)
    digest = sha256_file(path)
    if digest != pin.sha256:
        path.unlink()
        raise EngineError(f"{pin.sdist_name} has sha256 {digest}, vendor/pin.json expects {pin.sha256}: "
                          "refusing to build it (the file was removed; check the pin or the index)")
    return path


def unpack(pin: Pin, sdist: Path) -> Path:
    """vendor/<sdist dir>, unpacked once; a half-finished unpack never takes its place."""
    if (pin.source_dir / ".bitnet-unpacked").exists():
        return pin.source_dir
    if pin.source_dir.exists():
        shutil.rmtree(pin.source_dir)
    with tempfile.TemporaryDirectory(dir=VENDOR) as tmp:
        with tarfile.open(sdist) as tar:
            # the "data" filter refuses links and paths that leave the target (Python >= 3.10.12)
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        src = Path(tmp) / pin.source_dir.name
        # the sdist ships llama.cpp's submodule pointer; it points nowhere and confuses git
        git_pointer = src / "vendor" / "llama.cpp" / ".git"
        if git_pointer.is_file():
            git_pointer.unlink()
        (src / ".bitnet-unpacked").write_text(pin.sha256 + "\n")
        os.replace(src, pin.source_dir)
    return pin.source_dir


# ---------------------------------------------------------------- build

def check_toolchain() -> None:
    for tool, package in BUILD_REQUIREMENTS.items():
        if shutil.which(tool) is None:
            raise EngineError(f"'{tool}' is not installed: install it with 'apt-get install {package}'")


def _run(cmd: list[str], log, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    log.write(f"\n$ {' '.join(map(str, cmd))}\n")
    log.flush()
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _build_env() -> dict:
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)  # it turns GGML_NATIVE off
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    return env


def wheel_version(pin: Pin, key: str) -> str:
    return f"{pin.version}+bitnet.{key}"


def build_wheel(pin: Pin, flavor: str, key: str, log) -> Path:
    """Build the patched llama-cpp-python wheel and install it into this environment."""
    src = pin.source_dir
    init = src / "llama_cpp" / "__init__.py"
    text = init.read_text()
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{wheel_version(pin, key)}"', text))

    out = BUILD / flavor / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = _build_env()
    env["CMAKE_ARGS"] = " ".join(wheel_cmake_args(flavor))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
           "-C", f"build-dir={BUILD / flavor / 'py'}", "-w", str(out), str(src)]
    if _run(cmd, log, env=env).returncode != 0:
        raise EngineError(f"building the llama-cpp-python wheel failed; full log: {log.name}")
    wheels = list(out.glob("*.whl"))
    if len(wheels) != 1:
        raise EngineError(f"expected one wheel in {out}, found {len(wheels)}; full log: {log.name}")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-cache-dir", str(wheels[0])]
    if _run(cmd, log).returncode != 0:
        raise EngineError(f"installing {wheels[0].name} failed; full log: {log.name}")
    return wheels[0]


def tools_dir(flavor: str) -> Path:
    return BUILD / flavor / "tools" / "bin"


def build_tools(pin: Pin, flavor: str, log, targets: list[str] = TOOLS) -> Path:
    """llama.cpp's own tools and tests from the same patched tree (pip does not build them)."""
    bdir = BUILD / flavor / "tools"
    env = _build_env()
    cmd = ["cmake", "-S", str(pin.llama_cpp_dir), "-B", str(bdir), "-G", "Ninja", *tools_cmake_args(flavor)]
    if _run(cmd, log, env=env).returncode != 0:
        raise EngineError(f"configuring llama.cpp's tools failed; full log: {log.name}")
    cmd = ["cmake", "--build", str(bdir), "--target", *targets]
    if _run(cmd, log, env=env).returncode != 0:
        raise EngineError(f"building llama.cpp's tools failed; full log: {log.name}")
    return bdir / "bin"


# ---------------------------------------------------------------- state

def stamp_path(flavor: str) -> Path:
    return BUILD / flavor / "stamp.json"


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return None


def is_current(pin: Pin, flavor: str, key: str, wheel: bool = True) -> bool:
    """True when the build for this key finished and is the one installed."""
    stamp = stamp_path(flavor)
    if not stamp.exists() or json.loads(stamp.read_text()).get("key") != key:
        return False
    if any(not (tools_dir(flavor) / t).exists() for t in TOOLS):
        return False
    return not wheel or installed_version() == wheel_version(pin, key)


def installed_build() -> tuple[str, str]:
    """(flavor, build key) of the build whose wheel is installed and whose tools are current:
    `bitnet setup` and `bitnet setup --portable` install different flavors."""
    pin = read_pin()
    for flavor in FLAVORS:
        key = build_key(pin, flavor)
        if is_current(pin, flavor, key):
            return flavor, key
    raise EngineError("no current engine build is installed for this patch series: run 'bitnet setup --engine-only'")


def library_dir() -> Path:
    """Directory of the libllama/libggml that `import llama_cpp` loads (LLAMA_CPP_LIB_PATH if set,
    as llama_cpp itself honours it, else the package's lib/)."""
    import llama_cpp
    return Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")


def tl2_held_as_i2_s(libdir: Path) -> bool:
    """Whether the engine build whose libraries are in libdir holds TL2 weights as I2_S in memory
    (a CPU without AVX-512 VBMI, docs/tl.md): asked from that build's own libggml-cpu."""
    import ctypes
    libs = sorted(libdir.glob("libggml-cpu.so*"))
    if not libs:
        return False  # a static build (not this machine's): no library to ask
    f = ctypes.CDLL(str(libs[0])).ggml_bitnet_tl2_as_i2_s
    f.restype = ctypes.c_bool
    return bool(f())


def ggml_base_library():
    """ctypes handle of the libggml-base that `import llama_cpp` loads."""
    import ctypes
    libdir = library_dir()
    candidates = sorted(libdir.glob("libggml-base.*"))
    if not candidates:
        raise EngineError(f"no libggml-base in {libdir}: run 'bitnet setup' again")
    return ctypes.CDLL(str(candidates[0]))


def default_flavor(portable: bool) -> str:
    return portable_flavor() if portable else "native"


def build(portable: bool = False, force: bool = False, console=None) -> dict:
    """bitnet setup's engine part: everything from the pin to an installed, tested-ready build."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    pin = read_pin()
    flavor = default_flavor(portable)
    key = build_key(pin, flavor)
    if not force and is_current(pin, flavor, key):
        return {"key": key, "flavor": flavor, "rebuilt": False}

    check_toolchain()
    BUILD.mkdir(exist_ok=True)
    (BUILD / flavor).mkdir(exist_ok=True)
    stamp_path(flavor).unlink(missing_ok=True)  # from here on the old build is not current
    log_path = BUILD / flavor / "build.log"
    steps = ["fetch sdist", "unpack", "apply patches", "build + install llama-cpp-python", "build llama.cpp tools and tests"]
    with open(log_path, "w") as log, Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                              console=console, transient=False) as progress:
        def step(i: int):
            return progress.add_task(f"[{i + 1}/{len(steps)}] {steps[i]}", total=1)

        t = step(0); sdist = fetch_sdist(pin, log); progress.update(t, completed=1)
        t = step(1); unpack(pin, sdist); progress.update(t, completed=1)
        t = step(2)
        for line in apply_patches(pin.llama_cpp_dir):
            log.write(line + "\n")
        progress.update(t, completed=1)
        t = step(3); build_wheel(pin, flavor, key, log); progress.update(t, completed=1)
        t = step(4); build_tools(pin, flavor, log); progress.update(t, completed=1)

    stamp = {"key": key, "flavor": flavor, "flags": FLAVORS[flavor], "version": wheel_version(pin, key),
             "llama_cpp_commit": pin.llama_cpp_commit, "series_hash": series_hash()}
    tmp = stamp_path(flavor).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2))
    os.replace(tmp, stamp_path(flavor))
    return {"key": key, "flavor": flavor, "rebuilt": True, "log": str(log_path)}


TEST_PROGRAMS = ["test-quantize-fns", "test-backend-ops", "bitnet-logits", "bitnet-roofline"]


def build_test_programs(flavor: str) -> Path:
    """llama.cpp's test programs (and our bitnet-logits and bitnet-roofline) alone, for another flavor than the
    installed one: the AVX2-only path on an AVX-512 machine, or "armv8" cross-compiled for
    aarch64 on an x86-64 machine (run its programs with program_command / run_program).
    Cached by the same key as a full build; a current full build of the flavor is used as is."""
    pin = read_pin()
    key = build_key(pin, flavor)
    stamp = BUILD / flavor / "tests-stamp.json"
    for done in (stamp, stamp_path(flavor)):
        if done.exists() and json.loads(done.read_text()).get("key") == key and \
                all((tools_dir(flavor) / t).exists() for t in TEST_PROGRAMS):
            return tools_dir(flavor)
    check_toolchain()
    check_cross_toolchain(flavor)
    (BUILD / flavor).mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    with open(BUILD / flavor / "build.log", "w") as log:
        unpack(pin, fetch_sdist(pin, log))
        apply_patches(pin.llama_cpp_dir)
        build_tools(pin, flavor, log, targets=TEST_PROGRAMS)
    stamp.write_text(json.dumps({"key": key, "flavor": flavor}))
    return tools_dir(flavor)
