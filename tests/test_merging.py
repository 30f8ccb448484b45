"""Property, hand-example and bad-input tests for :mod:`amasim.merging` (notes §10)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amasim.merging import (
    COLINEAR_COS,
    MERGE_METHODS,
    dare,
    linear,
    merge,
    slerp,
    task_arithmetic,
    ties,
)

SETTINGS = settings(max_examples=40, deadline=None)
VALUES = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)
SHAPES = st.lists(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4), min_size=1, max_size=3
)


@st.composite
def model_dicts(draw, count: int, dtype=np.float64):
    """``count`` parameter dicts with the same keys and shapes (float64 unless told)."""
    shapes = draw(SHAPES)
    return [
        {
            f"p{j}": draw(hnp.arrays(dtype, shape, elements=VALUES.map(dtype)))
            for j, shape in enumerate(shapes)
        }
        for _ in range(count)
    ]


def assert_dicts_close(got, want, rtol=1e-12, atol=1e-12):
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=str(key))


def single_model_merges(base, model):
    """Every method merging one model in the configuration that must give it back."""
    return {
        "linear": linear([model]),
        "task_arithmetic": task_arithmetic(base, [model], scale=1.0),
        "ties": ties(base, [model], density=1.0),
        "dare_linear": dare(base, [model], density=1.0, seed=3),
        "dare_ties": dare(base, [model], density=1.0, seed=3, combine="ties"),
    }


# ------------------------------------------------------------------ identities
@SETTINGS
@given(dicts=model_dicts(2))
def test_merging_a_single_model_returns_it(dicts):
    """linear, task arithmetic (λ=1), TIES (density 1) and DARE (density 1) give θ back."""
    base, model = dicts
    for merged in single_model_merges(base, model).values():
        assert_dicts_close(merged, model, atol=1e-12 * 200)


@SETTINGS
@given(dicts=model_dicts(4))
def test_linear_with_equal_weights_is_the_mean(dicts):
    """linear(models) = their elementwise mean, with or without explicit equal weights."""
    mean = {k: np.mean([d[k] for d in dicts], axis=0) for k in dicts[0]}
    assert_dicts_close(linear(dicts), mean)
    assert_dicts_close(linear(dicts, weights=[2.5] * 4), mean)


@SETTINGS
@given(dicts=model_dicts(3), lam=st.floats(-3, 3), weights=st.lists(st.floats(0, 2), min_size=2))
def test_task_arithmetic_is_linear_in_lambda(dicts, lam, weights):
    """θ_ta(λ) − θ_base = λ (θ_ta(1) − θ_base), and λ=0 gives the base."""
    base, *models = dicts
    w = [*weights[:2], 1.0]
    one = task_arithmetic(base, [*models, base], weights=w, scale=1.0)
    got = task_arithmetic(base, [*models, base], weights=w, scale=lam)
    want = {k: base[k] + lam * (one[k] - base[k]) for k in base}
    assert_dicts_close(got, want, rtol=1e-9, atol=1e-9)
    assert_dicts_close(task_arithmetic(base, [*models, base], weights=w, scale=0.0), base)


@SETTINGS
@given(
    data=st.data(),
    count=st.integers(1, 4),
    shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5),
    lam=st.floats(0.1, 2),
)
def test_ties_with_density_one_and_agreeing_signs_is_the_mean(data, count, shape, lam):
    """With nothing trimmed and every δ_i of one sign per entry: θ_base + λ · weighted mean δ."""
    positive = st.floats(0.01, 50)
    base = data.draw(hnp.arrays(np.float64, shape, elements=VALUES))
    sign = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0])))
    models = [
        {"w": base + sign * data.draw(hnp.arrays(np.float64, shape, elements=positive))}
        for _ in range(count)
    ]
    weights = data.draw(st.lists(st.floats(0.1, 3), min_size=count, max_size=count))
    got = ties({"w": base}, models, density=1.0, weights=weights, scale=lam)
    normalised = [w / sum(weights) for w in weights]
    want = task_arithmetic({"w": base}, models, weights=normalised, scale=lam)
    assert_dicts_close(got, want, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ TIES
@SETTINGS
@given(data=st.data(), size=st.integers(1, 60), percent=st.integers(1, 100), shape2d=st.booleans())
def test_ties_trim_keeps_ceil_density_times_n_largest_entries(data, size, percent, shape2d):
    """Each δ keeps exactly ⌈density · n⌉ entries (density = percent/100), the largest ones."""
    magnitudes = data.draw(st.lists(st.integers(1, 10**6), min_size=size, max_size=size))
    signs = data.draw(st.lists(st.sampled_from([-1, 1]), min_size=size, max_size=size))
    delta = np.array(magnitudes, dtype=np.float64) * np.array(signs)
    if shape2d and size % 2 == 0:
        delta = delta.reshape(2, -1)
    density = percent / 100
    merged = ties({"w": np.zeros_like(delta)}, [{"w": delta}], density=density)["w"]
    kept = merged != 0
    expected = -(-percent * size // 100)  # exact integer ceil(percent * size / 100)
    assert kept.sum() == expected
    np.testing.assert_array_equal(merged[kept], delta[kept])
    if expected < size:
        assert np.abs(delta[kept]).min() >= np.abs(delta[~kept]).max()


def test_ties_trim_counts_for_decimal_densities_and_ties():
    """0.7 · 10 keeps 7 and 0.2 · 10 keeps 2 (no float drift); ties keep the lowest indices."""
    delta = np.arange(1.0, 11.0)
    for density, count in ((0.7, 7), (0.2, 2), (0.1, 1), (0.01, 1), (1.0, 10)):
        merged = ties({"w": np.zeros(10)}, [{"w": delta}], density=density)["w"]
        assert np.count_nonzero(merged) == count
        np.testing.assert_array_equal(merged[10 - count :], delta[10 - count :])
    equal = np.array([-2.0, 2.0, 2.0, -2.0, 1.0])
    merged = ties({"w": np.zeros(5)}, [{"w": equal}], density=0.4)["w"]
    np.testing.assert_array_equal(merged, [-2.0, 2.0, 0.0, 0.0, 0.0])


def test_ties_sign_election_and_disjoint_mean_by_hand():
    """A worked example of trim, elect and disjoint mean, with weights and scale."""
    base = {"w": np.ones(4)}
    deltas = [
        np.array([3.0, -2.0, 1.0, 0.5]),
        np.array([-1.0, -1.0, -4.0, 0.5]),
        np.array([2.0, 4.0, 1.0, -1.0]),
    ]
    models = [{"w": base["w"] + d} for d in deltas]
    # density 1, equal weights: sums [4, 1, -2, 0] -> signs [+, +, -, 0]
    # agreeing means: (3+2)/2, 4/1, -4/1, none -> 0
    got = ties(base, models, density=1.0, scale=0.5)["w"]
    np.testing.assert_allclose(got, 1.0 + 0.5 * np.array([2.5, 4.0, -4.0, 0.0]))
    # weights [1, 1, 2]: sums [6, 5, -1, -1] -> signs [+, +, -, -]
    # means: (3 + 2·2)/3, 2·4/2, -4/1, 2·(-1)/2
    got = ties(base, models, density=1.0, weights=[1, 1, 2])["w"]
    np.testing.assert_allclose(got, 1.0 + np.array([7 / 3, 4.0, -4.0, -1.0]))
    # density 0.5 keeps 2 of 4: [3,-2,0,0], [-1,0,-4,0] (tie |-1|=|-1| keeps index 0),
    # [2,4,0,0]; sums [4, 2, -4, 0] -> means [2.5, 4, -4, 0]
    got = ties(base, models, density=0.5)["w"]
    np.testing.assert_allclose(got, 1.0 + np.array([2.5, 4.0, -4.0, 0.0]))
    # a model of weight 0 neither votes nor counts
    got = ties(base, models, density=1.0, weights=[1, 0, 0])["w"]
    np.testing.assert_allclose(got, base["w"] + deltas[0])


# ------------------------------------------------------------------ DARE
def test_dare_is_reproducible_and_seed_dependent():
    """Same seed → identical merge; different seed → different drop pattern."""
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(size=(8, 8)), "b": rng.normal(size=50)}
    models = [{k: v + rng.normal(size=v.shape) for k, v in base.items()} for _ in range(3)]
    for combine in ("linear", "ties"):
        first = dare(base, models, density=0.5, seed=7, combine=combine)
        again = dare(base, models, density=0.5, seed=7, combine=combine)
        other = dare(base, models, density=0.5, seed=8, combine=combine)
        for key in base:
            np.testing.assert_array_equal(first[key], again[key])
            assert not np.array_equal(first[key], other[key])


def test_dare_gives_each_model_its_own_stream():
    """Model i's drop pattern comes from SeedSequence(seed).spawn(n)[i] alone."""
    rng = np.random.default_rng(1)
    base = {"w": np.zeros(40)}
    first, second = ({"w": rng.normal(size=40)} for _ in range(2))
    alone = dare(base, [first], density=0.3, seed=5)["w"]
    together = dare(base, [first, second], density=0.3, seed=5, weights=[1.0, 0.0])["w"]
    np.testing.assert_array_equal(alone, together)


