"""Training end to end on tiny models: the CLI as users run it, outputs, resume, configs, invariants."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny

from kvproj.data.datamodule import KVPairDataModule
from kvproj.data.facts import FactsConfig
from kvproj.models import ModelSpec
from kvproj.module import KVProjectorModule
from kvproj.pair import FrozenPair
from kvproj.projectors import C2CConfig, IdentityConfig, LinearConfig, LowRankConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def run_cli(*args: str, cwd: Path = ROOT, log: str = "WARNING") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KVPROJ_LOG": log}
    return subprocess.run(
        [sys.executable, "-m", "kvproj", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_smoke_fit_writes_outputs_and_resumes(tmp_path):
    common = ["--config", "configs/smoke.yaml", "--trainer.default_root_dir", str(tmp_path)]
    first = run_cli("fit", *common, "--trainer.max_steps", "12", "--trainer.val_check_interval", "6")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt_dir, log_dir = tmp_path / "checkpoints" / "smoke", tmp_path / "lightning_logs" / "smoke"
    assert (ckpt_dir / "last.ckpt").is_file()
    assert (ckpt_dir / "projector" / "projector.safetensors").is_file()
    assert (ckpt_dir / "projector" / "projector_config.json").is_file()
    assert list(log_dir.glob("events.out.tfevents.*"))
    state = _ckpt(ckpt_dir / "last.ckpt")
    assert state["global_step"] == 12
    assert state["KVPairDataModule"]["consumed"] == 12 * 8  # the stream position the model consumed
    # only projector weights are checkpointed; the frozen models never enter a .ckpt
    assert state["state_dict"] and all(k.startswith("transfer.projector.") for k in state["state_dict"])
    assert state["kvproj"]["target"]["name"] == "tiny:gemma3_text"
    assert state["kvproj"]["projector"] == "linear"
    assert state["kvproj"]["projector_init_args"] == {
        "layer_map": "proportional", "target_key_norm": True, "source_window": 0, "source_tokens": 1,
        "extra_source_layers": [], "bias": True, "residual_hidden": 0, "mode": "replace",
    }  # fmt: skip
    # stdout is a pipe here: plain progress lines every trainer.log_every_n_steps (5) steps and at the end
    lines = [line for line in first.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 5/12 (42%)", "step 10/12 (83%)", "step 12/12 (100%)"]
    assert re.fullmatch(
        r"step 5/12 \(42%\) \| train/loss \d+\.\d{4} \| [\d,]+ tok/s \| \d+\.\d\d s/step \| "
        r"elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d",
        lines[0],
    ), lines[0]
    assert "| val/loss " in lines[1]  # validated at step 6

    second = run_cli("fit", *common, "--trainer.max_steps", "16", "--ckpt_path", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = _ckpt(ckpt_dir / "last.ckpt")
    assert resumed["global_step"] == 16
    assert resumed["KVPairDataModule"]["consumed"] == 16 * 8
    assert "step 16/16 (100%)" in second.stdout and "step 5/" not in second.stdout  # counts from the resumed step
    assert not list((tmp_path / "lightning_logs").glob("smoke*/version_*"))  # same run folder, no version_N
    assert any(not torch.equal(state["state_dict"][k], resumed["state_dict"][k]) for k in state["state_dict"])


def _eval_callback_config(tmp_path: Path, eval_files: list[str]) -> str:
    extra = tmp_path / "eval.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n    - class_path: kvproj.callbacks.evaluation.FactsEvalCallback\n"
        f"      init_args: {{every_n_steps: 3, limit: 3, conditions: [projected], eval_files: {eval_files}}}\n"
    )
    return str(extra)


def test_eval_callback_writes_a_learning_curve_on_held_out_sets(tmp_path):
    extra = _eval_callback_config(tmp_path, ["passages:val", "narrative"])
    common = ["--config", "configs/smoke.yaml", "--config", extra, "--trainer.default_root_dir", str(tmp_path)]
    run = run_cli("fit", *common, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "lightning_logs" / "smoke" / "eval"
    names = sorted(p.name for p in folder.iterdir())
    # every 3 steps and at the end: steps 3 and 4, for each set
    assert names == [
        "narrative-step0000003.json", "narrative-step0000004.json",
        "passages-val-step0000003.json", "passages-val-step0000004.json",
    ]  # fmt: skip
    import json

    got = json.loads((folder / "passages-val-step0000004.json").read_text())
    assert got["eval_set"] == "passages:val" and got["global_step"] == 4 and got["n"] == 3
    assert set(got["conditions"]) == {"projected"}
    assert 0.0 <= got["conditions"]["projected"]["exact_match"] <= 1.0


def test_eval_callback_refuses_a_missing_set_before_training(tmp_path):
    extra = _eval_callback_config(tmp_path, [str(tmp_path / "missing.jsonl")])
    common = ["--config", "configs/smoke.yaml", "--config", extra, "--trainer.default_root_dir", str(tmp_path)]
    run = run_cli("fit", *common, "--trainer.max_steps", "4")
    assert run.returncode != 0
    assert "missing.jsonl: no such file" in run.stderr
    assert not (tmp_path / "checkpoints" / "smoke" / "last.ckpt").exists()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config):
    from kvproj.cli import main

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    text = out.getvalue()
    assert f"name: {config.stem}" in text  # run name = file name
    header = config.read_text().splitlines()[0]
    assert header.startswith("# ")  # every config says what it is ...
    assert "python -m kvproj" in config.read_text().split("\nrun:")[0]  # ... and how to run it


def test_print_config_without_config_prints_the_default_run():
    from kvproj.cli import main

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code in (0, None)
    text = out.getvalue()
    assert "name: default" in text and "genre_set: wide" in text and "answer_follow: 12" in text


def test_help_says_its_defaults_are_the_classes_and_where_the_run_config_is(capsys):
    from kvproj.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-h"])
    assert exit_info.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith('Note: the "default:" values below are each setting\'s class default')
    assert "--print_config" in text.split("\n\n")[0] and "--data.answer_follow ANSWER_FOLLOW" in text


def _print_config(*args: str) -> str:
    from kvproj.cli import main

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/smoke.yaml", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


def test_projector_config_forms_on_the_command_line_and_in_yaml(tmp_path):
    text = _print_config("--model.projector", "LowRankConfig", "--model.projector.rank", "32")
    assert "class_path: kvproj.projectors.LowRankConfig\n    init_args:\n      layer_map: proportional\n" in text
    assert "      rank: 32\n" in text
    short = tmp_path / "lowrank.yaml"  # a short class name in YAML
    short.write_text("model:\n  projector:\n    class_path: LowRankConfig\n    init_args: {rank: 16}\n")
    text = _print_config("--config", str(short), "--model.projector.layer_map", "terminal")
    assert "class_path: kvproj.projectors.LowRankConfig" in text
    assert "      layer_map: terminal\n" in text and "      rank: 16\n" in text
    text = _print_config("--model.projector", "C2CConfig", "--model.projector.hidden", "64")
    assert "class_path: kvproj.projectors.C2CConfig" in text and "      hidden: 64\n" in text
    assert "      gate_temperature_end: 0.1\n" in text  # every field shows, with its default


def test_bad_projector_settings_name_the_setting(tmp_path):
    from kvproj.cli import main

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):  # an architecture name is taken for its config class
        main(["fit", "--config", "configs/smoke.yaml", "--model.projector", "lowrank", "--print_config"])
    assert "class_path: kvproj.projectors.LowRankConfig" in out.getvalue()
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                "configs/smoke.yaml",
                "--model.projector",
                "kvproj.projectors.Nope",
                "--print_config",
            ]
        )
    assert 'Parser key "model.projector"' in err.getvalue() and "Nope" in err.getvalue()
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit):
        main(["fit", "--config", "configs/smoke.yaml", "--model.projector.rank", "8", "--print_config"])
    assert "Option 'rank' is not accepted" in err.getvalue()  # LinearConfig has no rank
    proc = run_cli(
        "fit", "--config", "configs/smoke.yaml", "--trainer.default_root_dir", str(tmp_path),
        "--model.projector", "LowRankConfig", "--model.projector.rank", "0",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "model.projector.rank: must be an integer >= 1, got 0" in proc.stderr


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    dm = _dm()
    module = KVProjectorModule(pair=dm.pair, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    module._trainer = SimpleNamespace(estimated_stepping_batches=110)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factor = scheduler.lr_lambdas[0]
    # linear warmup from 0 (step 0) to 1 (step warmup_steps), half-cosine to min_lr_ratio at the last step
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.1 + 0.9 * 0.5, 110: 0.1}
    assert {step: round(factor(step), 6) for step in expected} == pytest.approx(expected)
    assert factor(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0.7071067811865476))  # a quarter into the decay


def test_progress_callbacks_respect_the_trainer_settings():
    from lightning.pytorch.callbacks import RichProgressBar

    from kvproj.callbacks.progress import StepProgressBar, TokenThroughput, batch_tokens, progress_callbacks

    assert [type(c) for c in progress_callbacks({})] == [TokenThroughput, StepProgressBar]
    assert [type(c) for c in progress_callbacks({"enable_progress_bar": False})] == [TokenThroughput]
    assert [type(c) for c in progress_callbacks({"callbacks": [RichProgressBar()]})] == [TokenThroughput]
    from kvproj.data.pairs import EncodedExample, collate

    def example(source: int, prefix: int, continuation: int) -> EncodedExample:
        return EncodedExample("x", [5] * source, [6] * prefix, [-1] * prefix, [7] * continuation, [7] * continuation,
                              0, "a")  # fmt: skip

    batch = collate([example(2, 1, 2), example(3, 2, 1)], source_pad_id=0, target_pad_id=0)
    assert batch_tokens(batch) == 5 + 3 + 3
    assert isinstance(batch["n_tokens"], int)  # counted at collate time, no device sums
    masks = sum(int(batch[k].sum()) for k in ("source_mask", "target_prefix_mask", "continuation_mask"))
    assert batch["n_tokens"] == masks


def _dm(source=ModelSpec("tiny:llama", seed=1), target=ModelSpec("tiny:gemma3_text", seed=2), **kwargs):
    opts = dict(
        pair=FrozenPair(source, target),
        facts=FactsConfig(n_train_entities=200, n_val_entities=40, n_test_entities=40),
        batch_size=4,
        val_batch_size=4,
        val_examples=8,
    )
    opts.update(kwargs)
    return KVPairDataModule(**opts)


def _batch(dm: KVPairDataModule, start: int = 0) -> dict:
    stream = dm.iter_examples(start)
    return dm.add_caches(dm.collate([dm.encode(next(stream)) for _ in range(dm.batch_size)]))


def test_same_model_identity_transfer_matches_reading_the_text():
    dm = _dm(target=ModelSpec("tiny:llama", seed=1))
    module = KVProjectorModule(pair=dm.pair, projector=IdentityConfig())
    batch = _batch(dm)
    with torch.no_grad():
        out, projected, hidden = module.losses(batch)
        own = module.target_cache(batch)
        text = module.continuation_hidden(own, batch)
    real = batch["continuation_mask"].bool()
    torch.testing.assert_close(hidden[real], text[real], atol=1e-5, rtol=0)
    prefix = batch["target_prefix_mask"].bool()  # padding positions hold anything: they are masked
    for a, b in zip(projected.keys + projected.values, own.keys + own.values):
        torch.testing.assert_close(a.transpose(1, 2)[prefix], b.transpose(1, 2)[prefix], atol=1e-5, rtol=0)


def test_data_stream_is_deterministic_and_resumable():
    dm = _dm()
    full = [e["id"] for e, _ in zip(dm.iter_examples(0), range(30))]
    again = [e["id"] for e, _ in zip(dm.iter_examples(20), range(10))]
    assert again == full[20:30]
    assert len(set(full)) == 30


def test_text_mix_and_lm_examples(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Document {i} talks about the river Ouse and {i * 7} boats." for i in range(50)))
    dm = _dm(dataset="text", text={"files": [str(corpus)]})
    ex = next(dm.iter_examples(0))
    assert ex["question"] == "" and ex["context"] and ex["answer"]
    batch = _batch(dm)
    module = KVProjectorModule(pair=dm.pair, answer_weight=1.0, kl_weight=0.5)
    batch = _batch(dm)
    out, _, _ = module.losses(batch)
    assert torch.isfinite(out["loss"]) and out["kl"] >= 0


def test_kl_on_the_answer_tokens_only():
    """kl_tokens: answer scores the KL where the answer cross-entropy is scored (as evaluation does); on the same
    batch it differs from the KL over every continuation token, and is the mean of evaluation's per-example KL."""
    from kvproj.adapters.heads import logits_from_hidden
    from kvproj.losses import kl_per_example, scored_positions

    dm = _dm()
    batch = _batch(dm)
    answer = KVProjectorModule(pair=dm.pair, kl_weight=1.0, answer_weight=0.0, kl_tokens="answer")
    every = KVProjectorModule(pair=dm.pair, kl_weight=1.0, answer_weight=0.0)
    every.load_state_dict(answer.state_dict())
    with torch.no_grad():
        out_answer, projected, hidden = answer.losses(batch)
        out_every, _, _ = every.losses(batch)
        target = dm.pair.target.model
        mask, _ = scored_positions(batch["labels"])
        rows = torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]
        by_hand = kl_per_example(
            logits_from_hidden(target, hidden[:, :-1][mask]),
            logits_from_hidden(target, answer.oracle_hidden(batch)[:, :-1][mask]), rows, mask.shape[0],
        ).nanmean()  # fmt: skip
    torch.testing.assert_close(out_answer["kl"], by_hand)
    assert out_answer["kl"] > 0 and abs(out_answer["kl"].item() - out_every["kl"].item()) > 1e-4
    with pytest.raises(ValueError, match="model.kl_tokens: got 'all'; valid: continuation, answer"):
        KVProjectorModule(pair=dm.pair, kl_weight=1.0, kl_tokens="all")


