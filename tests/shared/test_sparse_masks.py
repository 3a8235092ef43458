"""Tests of effx_lab.sparse.masks: weight masks that survive optimizer steps (ch03
pruning, ch04 N:M).

A small float64 MLP trained with AdamW (weight decay on) on a fixed regression batch:
the pruned weights must stay exactly zero and receive exactly zero gradient through 20
steps, masks can be tightened (gradual pruning), the model saves and loads its
state_dict, and forward passes under ``torch.no_grad()``/``inference_mode`` use the
masked weights. The first test shows why all this is needed: a plain
``weight.mul_(mask)`` does not last.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from effx_lab.sparse import masks as M
from effx_lab.sparse import reference as R
from effx_lab.sparse import torch_ops as T

STEPS = 20


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 8, generator=g, dtype=torch.float64), torch.randn(
        32, 4, generator=g, dtype=torch.float64
    )


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch) -> float:
    x, y = batch
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _half_masks(model: nn.Module, sparsity: float = 0.5) -> dict[str, torch.Tensor]:
    return {
        k: T.magnitude_mask(w, sparsity) for k, w in M.linear_weights(model).items()
    }


def _pruned_nonzeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    params = dict(model.named_parameters())
    return sum(int((params[k].detach()[~m] != 0).sum()) for k, m in masks.items())


# ========================================================================== the problem
def test_zeroing_the_weights_once_does_not_survive_adamw():
    """The docstring's claim: gradients (and, after dense steps, momentum) revive pruned
    weights.
    """
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    masks = _half_masks(model)
    with torch.no_grad():
        for k, w in M.linear_weights(model).items():
            w.mul_(masks[k])
    assert _pruned_nonzeros(model, masks) == 0
    _step(model, opt, batch)
    assert _pruned_nonzeros(model, masks) > 0.9 * sum(
        int((~m).sum()) for m in masks.values()
    )

    # zeroing the gradient too is not enough after dense steps: the momentum moves them
    model = _model()
    opt = _optimizer(model)
    for _ in range(5):
        _step(model, opt, batch)
    masks = _half_masks(model)
    with torch.no_grad():
        for k, w in M.linear_weights(model).items():
            w.mul_(masks[k])
            w.register_hook(lambda g, m=masks[k]: g * m)
    for _ in range(3):
        _step(model, opt, batch)
    assert _pruned_nonzeros(model, masks) > 0


# ============================================================================ the fix
@pytest.mark.parametrize("dense_steps", [0, 5])
def test_masked_weights_stay_exactly_zero_through_adamw(dense_steps):
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    for _ in range(dense_steps):
        _step(model, opt, batch)
    masks = _half_masks(model)
    before = {k: w.detach().clone() for k, w in M.linear_weights(model).items()}
    ms = M.apply_masks(model, masks)
    assert (
        isinstance(ms, M.MaskSet)
        and set(ms) == {"0.weight", "2.weight"}
        and ms.sparsity() == 0.5
    )
    losses = []
    for step in range(STEPS):
        losses.append(_step(model, opt, batch))
        params = dict(model.named_parameters())
        for k, m in masks.items():
            assert (params[k].grad[~m] == 0).all(), (
                f"the gradient of a pruned entry of {k} is not 0"
            )
        ms(model, step)  # the after_step hook
        assert _pruned_nonzeros(model, masks) == 0
    assert losses[-1] < losses[0]  # training happened
    for k, w in M.linear_weights(model).items():
        assert (w.detach()[masks[k]] != before[k][masks[k]]).all()  # kept weights moved


def test_a_deep_copy_keeps_its_masks_through_adamw():
    # copy.deepcopy drops tensor hooks: the copy's masks must register theirs again,
    # or AdamW moves the copy's pruned entries (found while building chapter 3)
    import copy

    model, batch = _model(), _batch()
    masks = _half_masks(model)
    M.apply_masks(model, masks)
    twin = copy.deepcopy(model)
    opt = _optimizer(twin)
    for _ in range(5):
        _step(twin, opt, batch)
        params = dict(twin.named_parameters())
        for k, m in masks.items():
            assert (params[k].grad[~m] == 0).all(), f"the copy's {k} gradient leaks"
    assert _pruned_nonzeros(twin, masks) == 0


def test_with_the_optimizer_state_cleared_no_reapply_is_needed():
    """Gradient hook + zeroed moments: Adam's update of a pruned entry is 0 / (0 + eps)
    = 0, decay of 0 is 0.
    """
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    for _ in range(5):
        _step(model, opt, batch)
    masks = _half_masks(model)
    M.apply_masks(model, masks, optimizer=opt)
    for _ in range(STEPS):
        _step(model, opt, batch)
        assert _pruned_nonzeros(model, masks) == 0  # no reapply called


def test_the_forward_pre_hook_masks_weights_the_momentum_revived():
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    for _ in range(5):
        _step(model, opt, batch)
    masks = _half_masks(model)
    # no optimizer: its momentum revives the pruned weights after a step
    M.apply_masks(model, masks)
    _step(model, opt, batch)
    assert _pruned_nonzeros(model, masks) > 0
    weights = {k: w.detach().clone() for k, w in M.linear_weights(model).items()}
    x = batch[0]
    out = model(x)
    assert _pruned_nonzeros(model, masks) == 0  # the forward pass zeroed them first
    w0, w2 = (weights[k] * masks[k] for k in ("0.weight", "2.weight"))
    b0, b2 = model[0].bias.detach(), model[2].bias.detach()
    want = torch.relu(x @ w0.T + b0) @ w2.T + b2
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_gradual_pruning_updates_the_masks():
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    ms = M.apply_masks(model, _half_masks(model, 0.25))
    for sparsity in (0.25, 0.5, 0.75):
        # by magnitude of the current (masked) weights
        masks = _half_masks(model, sparsity)
        # the pruned set only grows: the zeros are the smallest magnitudes
        for k, m in masks.items():
            assert not (m & ~ms[k].mask).any()
        ms.update(masks, optimizer=opt)
        assert ms.sparsity() == sparsity
        for step in range(STEPS // 2):
            _step(model, opt, batch)
            ms(model, step)
            assert _pruned_nonzeros(model, masks) == 0
    assert T.sparsity(model[0].weight.detach()) == 0.75
    assert R.sparsity(model[2].weight.detach().numpy()) == 0.75


def test_a_mask_can_regrow_entries_which_start_from_zero():
    model = _model()
    m = M.apply_mask(model[0], T.magnitude_mask(model[0].weight, 0.5))
    pruned = ~m.mask.clone()
    m.update(torch.ones_like(m.mask))
    assert m.sparsity == 0.0 and (model[0].weight.detach()[pruned] == 0).all()


def test_nm_and_block_masks_attach_the_same_way():
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    ms = M.apply_masks(
        model,
        {
            "0": T.nm_mask(model[0].weight, 2, 4),
            "2": T.block_mask(model[2].weight, 2, 0.5),
        },
    )
    assert set(ms) == {"0.weight", "2.weight"}
    for step in range(STEPS):
        _step(model, opt, batch)
        ms(model, step)
    w0 = model[0].weight.detach()
    assert ((w0.reshape(16, 2, 4) != 0).sum(-1) <= 2).all()
    bsr = T.to_block_sparse(model[2].weight.detach(), 2)
    assert bsr.density == 0.5


# ========================================================= state_dict, devices, no_grad
def test_state_dict_keys_are_unchanged_and_round_trip():
    model, batch = _model(), _batch()
    opt = _optimizer(model)
    masks = _half_masks(model)
    ms = M.apply_masks(model, masks)
    for step in range(3):
        _step(model, opt, batch)
        ms(model, step)
    state = model.state_dict()
    # the mask buffer is not persistent
    assert list(state) == list(_model().state_dict())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    plain = _model(seed=5)
    # into an unmasked model: the stored zeros do the pruning
    plain.load_state_dict(loaded)
    x = batch[0]
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)

    # a dense checkpoint loaded into a masked model is masked at once (load post-hook)
    masked = _model(seed=6)
    M.apply_masks(masked, masks)
    masked.load_state_dict(_model(seed=7).state_dict())
    assert _pruned_nonzeros(masked, masks) == 0


def test_the_mask_follows_the_module_to_another_dtype():
    model, batch = _model(), _batch()
    masks = _half_masks(model)
    ms = M.apply_masks(model, masks)
    model.float()
    assert (
        ms["0.weight"].mask.dtype == torch.bool
        and model[0].weight.dtype == torch.float32
    )
    opt = _optimizer(model)
    x, y = (t.float() for t in batch)
    for step in range(5):
        _step(model, opt, (x, y))
        assert (model[0].weight.grad[~masks["0.weight"]] == 0).all()
        ms(model, step)
    assert _pruned_nonzeros(model, masks) == 0


def test_no_grad_and_inference_mode():
    model, batch = _model(), _batch()
    masks = _half_masks(model)
    with torch.no_grad():
        ms = M.apply_masks(model, masks)  # attaching under no_grad works
        model[0].weight.add_(1.0)  # an in-place edit revives every pruned entry...
        out = model(batch[0])  # ...but the forward pass masks them first
    assert not out.requires_grad
    assert _pruned_nonzeros(model, masks) == 0
    with torch.inference_mode():
        model[2].weight.data.add_(1.0)
        model(batch[0])
        ms(model, 0)
    assert _pruned_nonzeros(model, masks) == 0
    # gradients still masked after the no_grad section
    model.zero_grad()
    ((model(batch[0]) - batch[1]) ** 2).mean().backward()
    assert (model[0].weight.grad[~masks["0.weight"]] == 0).all()
    assert (model[0].weight.grad[masks["0.weight"]] != 0).any()


def test_a_frozen_weight_gets_its_gradient_hook_once_it_is_trained():
    model, batch = _model(), _batch()
    model[0].weight.requires_grad_(False)
    masks = _half_masks(model)
    # no hook can be registered on a tensor that does not require grad
    M.apply_masks(model, masks)
    model[0].weight.requires_grad_(True)
    # the forward pre-hook registers it
    ((model(batch[0]) - batch[1]) ** 2).mean().backward()
    assert (model[0].weight.grad[~masks["0.weight"]] == 0).all()


def test_a_module_called_twice_in_one_graph_still_backpropagates():
    layer = nn.Linear(6, 6).double()
    m = M.apply_mask(layer, T.magnitude_mask(layer.weight, 0.5))
    # the first call saves the weight
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    # the second forward pre-hook must not break the first call's graph
    layer(layer(x)).sum().backward()
    assert x.grad is not None
    assert (layer.weight.grad[~m.mask] == 0).all() and (
        layer.weight.grad[m.mask] != 0
    ).any()


def test_remove_bakes_the_mask_and_detaches_everything():
    model, batch = _model(), _batch()
    masks = _half_masks(model)
    ms = M.apply_masks(model, masks)
    ms.remove()
    assert _pruned_nonzeros(model, masks) == 0
    assert M.get_mask(model[0]) is None and not hasattr(model[0], "weight_mask")
    assert list(model.state_dict()) == list(_model().state_dict())
    ((model(batch[0]) - batch[1]) ** 2).mean().backward()
    # an ordinary parameter again
    assert (model[0].weight.grad[~masks["0.weight"]] != 0).any()
    with pytest.raises(RuntimeError, match="was removed"):
        ms["0.weight"].reapply()
    M.apply_mask(model[0], masks["0.weight"])  # a new mask can be attached afterwards


def test_numpy_masks_and_get_mask():
    layer = nn.Linear(4, 8).double()
    keep = R.nm_mask(layer.weight.detach().numpy(), 1, 2)
    m = M.apply_mask(layer, keep)
    assert M.get_mask(layer) is m and M.get_mask(layer, "bias") is None
    assert m.module is layer and m.name == "weight" and m.sparsity == 0.5
    assert "sparsity=0.5" in repr(m)
    np.testing.assert_array_equal(m.mask.numpy(), keep)
    assert M.linear_weights(layer) == {"weight": layer.weight}


# =========================================================================== bad inputs
def test_apply_mask_checks_its_arguments():
    layer = nn.Linear(4, 8).double()
    good = torch.ones(8, 4, dtype=torch.bool)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        M.apply_mask(layer.weight, good)
    with pytest.raises(
        ValueError,
        match=r"name must name a parameter of module \(Linear has 'weight', 'bias'\)",
    ):
        M.apply_mask(layer, good, "wieght")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        M.apply_mask(layer, good, 3)
    with pytest.raises(
        TypeError, match="mask must have dtype torch.bool.*got torch.float64"
    ):
        M.apply_mask(layer, good.double())
    with pytest.raises(TypeError, match="mask must be a bool torch tensor"):
        M.apply_mask(layer, [[True] * 4] * 8)
    with pytest.raises(
        ValueError,
        match=r"mask must have the shape of module.weight \(8, 4\), got \(4, 8\)",
    ):
        M.apply_mask(layer, good.T)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer must update module.weight"):
        M.apply_mask(layer, good, optimizer=other)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        M.apply_mask(layer, good, optimizer="adamw")
    assert M.get_mask(layer) is None  # nothing was attached by the failed calls
    m = M.apply_mask(layer, good)
    with pytest.raises(ValueError, match="already has a mask"):
        M.apply_mask(layer, good)
    with pytest.raises(ValueError, match="mask must have the shape"):
        m.update(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        m("model", 0)
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        m(layer, -1)


def test_apply_masks_checks_every_key_before_attaching():
    model = _model()
    masks = _half_masks(model)
    with pytest.raises(
        ValueError,
        match=r"masks keys must name a parameter of model.*e\.g\. 0\.weight.*got 'fc1'",
    ):
        M.apply_masks(model, {"0.weight": masks["0.weight"], "fc1": masks["2.weight"]})
    assert M.get_mask(model[0]) is None  # the good key was not attached either
    with pytest.raises(ValueError, match="names the parameter '0.weight' twice"):
        M.apply_masks(model, {"0.weight": masks["0.weight"], "0": masks["0.weight"]})
    with pytest.raises(
        ValueError,
        match=r"cover every nn.Linear weight when strict=True; missing \['2.weight'\]",
    ):
        M.apply_masks(model, {"0.weight": masks["0.weight"]}, strict=True)
    with pytest.raises(TypeError, match="masks must be a dict"):
        M.apply_masks(model, [masks["0.weight"]])
    with pytest.raises(TypeError, match="masks keys must be str"):
        M.apply_masks(model, {0: masks["0.weight"]})
    with pytest.raises(
        ValueError, match=r"mask must have the shape of 2.weight \(4, 16\)"
    ):
        M.apply_masks(model, {"2.weight": masks["0.weight"]})
    ms = M.apply_masks(model, masks, strict=True)
    with pytest.raises(ValueError, match="masks must name masked parameters"):
        ms.update({"0.bias": torch.ones(16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="already has a mask"):
        M.apply_masks(model, masks)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        M.linear_weights({"0.weight": 1})


# ====================================================== masks of a whole model, guarded
class _DictModel(nn.Module):
    """Weights in an ``nn.ParameterDict`` (the shared LM's layout): no module of theirs
    ever runs ``forward``, so their masks' own forward pre-hooks never fire."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p = nn.ParameterDict(
            {"w1": nn.Parameter(torch.randn(8, 16, dtype=torch.float64)),
             "w2": nn.Parameter(torch.randn(16, 4, dtype=torch.float64))}
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.p["w1"]) @ self.p["w2"]