def test_dare_drops_and_rescales():
    """Survivors equal δ / density; the rest equal the base; about 1 − density are dropped."""
    base = {"w": np.full(10_000, 2.0)}
    model = {"w": base["w"] + np.linspace(1.0, 3.0, 10_000)}
    density = 0.3
    merged = dare(base, [model], density=density, seed=11)["w"]
    kept = merged != 2.0
    np.testing.assert_allclose(merged[kept] - 2.0, (model["w"] - 2.0)[kept] / density)
    # Binomial(10_000, 0.3): sd ≈ 46; allow 5 sd
    assert abs(kept.sum() - density * 10_000) < 5 * math.sqrt(10_000 * density * (1 - density))


def test_dare_is_unbiased():
    """E[dare δ] = δ: the mean over S seeds is within 5 standard errors of δ per entry.

    One entry δ_j · B / p (B ~ Bernoulli(p)) has variance δ_j² (1 − p)/p, so the mean of S
    independent seeds has standard error |δ_j| √((1 − p) / (p S)).
    """
    rng = np.random.default_rng(2)
    base = {"w": rng.normal(size=20)}
    delta = rng.normal(size=20)
    model = {"w": base["w"] + delta}
    p, seeds = 0.4, 400
    mean = np.mean([dare(base, [model], density=p, seed=s)["w"] for s in range(seeds)], axis=0)
    stderr = np.abs(delta) * math.sqrt((1 - p) / (p * seeds))
    assert np.all(np.abs(mean - base["w"] - delta) <= 5 * stderr + 1e-12)