def test_ridge_start_fits_the_target_cache_better_than_random():
    from kvproj.losses import reconstruction
    from kvproj.ridge import ridge_init

    dm = _dm(target=ModelSpec("tiny:qwen2", seed=2))
    module = KVProjectorModule(pair=dm.pair, projector=LinearConfig(), ridge_batches=4)
    batch = _batch(dm, start=500)
    valid = batch["target_prefix_mask"].bool() & (batch["align_index"] >= 0)
    own = dm.pair.target_cache(batch)
    with torch.no_grad():
        before, _, _ = reconstruction(module.project(batch), own, valid)
        ridge_init(module, dm)
        after, _, _ = reconstruction(module.project(batch), own, valid)
    assert after < 0.5 * before


def test_lowrank_ridge_start_is_the_truncated_svd_of_the_linear_one():
    from kvproj.losses import reconstruction
    from kvproj.ridge import ridge_init

    dm = _dm(target=ModelSpec("tiny:qwen2", seed=2))
    batch = _batch(dm, start=500)
    valid = batch["target_prefix_mask"].bool() & (batch["align_index"] >= 0)
    own = dm.pair.target_cache(batch)
    linear = KVProjectorModule(pair=dm.pair, projector=LinearConfig(), ridge_batches=4)
    width = min(dm.pair.source.geometry.width, dm.pair.target.geometry.width)
    full = KVProjectorModule(pair=dm.pair, projector=LowRankConfig(rank=width), ridge_batches=4)
    low = KVProjectorModule(pair=dm.pair, projector=LowRankConfig(rank=2), ridge_batches=4)
    with torch.no_grad():
        random_fit, _, _ = reconstruction(low.project(batch), own, valid)
        errors = []
        for module in (linear, full, low):
            ridge_init(module, dm)
            errors.append(reconstruction(module.project(batch), own, valid)[0].item())
    # full rank reproduces the ridge map; rank 2 loses some of it but starts far better than random
    assert errors[1] == pytest.approx(errors[0], rel=1e-4)
    assert errors[0] < errors[2] < 0.5 * random_fit.item()
    with pytest.raises(ValueError, match="model.ridge_init: the 'c2c' projector has no closed-form start"):
        ridge_init(KVProjectorModule(pair=dm.pair, projector=C2CConfig(hidden=8)), dm)


