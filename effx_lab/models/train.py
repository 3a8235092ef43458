"""Training and checkpoints of TinyLM, and the script that makes the shipped checkpoint.

:func:`train_tinylm` is the course's one training loop (:func:`effx_lab.models.training.train`) with
TinyLM's settings; perplexities come from :func:`effx_lab.models.training.perplexity`.

``python -m effx_lab.models.train`` trains TinyLM (``TinyLMConfig()``: d_model 128, 2 layers, 4 heads,
context 256) on the byte-level training split of CPython's help text (:mod:`effx_lab.data`) on 2 CPU
threads, and writes ``tinylm_pydoc.npz`` in the current directory (float16 weights, the config, and
the training settings and measured perplexities as metadata); ``--out PATH`` writes elsewhere.
It never writes into the installed package unless asked: ``--overwrite-shipped`` rebuilds the shipped
checkpoint ``effx_lab/models/weights/tinylm_pydoc.npz`` (what the course maintainers run), and
``--dry-run`` prints what would be done without training.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from effx_lab._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    describe,
)
from effx_lab.data.pools import check_token_stream, token_splits
from effx_lab.models import reference, torch_ops
from effx_lab.models.config import TinyLMConfig, check_tinylm_params
from effx_lab.models.training import perplexity, train

__all__ = [
    "train_tinylm",
    "unigram_perplexity",
    "save_tinylm",
    "load_tinylm",
    "pretrained_tinylm_path",
    "load_pretrained_tinylm",
    "parse_args",
    "main",
]

#: Training settings of the shipped checkpoint (``python -m effx_lab.models.train`` uses them). Windows
#: span the whole context (256) so that every position embedding is trained. Measured alternatives at
#: the same cost: 32 x 128-token windows leave positions 128..255 untrained (perplexity about 34 there);
#: training first on 128 then on 256 tokens still left them at about 12; 8 x 256 for 1000 steps reached a
#: validation perplexity of 6.0 against 5.6 for these settings.
PRETRAIN_SETTINGS: dict[str, Any] = {"steps": 650, "batch_size": 16, "seq_len": 256, "lr": 3e-3}
PRETRAIN_SEED = 0

_CHECKPOINT_NAME = "tinylm_pydoc.npz"


def train_tinylm(
    model: torch_ops.TinyLM,
    train_tokens: np.ndarray,
    *,
    steps: int,
    batch_size: int = 32,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 50,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    verbose: bool = False,
) -> list[dict[str, float]]:
    """Train a torch TinyLM in place on next-token prediction; returns the logged history.

    This is :func:`effx_lab.models.training.train` with TinyLM's settings. Each step
    draws ``batch_size`` random windows of ``seq_len + 1`` tokens
    (:func:`effx_lab.data.get_batch` with ``numpy.random.default_rng(seed)``), minimises
    the mean cross-entropy of every next token with AdamW (Loshchilov & Hutter 2019;
    betas (0.9, 0.95), weight decay on matrices and embeddings only), clips the gradient
    norm to ``grad_clip``, and follows a linear warm-up (``warmup_steps``, default
    ``min(100, steps // 10)``) then a cosine decay to ``min_lr_ratio * lr``: nanoGPT's
    schedule, :func:`~effx_lab.models.training.lr_schedule` with ``hold=1``.

    Every ``log_every`` steps (and at the last step) the history gets a dict with
    ``step`` (1-based), ``loss`` (mean training loss since the previous entry,
    nats/token), ``lr``, ``tokens`` (seen so far) and ``elapsed_s`` (training time so
    far). ``verbose`` prints the logged entries when training ends (a progress bar shows
    in notebooks and terminals, see :mod:`effx_lab.progress`). The NumPy model cannot be
    trained (it has no autograd): convert it with
    ``torch_ops.TinyLM.from_params(model.to_params(), model.config)``.
    """
    if not isinstance(model, torch_ops.TinyLM):
        raise TypeError(
            f"model must be a torch_ops.TinyLM (the NumPy TinyLM has no autograd; convert it with "
            f"torch_ops.TinyLM.from_params(model.to_params(), model.config)), got {describe(model)}"
        )
    cfg = model.config
    steps = check_int("steps", steps, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=cfg.max_seq_len)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    seed = check_int("seed", seed, min_value=0)
    log_every = check_int("log_every", log_every, min_value=1)
    weight_decay = check_float("weight_decay", weight_decay, min_value=0.0)
    if warmup_steps is None:
        warmup_steps = min(100, steps // 10)
    warmup_steps = check_int("warmup_steps", warmup_steps, min_value=0, max_value=steps)
    min_lr_ratio = check_float("min_lr_ratio", min_lr_ratio, min_value=0.0, max_value=1.0)
    grad_clip = check_float("grad_clip", grad_clip, min_value=0.0, min_inclusive=False)
    verbose = check_bool("verbose", verbose)
    tokens = check_token_stream(
        "train_tokens", train_tokens, min_len=seq_len + 1, vocab_size=cfg.vocab_size
    )

    run = train(
        model, tokens, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
        warmup=warmup_steps, hold=1, min_ratio=min_lr_ratio, weight_decay=weight_decay,
        betas=(0.9, 0.95), grad_clip=grad_clip, seed=seed, desc="training TinyLM",
    )  # fmt: skip
    history: list[dict[str, float]] = []
    start = 0
    for stop in range(1, steps + 1):
        if stop % log_every == 0 or stop == steps:
            entry = {
                "step": stop,
                "loss": sum(run.losses[start:stop]) / (stop - start),
                "lr": run.lrs[stop - 1],
                "tokens": stop * batch_size * seq_len,
                "elapsed_s": run.elapsed_s[stop - 1],
            }
            history.append(entry)
            start = stop
            if verbose:
                print(
                    f"step {entry['step']:5d}  loss {entry['loss']:.4f}  ppl {math.exp(entry['loss']):7.3f}  "
                    f"lr {entry['lr']:.2e}  {entry['elapsed_s']:.1f}s"
                )
    return history


def unigram_perplexity(
    train_tokens: np.ndarray, eval_tokens: np.ndarray, *, vocab_size: int = 256, alpha: float = 1.0
) -> float:
    """Perplexity of ``eval_tokens`` under a unigram model fitted on ``train_tokens``.

    ``P(v) = (count(v) + alpha) / (N + alpha * vocab_size)`` (add-alpha smoothing, so unseen tokens get a
    finite cost). A language model that uses its context must do better than this baseline.
    """
    vocab_size = check_int("vocab_size", vocab_size, min_value=1)
    alpha = check_float("alpha", alpha, min_value=0.0, min_inclusive=False)
    train_ids, ev = (
        check_token_stream(name, t, min_len=1, vocab_size=vocab_size)
        for name, t in (("train_tokens", train_tokens), ("eval_tokens", eval_tokens))
    )
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    log_p = np.log((counts + alpha) / (counts.sum() + alpha * vocab_size))
    return float(np.exp(-log_p[ev].mean()))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------


def save_tinylm(
    model: reference.TinyLM | torch_ops.TinyLM,
    path: str | Path,
    *,
    dtype: str = "float16",
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a TinyLM (either backend) to a compressed ``.npz``: one array per parameter (stored as
    ``dtype``, ``"float16"`` or ``"float32"``), the config as JSON under ``__config__``, and ``meta``
    (any JSON-serialisable dict) under ``__meta__``."""
    if not isinstance(model, (reference.TinyLM, torch_ops.TinyLM)):
        raise TypeError(f"model must be a reference.TinyLM or torch_ops.TinyLM, got {describe(model)}")
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {describe(path)}")
    dtype = check_choice("dtype", dtype, ("float16", "float32"))
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {describe(meta)}")
    arrays: dict[str, np.ndarray] = {k: v.astype(dtype) for k, v in model.to_params().items()}
    arrays["__config__"] = np.array(json.dumps(model.config.to_dict()))
    arrays["__meta__"] = np.array(json.dumps(meta or {}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_tinylm(path: str | Path, backend: str = "torch") -> reference.TinyLM | torch_ops.TinyLM:
    """Read a checkpoint written by :func:`save_tinylm`; weights come back as float32.

    ``backend="torch"`` returns a ``torch_ops.TinyLM`` in eval mode, ``"numpy"`` a ``reference.TinyLM``.
    The checkpoint's metadata is attached as ``model.meta``.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {describe(path)}")
    backend = check_choice("backend", backend, ("torch", "numpy"))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TinyLM checkpoint at {path}")
    with np.load(path, allow_pickle=False) as data:
        if "__config__" not in data.files:
            raise ValueError(f"{path} is not a TinyLM checkpoint (no __config__ entry)")
        config = TinyLMConfig.from_dict(json.loads(str(data["__config__"])))
        meta = json.loads(str(data["__meta__"])) if "__meta__" in data.files else {}
        params = {k: data[k].astype(np.float32) for k in data.files if not k.startswith("__")}
    params = check_tinylm_params(params, config)
    if backend == "numpy":
        model: Any = reference.TinyLM(params, config)
    else:
        model = torch_ops.TinyLM(params, config).eval()
    model.meta = meta
    return model


def pretrained_tinylm_path() -> Path:
    """Path of the shipped checkpoint ``effx_lab/models/weights/tinylm_pydoc.npz``."""
    return Path(str(resources.files("effx_lab.models").joinpath("weights", _CHECKPOINT_NAME)))


def load_pretrained_tinylm(backend: str = "torch") -> reference.TinyLM | torch_ops.TinyLM:
    """The TinyLM trained on CPython's help text (see :func:`main`), as a torch or NumPy model."""
    backend = check_choice("backend", backend, ("torch", "numpy"))
    path = pretrained_tinylm_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped TinyLM checkpoint is missing at {path}; run `python -m effx_lab.models.train` to rebuild it"
        )
    return load_tinylm(path, backend)


# ----------------------------------------------------------------------------------------------------------
# The script that produces the shipped checkpoint
# ----------------------------------------------------------------------------------------------------------


def _package_dir() -> Path:
    return Path(str(resources.files("effx_lab"))).resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check the arguments of :func:`main` (``argv`` without the program name).

    Returns the namespace with ``out`` resolved to the file that will be written: ``--out``, else
    ``tinylm_pydoc.npz`` in the current directory, or the shipped checkpoint with ``--overwrite-shipped``.
    An ``--out`` inside the installed package is refused (argparse error, exit status 2): rebuilding the
    shipped checkpoint takes the explicit ``--overwrite-shipped``.
    """
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise TypeError(f"argv must be a list of str (e.g. sys.argv[1:]), got {describe(argv)}")
    argv = list(argv)
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise TypeError(f"argv[{i}] must be a str, got {describe(arg)}")
    parser = argparse.ArgumentParser(
        prog="python -m effx_lab.models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of steps by this")
    parser.add_argument("--seed", type=int, default=PRETRAIN_SEED)
    parser.add_argument("--threads", type=int, default=2)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out", type=Path, default=None, help=f"checkpoint to write (default: ./{_CHECKPOINT_NAME})"
    )
    where.add_argument(
        "--overwrite-shipped",
        action="store_true",
        help="write the checkpoint shipped inside the installed package (replaces the course's weights)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, train nothing")
    args = parser.parse_args(argv)
    args.scale = check_float("scale", args.scale, min_value=0.0, max_value=10.0, min_inclusive=False)
    args.seed = check_int("seed", args.seed, min_value=0)
    args.threads = check_int("threads", args.threads, min_value=1)
    if args.overwrite_shipped:
        args.out = pretrained_tinylm_path()
    else:
        args.out = Path(_CHECKPOINT_NAME) if args.out is None else args.out
        if _inside(args.out, _package_dir()):
            parser.error(
                f"--out {args.out} is inside the installed effx_lab package ({_package_dir()}); write the "
                f"checkpoint elsewhere, or pass --overwrite-shipped to replace the shipped one on purpose"
            )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train TinyLM on the pydoc corpus with :data:`PRETRAIN_SETTINGS`, measure it, and save the checkpoint.

    This is ``python -m effx_lab.models.train`` (which passes ``sys.argv[1:]``); see :func:`parse_args` for
    the options. ``argv=None`` means no arguments: called from Python, ``main()`` never reads the host
    program's ``sys.argv`` (a notebook kernel's or pytest's). ``--scale 0.1`` runs a tenth of the steps (a
    smoke test); ``--dry-run`` returns the plan (``out``, ``settings``, ``seed``, ``threads``) without
    training. The perplexities are measured on the model as stored (float16 weights), on windows of 128
    and of 256 tokens, next to the unigram baseline.
    """
    args = parse_args([] if argv is None else argv)
    settings = dict(PRETRAIN_SETTINGS, steps=max(1, round(PRETRAIN_SETTINGS["steps"] * args.scale)))
    if args.dry_run:
        plan = {"out": str(args.out), "settings": settings, "seed": args.seed, "threads": args.threads}
        print(f"dry run: would train with {settings}, seed {args.seed}, {args.threads} threads, write {args.out}")
        return plan
    return _train_and_save(args, settings)


def _train_and_save(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    seed = args.seed
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    train_tokens, val_tokens = token_splits()
    config = TinyLMConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, max_seq_len=256)
    model = torch_ops.TinyLM.from_config(config, seed=seed)
    print(f"TinyLM {config.n_params():,} parameters; train {train_tokens.size:,} bytes, val {val_tokens.size:,} bytes")
    print(f"training with {settings}, seed {seed}, {args.threads} threads")
    t0 = time.perf_counter()
    history = train_tinylm(model, train_tokens, seed=seed, log_every=50, verbose=True, **settings)
    train_s = time.perf_counter() - t0
    # measure the model as it is stored (float16 weights)
    stored = torch_ops.TinyLM.from_params(
        {k: v.astype(np.float16).astype(np.float32) for k, v in model.to_params().items()}, config
    ).eval()
    results = {
        "train_ppl_128": perplexity(stored, train_tokens, seq_len=128, max_batches=20),
        "val_ppl_128": perplexity(stored, val_tokens, seq_len=128),
        "val_ppl_256": perplexity(stored, val_tokens, seq_len=256),
        "unigram_val_ppl": unigram_perplexity(train_tokens, val_tokens),
        "train_seconds": train_s,
    }
    meta = {
        "corpus": "pydoc_data.topics (effx_lab.data.load_corpus_splits, byte-level)",
        "settings": settings,
        "seed": seed,
        "final_train_loss": history[-1]["loss"],
        "threads": args.threads,
        "measured": results,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    path = save_tinylm(model, args.out, dtype="float16", meta=meta)
    print(
        f"train ppl {results['train_ppl_128']:.3f} (320 windows of 128)  val ppl {results['val_ppl_128']:.3f} "
        f"(windows of 128), {results['val_ppl_256']:.3f} (windows of 256)  unigram val ppl "
        f"{results['unigram_val_ppl']:.3f}  trained in {train_s:.0f}s"
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