@SETTINGS
@given(dicts=model_dicts(3))
def test_dare_with_density_one_is_task_arithmetic_or_ties(dicts):
    """density=1 drops nothing: dare_linear = task arithmetic, dare_ties = TIES (density 1)."""
    base, *models = dicts
    w = [0.3, 0.7]
    assert_dicts_close(
        dare(base, models, density=1.0, weights=w, scale=0.8),
        task_arithmetic(base, models, weights=w, scale=0.8),
    )
    assert_dicts_close(
        dare(base, models, density=1.0, combine="ties", weights=w),
        ties(base, models, density=1.0, weights=w),
    )


# ------------------------------------------------------------------ SLERP
@SETTINGS
@given(dicts=model_dicts(2, np.float32), t=st.floats(0, 1))
def test_slerp_endpoints_are_exact(dicts, t):
    """t=0 gives a and t=1 gives b bit for bit (float32 stays float32)."""
    a, b = dicts
    for key in a:
        assert slerp(a, b, 0.0)[key].dtype == np.float32
        np.testing.assert_array_equal(slerp(a, b, 0.0)[key], a[key])
        np.testing.assert_array_equal(slerp(a, b, 1.0)[key], b[key])
        assert slerp(a, b, t)[key].shape == a[key].shape


@SETTINGS
@given(
    vectors=hnp.arrays(np.float64, (2, 6), elements=st.floats(-10, 10)),
    scale=st.floats(0.1, 10),
    t=st.floats(0, 1),
)
def test_slerp_preserves_the_norm_of_orthogonal_equal_norm_vectors(vectors, scale, t):
    """For orthogonal a, b with ‖a‖ = ‖b‖ the path stays on the sphere (t = 0.5 and any t)."""
    x, y = vectors
    if np.linalg.norm(x) < 1e-3:
        return
    x = x / np.linalg.norm(x)
    y = y - np.dot(y, x) * x
    if np.linalg.norm(y) < 1e-3:
        return
    a, b = {"w": scale * x}, {"w": scale * y / np.linalg.norm(y)}
    for s in (0.5, t):
        assert np.linalg.norm(slerp(a, b, s)["w"]) == pytest.approx(scale, rel=1e-9)
    # at t = 0.5 the result is (a + b)/√2 (entries that are 0 up to rounding: atol)
    np.testing.assert_allclose(
        slerp(a, b, 0.5)["w"], (a["w"] + b["w"]) / math.sqrt(2), rtol=1e-7, atol=1e-12 * scale
    )


