"""FrozenAdam: Adam/AdamW semantics without masks, reserved entries and their state untouched with them,
and the extension's multi-tensor step equal to the pure-PyTorch one."""

import pytest
import torch
from conformance import rel_err

from dgm import bits as _bits
from dgm.frozen_adam import FrozenAdam

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SHAPES = [(9, 13), (7,), (5, 3, 3, 3), (4, 6, 4, 4), (1, 1)]
# (weight_decay, decoupled): Adam with L2 in the gradient, AdamW, and neither.
DECAYS = [(0.0, False), (0.1, False), (0.05, True)]


def make_params(device, dtype=torch.float32, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_(True) for s in shapes]


def set_grads(params, step, seed=0):
    g = torch.Generator().manual_seed(1000 * seed + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, p.dtype)


def run(opt, params, steps, seed=0, first=0):
    for step in range(first, first + steps):
        set_grads(params, step, seed)
        opt.step()


def torch_adam(params, lr, wd, decoupled, **kwargs):
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, **kwargs)


def frozen_adam(params, lr, wd, decoupled, backend):
    return FrozenAdam(params, lr=lr, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd,
                      decoupled_weight_decay=decoupled, backend=backend)


def assert_steps_equal(opt, ours, ref, theirs, steps):
    """``steps`` steps of both optimisers leave their parameters and moments bit-identical."""
    run(opt, ours, steps)
    run(ref, theirs, steps)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg"], ref.state[b]["exp_avg"])
        assert torch.equal(opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"])


@pytest.mark.parametrize("wd, decoupled", DECAYS)
def test_reference_is_torch_adam_bit_for_bit(wd, decoupled):
    ours, theirs = make_params("cpu"), make_params("cpu")
    opt = frozen_adam(ours, 0.01, wd, decoupled, "reference")
    ref = torch_adam(theirs, 0.01, wd, decoupled, foreach=False)
    assert_steps_equal(opt, ours, ref, theirs, 12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wd, decoupled", DECAYS)
def test_extension_is_torch_adam_bit_for_bit_on_cpu(dtype, wd, decoupled):
    """The extension's formula rounds as torch.optim.Adam's single-tensor step does, entry for entry
    (100,000 entries besides the odd shapes, so the vectorised body and scalar tails of ATen's loops
    are both compared)."""
    shapes = SHAPES + [(400, 250)]
    ours, theirs = make_params("cpu", dtype, shapes=shapes), make_params("cpu", dtype, shapes=shapes)
    opt = frozen_adam(ours, 0.01, wd, decoupled, "extension")
    ref = torch_adam(theirs, 0.01, wd, decoupled, foreach=False)
    assert_steps_equal(opt, ours, ref, theirs, 12)


@pytest.mark.gpu
@pytest.mark.parametrize("wd, decoupled", DECAYS)
def test_extension_matches_torch_fused_adam_on_gpu(wd, decoupled):
    ours, theirs = make_params("cuda"), make_params("cuda")
    opt = frozen_adam(ours, 0.01, wd, decoupled, "extension")
    ref = torch_adam(theirs, 0.01, wd, decoupled, fused=True)
    run(opt, ours, 20)
    run(ref, theirs, 20)
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < 1e-5
        assert rel_err(opt.state[a]["exp_avg"], ref.state[b]["exp_avg"]) < 1e-5
        assert rel_err(opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"]) < 1e-5


def random_masks(params, seed):
    g = torch.Generator().manual_seed(seed)
    return {p: (torch.rand(p.shape, generator=g) < 0.4).to(p.device) for p in params[:-1]}  # last: no mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", "extension"])
@pytest.mark.parametrize("wd, decoupled", DECAYS[1:])
def test_reserved_entries_and_state_stay_bit_identical(device, backend, wd, decoupled):
    params = make_params(device)
    opt = frozen_adam(params, 0.05, wd, decoupled, backend)
    run(opt, params, 3)  # momentum and second moments are non-zero before anything is reserved
    masks = random_masks(params, seed=5)
    opt.set_reserved(masks)
    before = {p: [t.detach().clone() for t in (p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]
              for p in params}
    run(opt, params, 25, first=3)
    for p in params:
        now = (p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
        keep = masks.get(p, torch.zeros(p.shape, dtype=torch.bool, device=device))
        for t, old in zip(now, before[p]):
            assert torch.equal(t.detach()[keep], old[keep])
            assert (t.detach()[~keep] != old[~keep]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wd, decoupled", DECAYS)
def test_extension_matches_reference_with_masks(device, wd, decoupled):
    ext_params, ref_params = make_params(device, seed=2), make_params(device, seed=2)
    ext_opt = frozen_adam(ext_params, 0.02, wd, decoupled, "extension")
    ref_opt = frozen_adam(ref_params, 0.02, wd, decoupled, "reference")
    ext_opt.set_reserved(random_masks(ext_params, seed=9))
    # The same masks given packed: both forms mean the same.
    ref_opt.set_reserved({q: _bits.pack(m) for q, m in zip(ref_params, random_masks(ref_params, seed=9).values())})
    run(ext_opt, ext_params, 15, seed=2)
    run(ref_opt, ref_params, 15, seed=2)
    for a, b in zip(ext_params, ref_params):
        assert rel_err(a, b) < 1e-5
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel_err(ext_opt.state[a][key], ref_opt.state[b][key]) < 1e-5


def test_mixed_dtypes_and_missing_grads():
    params = make_params("cpu")
    extra = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    idle = torch.randn(3, requires_grad=True)
    opt = FrozenAdam(params + [extra, idle], lr=0.01, backend="extension")
    ref = FrozenAdam([p.detach().clone().requires_grad_(True) for p in params + [extra, idle]], lr=0.01,
                     backend="reference")
    mask = torch.rand(6, 5) < 0.5
    for o in (opt, ref):
        o.set_reserved({o.param_groups[0]["params"][-2]: mask})
        run(o, o.param_groups[0]["params"][:-1], 4)
    for a, b in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        assert rel_err(a, b) < 1e-5
    assert idle not in opt.state


def test_step_op_is_registered_for_torch_compile():
    """Schema (which lists it mutates), fake kernel and their agreement, as torch checks them."""
    ps = [torch.randn(4, 5), torch.randn(3)]
    args = (ps, [torch.randn_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
            [torch.zeros_like(p) for p in ps], [_bits.pack(torch.rand(4, 5) < 0.5), None],
            [torch.tensor(1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)], [0.01, 0.02],
            [0.9, 0.8], [0.999, 0.99], [1e-8, 1e-6], [0.1, 0.0], [True, False])
    torch.library.opcheck(torch.ops.dgm.frozen_adam_.default, args)


def test_bad_arguments_raise():
    p = torch.randn(4, 10, requires_grad=True)
    opt = FrozenAdam([p])
    with pytest.raises(ValueError, match="not a parameter of this optimiser"):
        opt.set_reserved({torch.randn(4, 10): torch.zeros(4, 10, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not match its parameter"):
        opt.set_reserved({p: torch.zeros(4, 9, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"expected \(4, 2\)"):
        opt.set_reserved({p: torch.zeros(4, 1, dtype=torch.uint8)})
    with pytest.raises(TypeError, match="bool .* or uint8"):
        opt.set_reserved({p: torch.zeros(4, 10)})
    with pytest.raises(ValueError, match="backend must be one of"):
        FrozenAdam([p], backend="fast")
    with pytest.raises(ValueError, match="backend must be one of .*FrozenAdam's step"):
        FrozenAdam([p], backend="triton")
    with pytest.raises(ValueError, match="'cuda' is now called 'extension'"):
        FrozenAdam([p], backend="cuda")
    with pytest.raises(ValueError, match="betas"):
        FrozenAdam([p], betas=(0.9, 1.0))