def test_ridge_with_a_source_window_finds_the_source_layer_that_carries_each_target_layer():
    """Planted: same model, every target layer mapped to source layer 1 with a window of 1 (source layers 0-2).
    Target layer t's cache IS source layer t's, so the ridge fit is (nearly) exact and puts its weight on layer t,
    while one source layer per target layer cannot fit layers 0 and 2."""
    from kvproj.losses import reconstruction
    from kvproj.ridge import ridge_init

    same = ModelSpec("tiny:llama", seed=1)
    dm = _dm(source=same, target=same)
    layers = dm.pair.target.geometry.num_layers
    assert layers == 3
    batch = _batch(dm, start=500)
    valid = batch["target_prefix_mask"].bool() & (batch["align_index"] >= 0)
    own = dm.pair.target_cache(batch)
    errors, modules = [], []
    for window in (0, 1):
        module = KVProjectorModule(
            pair=dm.pair, projector=LinearConfig(layer_map=[1] * layers, source_window=window), ridge_batches=4,
            ridge_lambda=1e-6,
        )  # fmt: skip
        with torch.no_grad():
            ridge_init(module, dm)
            errors.append(reconstruction(module.project(batch), own, valid)[0].item())
        modules.append(module)
    assert modules[1].projector.source_layers == [[0, 1, 2]] * layers
    assert errors[1] < 1e-3 * errors[0]
    shares = modules[1].projector.source_layer_shares()
    for t in range(layers):
        assert shares[t][t] > 0.99, shares[t]
    assert modules[0].projector.source_layer_shares() is None


