"""Public functions reject bad configs, bad sizes and impossible allocations with a message naming the argument;
``python -m effx_lab.models.train`` never writes into the installed package unless asked."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import effx_lab
from effx_lab import _validate as V
from effx_lab.attention import params as AP
from effx_lab.attention import reference as AR
from effx_lab.attention import torch_ops as AT
from effx_lab.flash import models as FM
from effx_lab.flash import params as FP
from effx_lab.flash import reference as FR
from effx_lab.flash import shapes as FS
from effx_lab.models import reference as R
from effx_lab.models import torch_ops as T
from effx_lab.models import train
from effx_lab.models.config import (
    MiniLMConfig,
    TinyLMConfig,
    check_generate_args,
    check_tinylm_params,
    init_tinylm_params,
    tinylm_param_shapes,
)

SMALL = TinyLMConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, max_seq_len=8)
TINY_MSG = r"config must be a TinyLMConfig \(effx_lab\.models\.config\.TinyLMConfig\), got "
HUGE = 10**9  # 10**9 x 10**9 of anything is more memory than any machine has


# =========================================================================== 1. config objects
TINYLM_TAKERS = {
    "torch_ops.MLP": lambda c: T.MLP(c),
    "torch_ops.Block": lambda c: T.Block(c),
    "torch_ops.CausalSelfAttention": lambda c: T.CausalSelfAttention(c),
    "torch_ops.KVCache": lambda c: T.KVCache(c, 1),
    "torch_ops.TinyLM": lambda c: T.TinyLM(init_tinylm_params(SMALL), c),
    "torch_ops.TinyLM.from_config": lambda c: T.TinyLM.from_config(c),
    "reference.KVCache": lambda c: R.KVCache(c, 1),
    "reference.TinyLM": lambda c: R.TinyLM(init_tinylm_params(SMALL), c),
    "reference.TinyLM.from_config": lambda c: R.TinyLM.from_config(c),
    "check_generate_args": lambda c: check_generate_args(c, 1, 1, 1.0, 0),
    "tinylm_param_shapes": lambda c: tinylm_param_shapes(c),
    "init_tinylm_params": lambda c: init_tinylm_params(c),
    "check_tinylm_params": lambda c: check_tinylm_params(init_tinylm_params(SMALL), c),
}


@pytest.mark.parametrize("bad, shown", [(None, r"None \(NoneType\)"), ({"d_model": 8}, r"\{'d_model': 8\} \(dict\)")])
@pytest.mark.parametrize("name", sorted(TINYLM_TAKERS))
def test_tinylm_config_must_be_a_tinylm_config(name, bad, shown):
    with pytest.raises(TypeError, match=TINY_MSG + shown):
        TINYLM_TAKERS[name](bad)


@pytest.mark.parametrize("name", sorted(TINYLM_TAKERS))
def test_tinylm_config_of_the_other_model_is_named(name):
    with pytest.raises(TypeError, match=TINY_MSG + r"MiniLMConfig"):
        TINYLM_TAKERS[name](MiniLMConfig())


def test_generate_args_check_the_prompt_length():
    with pytest.raises(ValueError, match="prompt_len must be an int >= 1, got 0"):
        check_generate_args(SMALL, 0, 1, 1.0, 0)


@pytest.mark.parametrize("backend", [R, T])
def test_minilm_forward_names_a_wrong_config(backend):
    ids = np.zeros((1, 3), dtype=np.int64)
    if backend is T:
        ids = torch.from_numpy(ids)
    with pytest.raises(TypeError, match=r"config must be a MiniLMConfig \(effx_lab\.models\.config\.MiniLMConfig\), got None"):
        backend.minilm_forward({}, None, ids, ids)


@pytest.mark.parametrize("build", [FM.build_lm, FM.LanguageModel])
@pytest.mark.parametrize("bad", [None, SMALL])
def test_flash_models_name_a_wrong_config(build, bad):
    with pytest.raises(TypeError, match=r"config must be an LMConfig \(effx_lab\.flash\.models\.LMConfig\), got "):
        build(bad)


# =========================================================================== 2. sizes
GAU_ARGS = ("d_model", "e", "s", "n_qk", "n_rel")


@pytest.mark.parametrize("position", range(5))
@pytest.mark.parametrize("value, error, says", [(-3, ValueError, "must be an int >= 1, got -3"),
                                                (0, ValueError, "must be an int >= 1, got 0"),
                                                ("oops", TypeError, "must be an int, got 'oops'"),
                                                (2.0, TypeError, "must be an int, got 2.0"),
                                                (True, TypeError, "must be an int, got True")])  # fmt: skip
def test_gau_param_shapes_checks_every_size(position, value, error, says):
    args = [4, 4, 4, 4, 5]
    args[position] = value
    with pytest.raises(error, match=f"{GAU_ARGS[position]} {says}"):
        FS.gau_param_shapes(*args)


def test_gau_param_shapes_needs_an_odd_number_of_offsets():
    with pytest.raises(ValueError, match="n_rel must be odd"):
        FS.gau_param_shapes(4, 4, 4, 4, 6)
    assert FS.gau_param_shapes(4, 8, 2, 2, 5)["w_uvz"] == (4, 18)


@pytest.mark.parametrize("args, error, says", [(("oops", 4), TypeError, "d_model must be an int, got 'oops'"),
                                               ((4, -1), ValueError, "e must be an int >= 1, got -1"),
                                               ((0, 4), ValueError, "d_model must be an int >= 1, got 0")])  # fmt: skip
def test_glu_param_shapes_checks_every_size(args, error, says):
    with pytest.raises(error, match=says):
        FS.glu_param_shapes(*args)


@pytest.mark.parametrize("args, says", [((0,), "d_model"), ((4, 0), "d_ff"), (("4",), "d_model")])
def test_mha_param_shapes_checks_its_sizes(args, says):
    with pytest.raises((TypeError, ValueError), match=f"{says} must be an int"):
        AR.mha_param_shapes(*args)


@pytest.mark.parametrize("mask", [AR.causal_mask, AT.causal_mask], ids=["numpy", "torch"])
def test_causal_mask_refuses_an_impossible_size_before_allocating(mask):
    with pytest.raises(ValueError, match=r"causal_mask\(n=1000000000, m=1000000000\) would allocate .* more than"):
        mask(n=HUGE)
    assert mask(3, 4).shape == (3, 4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: AP.init_mha_params(HUGE, 1),
        lambda: AP.init_transformer_layer_params(HUGE, 1),
        lambda: AP.init_transformer_layer_params(8, 1, d_ff=HUGE**2),
        lambda: FP.init_glu_params(HUGE),
        lambda: FP.init_gau_params(HUGE),
        lambda: FP.init_flash_params(8, s=HUGE**2),
        lambda: FP.init_gau_params(8, max_rel=HUGE**2),
        lambda: init_tinylm_params(TinyLMConfig(d_model=HUGE, n_heads=1)),
        lambda: R.KVCache(SMALL, HUGE**2),
        lambda: T.KVCache(SMALL, HUGE**2),
        lambda: T.MLP(TinyLMConfig(d_model=HUGE, n_heads=1)),
        lambda: T.CausalSelfAttention(TinyLMConfig(d_model=HUGE, n_heads=1)),
        lambda: FM.build_lm(FM.LMConfig(d_model=HUGE, n_heads=1)),
        lambda: FM.build_lm(FM.LMConfig(kind="flash", vocab_size=HUGE**2)),
    ],
    ids=["mha", "layer", "layer_d_ff", "glu", "gau", "flash_s", "gau_max_rel", "tinylm", "np_kv_cache",
         "torch_kv_cache", "torch_mlp", "torch_attention", "flash_lm", "flash_lm_vocab"],  # fmt: skip
)
def test_parameter_and_cache_allocations_are_checked_first(call):
    with pytest.raises(ValueError, match=r"would allocate .* bytes\), more than"):
        call()


def test_ordinary_sizes_still_allocate():
    assert AP.init_mha_params(8, 2)["wq"].shape == (8, 8)
    assert FP.init_flash_params(8, s=4, max_rel=2)["gamma"].shape == (4, 4)
    assert R.KVCache(SMALL, 2).nbytes == 2 * 1 * 2 * 2 * 8 * 4 * 4


def test_check_alloc_reads_meminfo():
    text = "MemTotal:       24683784 kB\nMemFree:        21119548 kB\nMemAvailable:   23648352 kB\n"
    assert V._meminfo_available(text) == 23648352 * 1024
    assert V._meminfo_available("MemTotal: 5 kB\n") is None
    available = V.available_memory_bytes()
    assert available is None or available > 0


def test_check_alloc_falls_back_to_a_fixed_limit(monkeypatch):
    monkeypatch.setattr(V, "available_memory_bytes", lambda: None)
    assert V.check_alloc("a small array", 1024) == 1024
    assert V.check_alloc("exactly the limit", V.FALLBACK_MEMORY_LIMIT_BYTES) == V.FALLBACK_MEMORY_LIMIT_BYTES
    with pytest.raises(ValueError, match="fixed limit"):
        V.check_alloc("one byte too many", V.FALLBACK_MEMORY_LIMIT_BYTES + 1)


def test_check_alloc_uses_the_available_memory(monkeypatch):
    limit = V.ALWAYS_ALLOWED_BYTES + 1000
    monkeypatch.setattr(V, "available_memory_bytes", lambda: limit)
    assert V.check_alloc("x", limit) == limit
    with pytest.raises(ValueError, match=rf"x would allocate .* \({limit + 1:,} bytes\), more than the memory available"):
        V.check_alloc("x", limit + 1)


def test_check_alloc_does_not_read_memory_for_small_requests(monkeypatch):
    def boom():
        raise AssertionError("read the available memory for a small request")

    monkeypatch.setattr(V, "available_memory_bytes", boom)
    assert V.check_alloc("causal_mask(n=64, m=64)", 64 * 64) == 4096
    assert V.check_alloc("at the bound", V.ALWAYS_ALLOWED_BYTES) == V.ALWAYS_ALLOWED_BYTES


@pytest.mark.parametrize("args, error, says", [(("x", -1), ValueError, "n_bytes must be an int >= 0, got -1"),
                                               (("x", 1.5), TypeError, "n_bytes must be an int"),
                                               (("", 1), TypeError, "what must be a non-empty str")])  # fmt: skip
def test_check_alloc_checks_its_arguments(args, error, says):
    with pytest.raises(error, match=says):
        V.check_alloc(*args)


def test_check_instance_message():
    with pytest.raises(TypeError, match=r"cfg must be an LMConfig \(effx_lab\.flash\.models\.LMConfig\), got 3 \(int\)"):
        V.check_instance("cfg", 3, FM.LMConfig, "an LMConfig")
    assert V.check_instance("cfg", SMALL, TinyLMConfig) is SMALL


# =========================================================================== 3. the training script
PACKAGE = Path(effx_lab.__file__).resolve().parent


class _Recorder:
    """Stands in for the slow parts of the training script: records what it was asked to do."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.steps: list[int] = []
        self.saved: list[Path] = []

    def train_tinylm(self, model, tokens, **kwargs):
        self.steps.append(kwargs["steps"])
        return [{"loss": 1.0}]

    def save_tinylm(self, model, path, **kwargs):
        self.saved.append(Path(path))
        out = self.tmp_path / "recorded.bin"
        out.write_bytes(b"x")
        return out