@SETTINGS
@given(
    x=hnp.arrays(np.float64, 5, elements=st.floats(0.5, 10)),
    factor=st.sampled_from([0.3, 2.0, -1.5]),
    t=st.floats(0, 1),
)
def test_slerp_falls_back_to_linear_for_colinear_or_zero_inputs(x, factor, t):
    """Parallel, antiparallel or zero-norm tensors interpolate linearly."""
    a, b = {"w": x}, {"w": factor * x}
    np.testing.assert_allclose(slerp(a, b, t)["w"], (1 - t) * x + t * factor * x, rtol=1e-12)
    zero = {"w": np.zeros(5)}
    np.testing.assert_allclose(slerp(zero, a, t)["w"], t * x, rtol=1e-12)


def test_slerp_threshold_is_on_the_cosine():
    """Just below the threshold SLERP differs from linear; just above it equals linear."""
    for cos, spherical in ((COLINEAR_COS - 1e-4, True), (COLINEAR_COS + 1e-5, False)):
        a = {"w": np.array([1.0, 0.0])}
        b = {"w": np.array([cos, math.sqrt(1 - cos**2)])}
        got = slerp(a, b, 0.5)["w"]
        lerp = (a["w"] + b["w"]) / 2
        assert np.allclose(got, lerp, rtol=0, atol=1e-15) != spherical
        if spherical:
            assert np.linalg.norm(got) == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------ dispatch, dtypes, buffers
def test_merge_dispatches_to_each_method():
    """merge(name, ...) equals the direct call for every name in MERGE_METHODS."""
    rng = np.random.default_rng(3)
    base = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    models = [{k: v + rng.normal(size=v.shape) for k, v in base.items()} for _ in range(2)]
    expected = {
        "linear": linear(models, weights=[1, 2]),
        "task_arithmetic": task_arithmetic(base, models, scale=0.5),
        "ties": ties(base, models, density=0.4),
        "dare_linear": dare(base, models, density=0.6, seed=2),
        "dare_ties": dare(base, models, density=0.6, seed=2, combine="ties"),
        "slerp": slerp(models[0], models[1], 0.3),
    }
    kwargs = {
        "linear": {"weights": [1, 2]},
        "task_arithmetic": {"scale": 0.5},
        "ties": {"density": 0.4},
        "dare_linear": {"density": 0.6, "seed": 2},
        "dare_ties": {"density": 0.6, "seed": 2},
        "slerp": {"t": 0.3},
    }
    assert set(expected) == set(MERGE_METHODS)
    for method in MERGE_METHODS:
        assert_dicts_close(merge(method, base, models, **kwargs[method]), expected[method])
    assert_dicts_close(merge("linear", None, models), linear(models))