@pytest.mark.parametrize("copy_first", [False, True])
def test_guard_masks_keeps_parameter_dict_weights_zero_through_adamw(copy_first):
    import copy

    model, batch = _DictModel(), _batch()
    masks = {k: T.magnitude_mask(w.detach(), 0.5) for k, w in model.p.items()}
    M.apply_masks(model, {f"p.{k}": m for k, m in masks.items()})
    found = M.model_masks(model)
    assert sorted(found) == ["p.w1", "p.w2"]
    M.guard_masks(model)
    M.guard_masks(model)  # attached once: a second call only re-runs it
    if copy_first:
        model = copy.deepcopy(model)  # the copy's parameters lose their tensor hooks
    opt = _optimizer(model)
    for _ in range(5):
        _step(model, opt, batch)
    for k, m in masks.items():
        w = model.p[k].detach()
        assert (w[~m] == 0).all() and (model.p[k].grad[~m] == 0).all(), k
        assert (w[m] != 0).any(), f"{k}: the kept weights did not train"


def test_model_masks_and_guard_masks_check_their_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        M.model_masks({"w": torch.zeros(2)})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        M.guard_masks(None)
    assert len(M.model_masks(_model())) == 0


def test_select_weights_by_name_or_module_prefix():
    w = {"layers.0.w1": 1, "layers.0.w2": 2, "layers.1.w1": 3, "head": 4}
    assert M.select_weights(w, None, "a weight", "f()") == w
    assert M.select_weights(w, ["layers.0"], "a weight", "f()") == {
        "layers.0.w1": 1, "layers.0.w2": 2}  # fmt: skip
    # a prefix must end at a dot: "layers.1" does not name "layers.10..."
    assert M.select_weights({**w, "layers.10.w1": 5}, ["layers.1"], "a weight", "f()") == {
        "layers.1.w1": 3}  # fmt: skip
    with pytest.raises(ValueError, match="include names 'nope', which is neither a weight"):
        M.select_weights(w, ["nope"], "a weight", "f()")
    with pytest.raises(TypeError, match="include must be None or a list"):
        M.select_weights(w, "layers.0", "a weight", "f()")