def test_ridge_with_extra_source_layers_uses_them_where_they_carry_the_target_layer():
    """Planted: same model, every target layer mapped to the last source layer, plus source layer 0 for all
    (`extra_source_layers: [0]`). Target layer 0's cache IS source layer 0's: the fit puts its weight there; the
    last target layer keeps it on its own layer."""
    from kvproj.ridge import ridge_init

    same = ModelSpec("tiny:llama", seed=1)
    dm = _dm(source=same, target=same)
    last = dm.pair.target.geometry.num_layers - 1
    module = KVProjectorModule(
        pair=dm.pair, projector=LinearConfig(layer_map=[last] * (last + 1), extra_source_layers=[0]),
        ridge_batches=4,
        ridge_lambda=1e-6,
    )  # fmt: skip
    assert module.projector.source_layers == [[last, 0]] * (last + 1)
    with torch.no_grad():
        ridge_init(module, dm)
    shares = module.projector.source_layer_shares()
    assert shares[0][0] > 0.99 and shares[last][last] > 0.99, shares


def test_ridge_with_source_tokens_keeps_the_aligned_position_when_it_carries_everything():
    """Planted: same model, so the target's cache at each position IS the source's at the aligned one; with the
    position before it also on offer (`source_tokens: 2`), the fit stays (nearly) exact and puts its weight on the
    aligned position."""
    from kvproj.losses import reconstruction
    from kvproj.ridge import ridge_init

    same = ModelSpec("tiny:llama", seed=1)
    dm = _dm(source=same, target=same)
    batch = _batch(dm, start=500)
    valid = batch["target_prefix_mask"].bool() & (batch["align_index"] >= 0)
    own = dm.pair.target_cache(batch)
    module = KVProjectorModule(
        pair=dm.pair, projector=LinearConfig(source_tokens=2), ridge_batches=4, ridge_lambda=1e-6
    )
    with torch.no_grad():
        for p in module.projector.parameters():
            p.normal_()  # not the identity start: the fit must find it
        far = reconstruction(module.project(batch), own, valid)[0].item()
        ridge_init(module, dm)
        near = reconstruction(module.project(batch), own, valid)[0].item()
    assert near < 1e-4 * far
    shares = module.projector.source_token_shares()
    assert shares[0] > 0.99, shares


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="data.protocol: got 'both'; valid: masked, shared"):
        _dm(protocol="both")
    dm = _dm()
    with pytest.raises(ValueError, match="model.mode: got 'merge'; valid: replace, fuse"):
        KVProjectorModule(pair=dm.pair, mode="merge")
    with pytest.raises(ValueError, match="model.projector.layer_map: target layer 0 maps to source layer 9"):
        KVProjectorModule(pair=dm.pair, projector=LinearConfig(layer_map=[9, 0, 0, 0]))
    with pytest.raises(ValueError, match="model.projector: got 'lowrank'; give a projector config: LinearConfig"):
        KVProjectorModule(pair=dm.pair, projector="lowrank")
    with pytest.raises(ValueError, match="model.min_lr_ratio: must be between 0 and 1, got 1.5"):
        KVProjectorModule(pair=dm.pair, min_lr_ratio=1.5)
    module = KVProjectorModule(pair=dm.pair, projector=LowRankConfig(rank=4))
    assert module.hparams.projector == {  # recorded as the CLI records it: JSON-friendly for the export
        "class_path": "kvproj.projectors.lowrank.LowRankConfig",
        "init_args": {
            "layer_map": "proportional",
            "target_key_norm": True,
            "source_window": 0,
            "source_tokens": 1,
            "extra_source_layers": [],
            "rank": 4,
        },
    }
    with pytest.raises(ValueError, match="at least one of answer_weight"):
        KVProjectorModule(pair=dm.pair, answer_weight=0.0)