def all_merges(base, models):
    """One merge per method (non-trivial settings) over the same inputs."""
    return {
        "linear": linear(models, weights=[1.0, 3.0]),
        "task_arithmetic": task_arithmetic(base, models, weights=[0.5, 0.25], scale=0.7),
        "ties": ties(base, models, density=0.5),
        "dare_linear": dare(base, models, density=0.5, seed=4),
        "dare_ties": dare(base, models, density=0.5, seed=4, combine="ties"),
        "slerp": slerp(models[0], models[1], 0.35),
    }


def numpy_inputs(dtype=np.float64):
    rng = np.random.default_rng(4)
    base = {
        "layer.weight": rng.normal(size=(4, 3)).astype(dtype),
        "layer.bias": rng.normal(size=3).astype(dtype),
        "scalar": np.array(0.5, dtype=dtype),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
    }
    models = []
    for i in range(2):
        model = {k: np.asarray(v + rng.normal(size=v.shape), dtype) for k, v in base.items()}
        model["bn.num_batches_tracked"] = np.array(10 + i, dtype=np.int64)
        model["mask"] = np.array([False, i == 1])
        models.append(model)
    return base, models


def test_outputs_keep_dtype_and_copy_integer_buffers_numpy():
    """float32 in → float32 out; integer/bool entries come from the reference unchanged."""
    base, models = numpy_inputs(np.float32)
    for name, merged in all_merges(base, models).items():
        reference = models[0] if name in ("linear", "slerp") else base
        assert list(merged) == list(base)
        for key, value in merged.items():
            assert isinstance(value, np.ndarray)
            assert value.dtype == reference[key].dtype, (name, key)
            assert value.shape == reference[key].shape, (name, key)
        np.testing.assert_array_equal(
            merged["bn.num_batches_tracked"], reference["bn.num_batches_tracked"]
        )
        np.testing.assert_array_equal(merged["mask"], reference["mask"])


def test_numpy_scalars_stay_scalars():
    """A numpy scalar entry merges to a numpy scalar of the same dtype."""
    merged = linear([{"s": np.float32(1.0)}, {"s": np.float32(2.0)}])["s"]
    assert isinstance(merged, np.float32) and merged == 1.5


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_inputs_are_not_modified_and_outputs_do_not_alias_them(kind):
    """No method writes to its inputs, and writing to an output leaves the inputs alone."""
    base, models = numpy_inputs(np.float64)
    if kind == "torch":
        torch = pytest.importorskip("torch")
        base = {k: torch.from_numpy(v) for k, v in base.items()}
        models = [{k: torch.from_numpy(v) for k, v in m.items()} for m in models]
    before = copy.deepcopy((base, models))
    for name, merged in all_merges(base, models).items():
        for value in merged.values():
            value[...] = 123  # would show up in an input it aliased
        for got, want in zip([base, *models], [before[0], *before[1]]):
            for key in want:
                assert (got[key] == want[key]).all(), (name, key)
    # the identity cases (single model; slerp endpoints) must also return copies
    single = {**single_model_merges(base, models[0]), "slerp0": slerp(base, models[0], 0.0)}
    for merged in single.values():
        for value in merged.values():
            value[...] = 123
    for got, want in zip([base, *models], [before[0], *before[1]]):
        for key in want:
            assert (got[key] == want[key]).all()