@pytest.fixture
def recorder(monkeypatch, tmp_path):
    rec = _Recorder(tmp_path)
    monkeypatch.setattr(train, "train_tinylm", rec.train_tinylm)
    monkeypatch.setattr(train, "save_tinylm", rec.save_tinylm)
    monkeypatch.setattr(train, "perplexity", lambda *a, **k: 1.0)
    monkeypatch.setattr(train, "unigram_perplexity", lambda *a, **k: 1.0)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield rec
    torch.set_num_threads(threads)


def _inside_package(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(PACKAGE)


def test_training_with_no_arguments_writes_to_the_current_directory(recorder, tmp_path, capsys):
    train.main([])
    assert recorder.saved == [Path("tinylm_pydoc.npz")]
    assert recorder.saved[0].resolve() == (tmp_path / "tinylm_pydoc.npz").resolve()
    assert not _inside_package(recorder.saved[0])


def test_training_called_from_python_ignores_the_host_programs_argv(recorder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["host-program", "--scale", "0.5"])
    train.main()  # argv=None: no arguments, not the host's
    assert recorder.steps == [train.PRETRAIN_SETTINGS["steps"]]
    assert not _inside_package(recorder.saved[0])
    monkeypatch.setattr(sys, "argv", ["host-program", "--not-an-option-of-train"])
    train.main(None)  # would be an argparse error (SystemExit) if the host's argv were read
    assert len(recorder.saved) == 2


def test_overwriting_the_shipped_checkpoint_needs_the_explicit_flag(recorder, capsys):
    train.main(["--overwrite-shipped", "--scale", "0.1"])
    assert recorder.saved == [train.pretrained_tinylm_path()]
    assert recorder.steps == [round(train.PRETRAIN_SETTINGS["steps"] * 0.1)]
    shipped = str(train.pretrained_tinylm_path())
    with pytest.raises(SystemExit) as info:
        train.main(["--out", shipped])
    assert info.value.code == 2
    assert "--overwrite-shipped" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--out", "elsewhere.npz", "--overwrite-shipped"])
    assert len(recorder.saved) == 1  # neither refused call got as far as saving


def test_dry_run_trains_and_writes_nothing(recorder, tmp_path, capsys):
    plan = train.main(["--dry-run", "--seed", "3"])
    assert plan["out"] == "tinylm_pydoc.npz" and plan["seed"] == 3
    assert plan["settings"]["steps"] == train.PRETRAIN_SETTINGS["steps"]
    assert recorder.steps == [] and recorder.saved == []
    assert list(tmp_path.iterdir()) == []
    assert "dry run" in capsys.readouterr().out


def test_parse_args_checks_its_input(tmp_path):
    assert train.parse_args([]).out == Path("tinylm_pydoc.npz")
    assert train.parse_args(["--out", str(tmp_path / "m.npz")]).out == tmp_path / "m.npz"
    with pytest.raises(TypeError, match="argv must be a list of str"):
        train.parse_args("--dry-run")
    with pytest.raises(TypeError, match=r"argv\[0\] must be a str"):
        train.parse_args([3])
    with pytest.raises(ValueError, match="threads must be an int >= 1, got 0"):
        train.parse_args(["--threads", "0"])