def test_unknown_model_name_says_how_to_get_it():
    from kvproj.models import ModelNotFoundError, load_model

    with pytest.raises(ModelNotFoundError, match="kvproj zoo install"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError, match="unknown tiny family; valid: tiny:llama, tiny:qwen2"):
        load_model("tiny:bert")
    assert tiny("llama").geometry.num_layers == 3


def test_ddp_on_cpu_with_gloo_shares_the_stream(tmp_path):
    proc = run_cli(
        "fit", "--config", "configs/smoke.yaml", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_steps", "6", "--trainer.callbacks", "[]", "--trainer.val_check_interval", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _ckpt(tmp_path / "checkpoints" / "smoke" / "last.ckpt")
    assert state["global_step"] == 6
    assert state["KVPairDataModule"]["consumed"] == 6 * 8 * 2  # two ranks, disjoint shares of one stream


@pytest.mark.parametrize(
    "name, differs",
    [
        ("smollm2-qwen-coder", {("run", "name"), ("model", "lr"), ("pair", "target", "name")}),
        (
            "qwen-coder-0.5b-1.5b",
            {
                ("run", "name"),
                ("model", "lr"),
                ("pair", "source", "name"),
                ("pair", "target", "name"),
                ("trainer", "precision"),
            },
        ),  # fmt: skip
    ],
)
def test_pair_configs_carry_the_default_recipe(name, differs):
    """The pair configs are copies of configs/default.yaml (one file per run, as `plan` and `fit --config` read
    them); they may differ only where their header says, so a change to the default recipe cannot leave them
    behind (they once kept the old facts-only recipe)."""
    import yaml

    def flat(d, prefix=()):
        for k, v in d.items():
            yield from flat(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]

    default = dict(flat(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())))
    pair = dict(flat(yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())))
    changed = {k for k in default.keys() | pair.keys() if default.get(k) != pair.get(k)}
    assert changed == differs