def test_torch_and_numpy_give_the_same_numbers():
    """float64 torch state dicts merge to exactly the numpy results; dtype/device kept."""
    torch = pytest.importorskip("torch")
    base, models = numpy_inputs(np.float64)
    as_torch = lambda d: {k: torch.from_numpy(v.copy()) for k, v in d.items()}  # noqa: E731
    torch_base, torch_models = as_torch(base), [as_torch(m) for m in models]
    expected = all_merges(base, models)
    for name, merged in all_merges(torch_base, torch_models).items():
        for key, value in merged.items():
            assert isinstance(value, torch.Tensor)
            assert value.dtype == torch_base[key].dtype and value.device == torch_base[key].device
            np.testing.assert_array_equal(value.numpy(), expected[name][key], err_msg=name)


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_torch_low_precision_keeps_dtype(dtype_name):
    """float32/float16/bfloat16 tensors come back in their dtype, close to the float64 merge."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    base, models = numpy_inputs(np.float64)
    to = lambda d: {  # noqa: E731
        k: torch.from_numpy(v).to(dtype) if v.dtype == np.float64 else torch.from_numpy(v)
        for k, v in d.items()
    }
    tb, tm = to(base), [to(m) for m in models]
    back = lambda d: {  # noqa: E731
        k: v.to(torch.float64).numpy() if v.is_floating_point() else v.numpy() for k, v in d.items()
    }
    expected = all_merges(back(tb), [back(m) for m in tm])
    tolerance = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 1e-2}[dtype_name]
    for name, merged in all_merges(tb, tm).items():
        for key, value in merged.items():
            assert value.dtype == tb[key].dtype and value.device == tb[key].device
            np.testing.assert_allclose(
                value.to(torch.float64).numpy(), expected[name][key], rtol=tolerance, atol=tolerance
            )
        assert merged["bn.num_batches_tracked"].item() == (10 if name in ("linear", "slerp") else 7)


def test_torch_results_stay_on_the_input_device():
    """CUDA tensors merge to CUDA tensors with the input dtype (skipped without a GPU)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    base, models = numpy_inputs(np.float64)
    to = lambda d: {k: torch.from_numpy(v).to("cuda") for k, v in d.items()}  # noqa: E731
    expected = all_merges(base, models)
    for name, merged in all_merges(to(base), [to(m) for m in models]).items():
        for key, value in merged.items():
            assert value.device.type == "cuda" and value.dtype == to(base)[key].dtype
            np.testing.assert_array_equal(value.cpu().numpy(), expected[name][key])


def test_torch_parameters_with_grad_are_accepted():
    """requires_grad tensors merge to plain tensors without autograd history."""
    torch = pytest.importorskip("torch")
    a = {"w": torch.nn.Parameter(torch.ones(3))}
    b = {"w": torch.nn.Parameter(torch.zeros(3))}
    merged = linear([a, b])["w"]
    assert not merged.requires_grad and torch.equal(merged, torch.full((3,), 0.5))


