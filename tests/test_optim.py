"""Optimizers, gradient clipping, learning-rate schedules: torch parity, resume, errors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from lstmkit.optim import SGD, Adagrad, Adam, AdamW, RMSprop, clip_grad_norm, clip_grad_value
from lstmkit.schedules import CosineAnnealingLR, ReduceLROnPlateau, StepLR

SHAPES = {"weight": (4, 3), "bias": (4,), "emb.weight": (6, 2)}
STEPS = 20


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is needed for the parity tests")


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    return params, grads


def grad_sequence(dtype=np.float64, steps=STEPS, seed=1):
    """Gradients of varied scale and sign, some entries exactly zero."""
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        step = {}
        for name, shape in SHAPES.items():
            g = rng.standard_normal(shape) * (0.1 + t % 3)
            g[rng.random(shape) < 0.1] = 0.0
            step[name] = g.astype(dtype)
        seq.append(step)
    return seq


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _combos(**options):
    keys = list(options)
    return [dict(zip(keys, values)) for values in itertools.product(*options.values())]


SGD_CASES = [
    c
    for c in _combos(
        momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True], weight_decay=[0, 0.05]
    )
    if not (c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0))
]
ADAM_CASES = _combos(
    betas=[(0.9, 0.999), (0.5, 0.9)], weight_decay=[0.0, 0.1], amsgrad=[False, True]
)
RMSPROP_CASES = _combos(
    alpha=[0.99, 0.8], momentum=[0.0, 0.5], centered=[False, True], weight_decay=[0.0, 0.05]
)
ADAGRAD_CASES = _combos(
    lr_decay=[0.0, 0.05], initial_accumulator_value=[0.0, 0.2], weight_decay=[0.0, 0.05]
)

CASES = (
    [("SGD", SGD, dict(lr=0.05, **c)) for c in SGD_CASES]
    + [("Adam", Adam, dict(lr=0.01, **c)) for c in ADAM_CASES]
    + [("AdamW", AdamW, dict(lr=0.01, **c)) for c in ADAM_CASES]
    + [("RMSprop", RMSprop, dict(lr=0.01, **c)) for c in RMSPROP_CASES]
    + [("Adagrad", Adagrad, dict(lr=0.1, **c)) for c in ADAGRAD_CASES]
)


def _case_id(case):
    name, _, kwargs = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


def run_both(torch, cls_name, cls, kwargs, dtype=np.float64, lrs=None):
    """Run ours and torch's optimizer on the same grads; return the worst relative error."""
    params, grads = make_params(dtype)
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params.values()]
    ours = cls(params, grads, **kwargs)
    theirs = getattr(torch.optim, cls_name)(tparams, **kwargs)
    worst = 0.0
    for t, step in enumerate(grad_sequence(dtype)):
        if lrs is not None:
            ours.lr = lrs[t]
            theirs.param_groups[0]["lr"] = lrs[t]
        for (name, g), tp in zip(step.items(), tparams):
            grads[name][...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
        for p, tp in zip(params.values(), tparams):
            assert p.dtype == dtype
            worst = max(worst, rel_err(p, tp.detach().numpy()))
    return worst


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_optimizer_matches_torch_float64(torch, case):
    assert run_both(torch, *case) <= 1e-6


@pytest.mark.parametrize("cls_name, cls", [("SGD", SGD), ("Adam", Adam), ("RMSprop", RMSprop)])
def test_optimizer_matches_torch_float32_and_stays_float32(torch, cls_name, cls):
    kwargs = {"SGD": {"momentum": 0.9}, "Adam": {}, "RMSprop": {"centered": True}}[cls_name]
    assert run_both(torch, cls_name, cls, dict(lr=0.01, **kwargs), dtype=np.float32) <= 1e-5


@pytest.mark.parametrize("cls_name, cls", [("SGD", SGD), ("AdamW", AdamW), ("Adagrad", Adagrad)])
def test_lr_is_read_at_every_step(torch, cls_name, cls):
    lrs = [0.1 * 0.8**t for t in range(STEPS)]
    assert run_both(torch, cls_name, cls, dict(lr=1.0, weight_decay=0.01), lrs=lrs) <= 1e-6


def test_step_updates_arrays_in_place_and_zero_grad_keeps_arrays():
    params, grads = make_params()
    arrays = dict(params)
    grad_arrays = dict(grads)
    view = params["weight"][0]  # another holder of the same memory
    before = view.copy()
    for name in grads:
        grads[name][...] = 1.0
    opt = SGD(params, grads, lr=0.5)
    opt.step()
    assert all(params[name] is arrays[name] for name in params)
    np.testing.assert_array_equal(view, before - 0.5)
    opt.zero_grad()
    assert all(grads[name] is grad_arrays[name] for name in grads)
    assert all(not g.any() for g in grads.values())


def _roundtrip(state):
    """Save an optimizer state dict as safetensors + JSON and read it back."""
    safetensors_numpy = pytest.importorskip(
        "safetensors.numpy", reason="safetensors is a dependency of lstmkit"
    )
    flat = {
        f"{buffer}/{name}": array
        for buffer, arrays in state["buffers"].items()
        for name, array in arrays.items()
    }
    loaded = safetensors_numpy.load(safetensors_numpy.save(flat)) if flat else {}
    meta = json.loads(
        json.dumps({"hyperparameters": state["hyperparameters"], "step": state["step"]})
    )
    buffers = {buffer: {} for buffer in state["buffers"]}
    for key, array in loaded.items():
        buffer, name = key.split("/", 1)
        buffers[buffer][name] = array
    return {**meta, "buffers": buffers}


RESUME_CASES = [
    ("SGD", SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("AdamW", AdamW, dict(lr=0.01, betas=(0.5, 0.9))),
    ("RMSprop", RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adagrad", Adagrad, dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2)),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resume_from_state_dict_is_bit_for_bit(case, dtype):
    _, cls, kwargs = case
    seq = grad_sequence(dtype)

    def run(opt, params, grads, steps):
        for step in steps:
            for name, g in step.items():
                grads[name][...] = g
            opt.step()

    params, grads = make_params(dtype)
    straight = cls(params, grads, **kwargs)
    run(straight, params, grads, seq)

    params2, grads2 = make_params(dtype)
    first = cls(params2, grads2, **kwargs)
    run(first, params2, grads2, seq[:7])
    saved = _roundtrip(first.state_dict())
    saved_params = {name: p.copy() for name, p in params2.items()}

    params3 = saved_params
    grads3 = {name: np.zeros_like(p) for name, p in params3.items()}
    resumed = cls(params3, grads3, lr=123.0)
    resumed.load_state_dict(saved)
    assert resumed.lr == kwargs["lr"]
    run(resumed, params3, grads3, seq[7:])
    for name in params:
        assert params3[name].dtype == dtype
        np.testing.assert_array_equal(params3[name], params[name])
    for buffer, arrays in straight.state_dict()["buffers"].items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(resumed.state[buffer][name], array)


def test_state_dict_holds_only_arrays_and_plain_numbers():
    params, grads = make_params()
    opt = Adam(params, grads, amsgrad=True)
    opt.step()
    state = opt.state_dict()
    json.dumps({"hyperparameters": state["hyperparameters"], "step": state["step"]})
    assert set(state["buffers"]) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    for arrays in state["buffers"].values():
        assert set(arrays) == set(SHAPES)
        assert all(isinstance(a, np.ndarray) for a in arrays.values())
    # a copy, not the live buffer
    state["buffers"]["exp_avg"]["bias"][...] = 99.0
    assert not (opt.state["exp_avg"]["bias"] == 99.0).any()


def test_load_state_dict_errors():
    params, grads = make_params()
    adam = Adam(params, grads)
    adam.step()
    sgd = SGD(params, grads, momentum=0.9)
    sgd.step()
    with pytest.raises(KeyError, match="another optimizer"):
        adam.load_state_dict(sgd.state_dict())
    state = adam.state_dict()
    state["buffers"]["exp_avg"]["weight"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"'weight' has shape \(3, 4\), expected \(4, 3\)"):
        adam.load_state_dict(state)
    state = adam.state_dict()
    state["buffers"]["exp_avg"]["nope"] = np.zeros(2)
    with pytest.raises(KeyError, match="'nope'"):
        adam.load_state_dict(state)
    state = adam.state_dict()
    state["hyperparameters"]["betas"] = [0.9, 1.0]
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        adam.load_state_dict(state)
    with pytest.raises(KeyError, match="expects keys"):
        adam.load_state_dict({"step": 1})
    assert adam.betas == (0.9, 0.999)  # a failed load changes nothing


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (SGD, {"lr": -0.1}, "lr must be >= 0"),
        (SGD, {"lr": float("nan")}, "lr must be finite"),
        (SGD, {"momentum": -0.5}, "momentum must be >= 0"),
        (SGD, {"nesterov": True}, "Nesterov momentum requires momentum > 0"),
        (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening = 0"),
        (SGD, {"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        (Adam, {"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\)"),
        (Adam, {"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
        (Adam, {"betas": (0.9,)}, "betas must be a pair"),
        (AdamW, {"eps": -1e-8}, "eps must be >= 0"),
        (Adam, {"amsgrad": "yes"}, "amsgrad must be a bool"),
        (Adam, {"lr": "0.1"}, "lr must be a number"),
        (RMSprop, {"alpha": -0.9}, "alpha must be >= 0"),
        (RMSprop, {"momentum": -0.1}, "momentum must be >= 0"),
        (Adagrad, {"lr_decay": -0.1}, "lr_decay must be >= 0"),
        (Adagrad, {"initial_accumulator_value": -1.0}, "initial_accumulator_value must be >= 0"),
    ],
)
def test_bad_hyperparameters(cls, kwargs, message):
    params, grads = make_params()
    with pytest.raises((ValueError, TypeError), match=message):
        cls(params, grads, **kwargs)


def test_bad_params_and_grads():
    params, grads = make_params()
    with pytest.raises(TypeError, match="params and grads dicts"):
        SGD(list(params.values()), list(grads.values()))
    with pytest.raises(ValueError, match="empty params"):
        SGD({}, {})
    with pytest.raises(KeyError, match=r"grads lacks \['bias'\]"):
        SGD(params, {k: v for k, v in grads.items() if k != "bias"})
    with pytest.raises(ValueError, match=r"grads\['bias'\] has shape \(5,\)"):
        SGD(params, {**grads, "bias": np.zeros(5)})
    with pytest.raises(TypeError, match="float32 or float64"):
        SGD(params, {**grads, "bias": np.zeros(4, np.float32)})
    with pytest.raises(TypeError, match="float32 or float64"):
        SGD({"i": np.zeros(3, np.int64)}, {"i": np.zeros(3, np.int64)})
    shared = {"a": params["weight"], "b": params["weight"]}
    with pytest.raises(ValueError, match="same array"):
        SGD(shared, {"a": np.zeros((4, 3)), "b": np.zeros((4, 3))})


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(torch, norm_type, max_norm):
    grads = grad_sequence(steps=1)[0]
    tgrads = [torch.tensor(g.copy()) for g in grads.values()]
    tparams = [torch.zeros_like(g, requires_grad=True) for g in tgrads]
    for p, g in zip(tparams, tgrads):
        p.grad = g
    total = clip_grad_norm(grads, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert abs(total - float(expected)) <= 1e-12 * float(expected)
    for g, tp in zip(grads.values(), tparams):
        assert rel_err(g, tp.grad.numpy()) <= 1e-12


def test_clip_grad_norm_keeps_dtype_errors_and_nonfinite():
    grads = {"a": np.full(4, 3.0, np.float32), "b": np.full(2, -4.0, np.float32)}
    total = clip_grad_norm(grads, 1.0)
    assert total == pytest.approx(math.sqrt(4 * 9 + 2 * 16))
    assert grads["a"].dtype == np.float32
    assert clip_grad_norm(grads, 1.0) == pytest.approx(1.0, rel=1e-5)
    bad = [np.array([1.0, np.inf])]
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        clip_grad_norm(bad, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_grad_norm(grads, -1.0)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        clip_grad_norm(grads, 1.0, norm_type=0)
    assert clip_grad_norm([], 1.0) == 0.0


def test_clip_grad_value_matches_torch(torch):
    grads = grad_sequence(steps=1)[0]
    tparams = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()
    ]
    for p, g in zip(tparams, grads.values()):
        p.grad = torch.tensor(g.copy())
    clip_grad_value(grads, 0.3)
    torch.nn.utils.clip_grad_value_(tparams, 0.3)
    for g, tp in zip(grads.values(), tparams):
        np.testing.assert_array_equal(g, tp.grad.numpy())
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        clip_grad_value(grads, -0.1)


# ------------------------------------------------------------------------------------------
# Schedules


def _torch_sgd(torch, lr):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def _lrs(schedule, steps, metrics=None):
    out = []
    for t in range(steps):
        if metrics is None:
            schedule.step()
        else:
            schedule.step(metrics[t])
        out.append(schedule.get_last_lr())
    return out


@pytest.mark.parametrize("step_size, gamma", [(1, 0.9), (3, 0.5), (7, 0.1)])
def test_step_lr_matches_torch(torch, step_size, gamma):
    params, grads = make_params()
    ours = StepLR(SGD(params, grads, lr=0.3), step_size, gamma=gamma)
    topt = _torch_sgd(torch, 0.3)
    theirs = torch.optim.lr_scheduler.StepLR(topt, step_size, gamma=gamma)
    assert ours.optimizer.lr == topt.param_groups[0]["lr"]
    expected = []
    for _ in range(30):
        topt.step()
        theirs.step()
        expected.append(theirs.get_last_lr()[0])
    assert _lrs(ours, 30) == expected


@pytest.mark.parametrize("t_max, eta_min", [(10, 0.0), (7, 0.01), (1, 0.0)])
def test_cosine_annealing_matches_torch(torch, t_max, eta_min):
    params, grads = make_params()
    ours = CosineAnnealingLR(Adam(params, grads, lr=0.1), t_max, eta_min=eta_min)
    topt = _torch_sgd(torch, 0.1)
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(topt, t_max, eta_min=eta_min)
    expected = []
    for _ in range(3 * t_max + 2):  # past T_max, where the rate climbs back
        topt.step()
        theirs.step()
        expected.append(theirs.get_last_lr()[0])
    assert _lrs(ours, 3 * t_max + 2) == expected
    assert min(expected) == pytest.approx(eta_min, abs=1e-12)


PLATEAU_METRICS = [
    1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.92, 0.85, 0.8499, 0.85, 0.86, 0.9, 0.7, 0.7, 0.71,
    0.72, 0.73, 0.74, 0.75, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6,
    0.6, 0.6, 0.59999, 0.5, 0.5, 0.5, 0.5,
]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"patience": 1},
        {"patience": 2, "factor": 0.5, "cooldown": 2},
        {"patience": 0, "factor": 0.5, "min_lr": 0.02},
        {"patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
        {"patience": 1, "threshold": 0.001},
        {"mode": "max", "patience": 1, "factor": 0.3},
        {"mode": "max", "patience": 0, "threshold_mode": "abs", "threshold": 0.01},
    ],
)
def test_reduce_lr_on_plateau_matches_torch(torch, kwargs):
    params, grads = make_params()
    ours = ReduceLROnPlateau(SGD(params, grads, lr=0.1), **kwargs)
    topt = _torch_sgd(torch, 0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    expected = []
    for metric in PLATEAU_METRICS:
        topt.step()
        theirs.step(metric)
        expected.append(theirs.get_last_lr()[0])
    got = _lrs(ours, len(PLATEAU_METRICS), PLATEAU_METRICS)
    assert got == expected
    assert len(set(got)) > 1  # the sequence does reduce the rate


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: StepLR(opt, 3, gamma=0.5),
        lambda opt: CosineAnnealingLR(opt, 8, eta_min=0.001),
        lambda opt: ReduceLROnPlateau(opt, patience=1, cooldown=1, factor=0.5),
    ],
)
def test_schedule_resume_continues_exactly(make):
    metrics = PLATEAU_METRICS[:20]
    needs_metric = isinstance(make(SGD(*make_params(), lr=0.1)), ReduceLROnPlateau)

    def lrs(schedule, ms):
        return _lrs(schedule, len(ms), ms if needs_metric else None)

    straight = lrs(make(SGD(*make_params(), lr=0.1)), metrics)
    first_opt = SGD(*make_params(), lr=0.1)
    first = make(first_opt)
    head = lrs(first, metrics[:9])
    saved = json.loads(json.dumps(first.state_dict()))
    saved_opt = json.loads(json.dumps(first_opt.hyperparameters()))
    opt = SGD(*make_params(), **saved_opt)
    resumed = make(opt)
    resumed.load_state_dict(saved)
    assert head + lrs(resumed, metrics[9:]) == straight


def test_schedule_errors():
    opt = SGD(*make_params(), lr=0.1)
    with pytest.raises(TypeError, match="lstmkit.optim optimizer"):
        StepLR("sgd", 3)
    with pytest.raises(ValueError, match="step_size must be a positive int"):
        StepLR(opt, 0)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        StepLR(opt, 2, gamma=0.0)
    with pytest.raises(ValueError, match="T_max must be a positive int"):
        CosineAnnealingLR(opt, -1)
    with pytest.raises(ValueError, match="eta_min must be >= 0"):
        CosineAnnealingLR(opt, 10, eta_min=-0.1)
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\)"):
        ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        ReduceLROnPlateau(opt, mode="lowest")
    with pytest.raises(ValueError, match="threshold_mode must be 'rel' or 'abs'"):
        ReduceLROnPlateau(opt, threshold_mode="relative")
    with pytest.raises(ValueError, match="patience must be an int >= 0"):
        ReduceLROnPlateau(opt, patience=-1)
    with pytest.raises(KeyError, match="expects keys"):
        StepLR(opt, 3).load_state_dict(CosineAnnealingLR(opt, 3).state_dict())
