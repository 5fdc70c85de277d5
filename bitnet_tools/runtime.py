"""Loading models through the patched llama_cpp with sensible defaults."""
from __future__ import annotations

import ctypes
import os
import re
from contextlib import contextmanager
from pathlib import Path

GGUF_MAGIC = b"GGUF"


def physical_cores() -> int:
    """Physical cores available to this process (llama-cpp-python's default, cpu_count // 2,
    gives one thread on a 2-vCPU machine)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        try:
            core_id = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id").read_text().strip()
            pkg = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id").read_text().strip()
            cores.add((pkg, core_id))
        except OSError:
            cores.add(("", str(cpu)))
    return max(1, len(cores))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the machine type where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


class ModelError(ValueError):
    """The model file cannot be used; the message names the cause and the fix."""


def check_model_file(path: Path) -> Path:
    """The checks that cost nothing before a load: the file exists and is a GGUF. The engine
    checks the rest as it loads (patches/files/src/llama-bitnet-validate.cpp); when it refuses a
    file, diagnose_model_file says why in our words."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist: check the path, or create one with 'bitnet convert'")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file: convert the checkpoint with 'bitnet convert' first")
    return path


def diagnose_model_file(path: Path) -> None:
    """Raises ModelError for a file that gguf-py reads as one we cannot run (tensor types this
    build does not know, bitnet.cpp's TL1 among them; a damaged header); returns for any other. It
    parses the whole header (seconds for a 128K-token vocabulary), so it runs only after the engine
    refused a file, to replace ggml's words ("invalid ggml type 38"), which come before our
    validator's, with the cause. bitnet.cpp's TL2 files (file type 39, tensor type 39 = MXFP4 here)
    read as valid GGUF: the engine's validator refuses those itself, in the same words."""
    import gguf
    from . import quants  # noqa: F401  (our type ids)
    from .gguf_adapter import UnknownTensorTypes
    unknown = []
    try:
        try:
            fields = gguf.GGUFReader(path).fields
        except UnknownTensorTypes as e:
            fields, unknown = e.fields, e.type_ids
        arch = fields.get("general.architecture")
        if arch is not None:
            arch.contents()  # decodes the text: a damaged one (not UTF-8) fails inside the try
    except Exception as e:  # a damaged file can break gguf-py's reader in many ways
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"{path} is not a readable GGUF file ({reason}): convert the checkpoint again") from None
    if 38 in unknown:  # bitnet.cpp's TL1 tensor type, whatever the header says
        raise ModelError(f"{path} is a bitnet.cpp TL1 file, tied to kernels generated for one model: "
                         f"convert the checkpoint with 'bitnet convert --outtype tl1' (or i2_s)")
    if unknown:
        raise ModelError(f"{path} holds tensors of ggml types {unknown}, which this build does not know: "
                         "convert the checkpoint with 'bitnet convert'")


@contextmanager
def engine_errors(echo: bool = True):
    """The engine's error lines logged inside the block. The engine checks every model it loads
    (patches/files/src/llama-bitnet-validate.cpp) and logs why it refuses one; llama_cpp then
    raises only "Failed to load model", and prints the log only when verbose."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        if level == 4:  # GGML_LOG_LEVEL_ERROR (ggml.h; llama_cpp._logger still says 3)
            lines.append(text.decode("utf-8", errors="replace").strip())
        if echo:  # llama_cpp's own handling (printed when verbose)
            _logger.llama_log_callback(level, text, user_data)

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def engine_reason(lines: list[str]) -> str | None:
    """The one line that says why the engine refused a model or context."""
    said = [re.sub(r"^\w+: ", "", line) for line in lines if line]  # without the function name
    for line in said:
        found = re.match(r"error loading model: (.+)", line)
        if found and "failed to load model from" not in found.group(1):
            return found.group(1)
    if said:  # the reader's own words (gguf: "failed to read tensor data" ...) come first
        return f"{said[0]}: the file is damaged; convert the checkpoint again"
    return None


def reads_into_memory(n_bytes: int) -> bool:
    """The engine's own rule for its default load mode, asked from the loaded libllama
    (llama_read_into_huge_pages, patches/0014): read the weights into memory, where they get
    transparent huge pages and a generation step streams them faster than from the page cache's
    4 KiB pages, when huge pages are not switched off and the file is under half of the memory
    available; else map the file (a model near the size of memory then pages in from disk
    instead of failing to fit)."""
    import ctypes
    from llama_cpp import llama_cpp as lib
    f = lib._lib.llama_read_into_huge_pages
    f.argtypes, f.restype = [ctypes.c_size_t], ctypes.c_bool
    return bool(f(n_bytes))


def load(path: str | Path, n_ctx: int = 2048, n_threads: int | None = None, rpc: list[str] | str | None = None,
         tensor_split: list[float] | None = None, **kwargs):
    """A llama_cpp.Llama for a GGUF file, with threads = physical cores. A file or context the
    engine refuses raises ModelError with the engine's reason.

    rpc: workers ('HOST:PORT', see bitnet_tools.rpc) that hold the model's layers, split by their
    free memory or by tensor_split (one share per worker); a refused worker raises RPCError."""
    import llama_cpp

    path = check_model_file(Path(path))
    kwargs.setdefault("verbose", False)
    # read, not mapped, where the engine's own tools would read it (their default load mode,
    # patches/0014; llama_cpp.Llama can only say "map" or "read"); use_mmap=True maps the file
    kwargs.setdefault("use_mmap", not reads_into_memory(path.stat().st_size))
    threads = n_threads or physical_cores()
    if rpc:
        from . import rpc as rpc_mod
        workers = rpc_mod.parse_workers(rpc)
        rpc_mod.add_workers(workers)
        if workers != rpc_mod.added_workers():
            # ggml's device list is process-wide and llama-cpp-python cannot pass a per-model one
            raise rpc_mod.RPCError(f"this process already uses RPC workers {','.join(rpc_mod.added_workers())}: "
                                   f"load with the same list, or start a new process for other workers")
        kwargs["n_gpu_layers"] = -1  # every layer to the workers; the embeddings stay here
        if tensor_split:
            kwargs["tensor_split"] = rpc_mod.parse_split(tensor_split, len(workers))
    with engine_errors() as errors:
        try:
            return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, **kwargs)
        except ValueError as e:
            diagnose_model_file(path)
            reason = engine_reason(errors) or str(e)
            raise ModelError(f"{path}: {reason}") from None