def test_module_imports_and_merges_without_torch():
    """``import amasim.merging`` and a numpy merge never import torch."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from amasim import merging\n"
        "print(merging.ties({'w': np.zeros(2)}, [{'w': np.ones(2)}], density=1.0)['w'].sum())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2.0"]


# ------------------------------------------------------------------ bad inputs
BASE = {"w": np.zeros(3), "b": np.zeros(2)}
MODEL = {"w": np.ones(3), "b": np.ones(2)}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: linear([]), ValueError, "models is empty"),
        (lambda: task_arithmetic(BASE, []), ValueError, "models is empty"),
        (lambda: ties(BASE, []), ValueError, "models is empty"),
        (lambda: dare(BASE, []), ValueError, "models is empty"),
        (lambda: merge("slerp", None, []), ValueError, "models is empty"),
        (lambda: linear(MODEL), TypeError, "single mapping"),
        (lambda: linear([MODEL, [1.0]]), TypeError, r"models\[1\] is a list"),
        (lambda: ties([1.0], [MODEL]), TypeError, "base is a list"),
        (lambda: slerp(MODEL, 3.0, 0.5), TypeError, "b is a float"),
        (
            lambda: linear([MODEL, {"w": np.ones(3), "c": np.ones(2)}]),
            ValueError,
            r"models\[1\] has different keys from models\[0\]: missing \['b'\]; extra \['c'\]",
        ),
        (
            lambda: task_arithmetic(BASE, [{"w": np.ones(3)}]),
            ValueError,
            r"missing \['b'\]",
        ),
        (
            lambda: ties(BASE, [{**MODEL, "w": np.ones((3, 1))}]),
            ValueError,
            r"models\[0\]\['w'\] has shape \(3, 1\) but base\['w'\] has shape \(3,\)",
        ),
        (lambda: linear([MODEL, MODEL], weights=[1.0]), ValueError, "1 entries but there are 2"),
        (lambda: linear([MODEL], weights=[[1.0]]), ValueError, r"shape \(1, 1\)"),
        (lambda: linear([MODEL, MODEL], weights=[1, -1]), ValueError, "non-negative"),
        (lambda: linear([MODEL, MODEL], weights=[1, math.nan]), ValueError, "finite"),
        (lambda: task_arithmetic(BASE, [MODEL], weights=[0.0]), ValueError, "all zero"),
        (lambda: linear([MODEL], weights=["a"]), TypeError, "not a sequence of numbers"),
        (lambda: ties(BASE, [MODEL], density=0.0), ValueError, r"outside \(0, 1\]"),
        (lambda: ties(BASE, [MODEL], density=1.5), ValueError, r"outside \(0, 1\]"),
        (lambda: dare(BASE, [MODEL], density=-0.2), ValueError, r"outside \(0, 1\]"),
        (lambda: dare(BASE, [MODEL], density=math.nan), ValueError, "density=nan is not finite"),
        (lambda: ties(BASE, [MODEL], density="0.2"), TypeError, "not a real number"),
        (lambda: slerp(MODEL, MODEL, -0.1), ValueError, r"outside \[0, 1\]"),
        (lambda: slerp(MODEL, MODEL, 1.1), ValueError, r"outside \[0, 1\]"),
        (lambda: merge("slerp", None, [MODEL]), ValueError, "exactly two models"),
        (lambda: merge("slerp", None, [MODEL] * 3), ValueError, "exactly two models"),
        (lambda: merge("slerp", None, [MODEL] * 2), TypeError, "pass t="),
        (lambda: merge("average", BASE, [MODEL]), ValueError, "method='average' is unknown"),
        (lambda: merge("ties", None, [MODEL]), ValueError, "base is None"),
        (lambda: merge("dare_ties", BASE, [MODEL], combine="linear"), TypeError, "sets combine"),
        (lambda: dare(BASE, [MODEL], combine="mean"), ValueError, "combine='mean' is unknown"),
        (lambda: dare(BASE, [MODEL], seed=-1), TypeError, "non-negative int"),
        (lambda: dare(BASE, [MODEL], seed=1.5), TypeError, "non-negative int"),
        (lambda: task_arithmetic(BASE, [MODEL], scale=math.inf), ValueError, "scale=inf"),
        (lambda: linear([{"w": [1.0, 2.0]}]), TypeError, r"models\[0\]\['w'\] is a list"),
        (lambda: linear([{"w": np.ones(2, complex)}]), TypeError, "complex"),
        (lambda: linear([{"w": np.ones(2, np.longdouble)}]), TypeError, "wider than"),
        (lambda: linear([{"w": np.array(["a"])}]), TypeError, "dtype <U1"),
        (
            lambda: linear([{"w": np.ones(2)}, {"w": np.ones(2, int)}]),
            TypeError,
            "floating in every model or in none",
        ),
        (
            lambda: ties(BASE, [{**MODEL, "w": np.array([1.0, np.nan, 0.0])}]),
            ValueError,
            r"models\[0\]\['w'\] has non-finite",
        ),
    ],
)
def test_bad_inputs_raise_with_the_fix(call, error, match):
    """Every validation error names the argument (and key) and says what to pass."""
    with pytest.raises(error, match=match):
        call()


def test_key_lists_in_errors_are_truncated():
    """Long lists of missing keys are cut after five names."""
    many = {f"k{i}": np.zeros(1) for i in range(8)}
    with pytest.raises(ValueError, match=r"missing \['k1', .*'k5', \.\.\. and 2 more\]"):
        linear([many, {"k0": np.zeros(1)}])


def test_complex_and_kind_mismatch_torch():
    """torch complex tensors and float-vs-int mismatches raise TypeError."""
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="complex"):
        linear([{"w": torch.ones(2, dtype=torch.complex64)}])
    with pytest.raises(TypeError, match="floating in every model"):
        linear([{"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.int64)}])
