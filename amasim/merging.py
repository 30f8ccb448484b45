"""Model-merging baselines on parameter dictionaries (notes §10).

Every method takes models as mappings from parameter name to tensor — dicts of numpy
arrays or torch state dicts (``dict[str, torch.Tensor]``), or a mix — and returns a new
``dict`` with the same keys in the reference model's order.  With task vectors
δ_i = θ_i − θ_base and non-negative weights w_i:

===================  ====================================================================
method               merged parameters
===================  ====================================================================
``linear``           Σ w_i θ_i / Σ w_i
``task_arithmetic``  θ_base + λ Σ w_i δ_i
``ties``             trim each δ_i to its top-``density`` entries by magnitude, elect a sign
                     per entry (sign of Σ w_i δ_i), average the agreeing entries (disjoint
                     mean); θ_base + λ · that  (Yadav et al., 2023)
``dare_linear``      drop each entry of δ_i with probability 1 − density, rescale the
                     survivors by 1/density, then task arithmetic  (Yu et al., 2024)
``dare_ties``        the same drop and rescale, then TIES' sign election and disjoint mean
``slerp``            spherical interpolation of two models, tensor by tensor
===================  ====================================================================

One implementation serves both containers: each floating tensor is read as a float64
numpy array (a view where no conversion is needed; never written to), merged, and turned
back into the reference's type, dtype and (for torch) device.  The reference is the base
model for the methods that have one and the first model for ``linear`` and ``slerp``.
torch is imported only when a torch tensor is met, so this module imports without it.

Conventions:

* Integer and bool entries (torch's ``num_batches_tracked``, index buffers) are not
  merged: the reference's value is copied unchanged.  A key must be floating in every
  model or in none.
* Real floating dtypes up to float64 are merged (float16, bfloat16, float32, float64);
  complex and wider-than-float64 dtypes raise ``TypeError``; non-finite values raise
  ``ValueError``.
* Outputs are new tensors (plain ``torch.Tensor``, no autograd history); inputs are never
  modified.

>>> import numpy as np
>>> base = {"w": np.array([0.0, 0.0, 0.0])}
>>> a = {"w": np.array([1.0, 0.0, -2.0])}
>>> b = {"w": np.array([3.0, 0.0, 2.0])}
>>> linear([a, b])["w"].tolist()
[2.0, 0.0, 0.0]
>>> merge("ties", base, [a, b], density=1.0)["w"].tolist()
[2.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "MERGE_METHODS",
    "COLINEAR_COS",
    "merge",
    "linear",
    "task_arithmetic",
    "ties",
    "dare",
    "slerp",
]

MERGE_METHODS: tuple[str, ...] = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "slerp",
)

#: SLERP falls back to linear interpolation when |cos(angle)| exceeds this.
COLINEAR_COS = 0.9995

_MAX_LISTED = 5  # key names listed in an error message before "... and N more"


# ------------------------------------------------------------------ array adapter
def _is_torch(x: Any) -> bool:
    """True for torch tensors (checked by module name, so torch is never imported here)."""
    return type(x).__module__.startswith("torch")


def _describe(name: str, key: Any) -> str:
    return f"{name}[{key!r}]"


def _float_kind(x: Any, where: str) -> bool:
    """True if ``x`` is merged (real floating), False if copied (integer/bool).

    Raises ``TypeError`` for values that are neither numpy arrays nor torch tensors, and
    for complex or wider-than-float64 dtypes.
    """
    if _is_torch(x):
        import torch

        if isinstance(x, torch.Tensor):
            if x.is_complex():
                raise TypeError(
                    f"{where} has complex dtype {x.dtype}: merging supports real floating "
                    "tensors (integer and bool buffers are copied unchanged)"
                )
            return bool(x.is_floating_point())
    if isinstance(x, (np.ndarray, np.generic)):
        dtype = x.dtype
        if np.issubdtype(dtype, np.complexfloating):
            raise TypeError(
                f"{where} has complex dtype {dtype}: merging supports real floating arrays "
                "(integer and bool buffers are copied unchanged)"
            )
        if np.issubdtype(dtype, np.floating):
            if np.finfo(dtype).bits > 64:
                raise TypeError(
                    f"{where} has dtype {dtype}, wider than the float64 the merge computes "
                    "in: cast it to float64 first"
                )
            return True
        if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
            return False
        raise TypeError(
            f"{where} has dtype {dtype}: pass real floating, integer or bool numeric arrays"
        )
    raise TypeError(
        f"{where} is a {type(x).__name__}, not a numpy array or torch tensor: convert it "
        "with numpy.asarray (or torch.as_tensor)"
    )


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def _to_float64(x: Any, where: str) -> np.ndarray:
    """``x`` as a float64 numpy array: a view of the input where possible, never written."""
    if _is_torch(x):
        import torch

        array = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        array = np.asarray(x, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"{where} has non-finite entries (nan or inf): merging needs finite parameters"
        )
    return array


def _restore(array: np.ndarray, reference: Any) -> Any:
    """The float64 result ``array`` in ``reference``'s container, dtype and device."""
    array = np.asarray(array)  # 0-d arithmetic can give numpy scalars
    if _is_torch(reference):
        import torch

        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        tensor = torch.from_numpy(array)
        return tensor.to(device=reference.device, dtype=reference.dtype)
    out = np.array(array, dtype=reference.dtype)  # always a fresh copy
    return out[()] if isinstance(reference, np.generic) else out


def _copy(x: Any) -> Any:
    """An unchanged copy of a non-merged (integer/bool) entry."""
    if _is_torch(x):
        return x.detach().clone()
    return x if isinstance(x, np.generic) else x.copy()


# ------------------------------------------------------------------ validation
def _key_list(keys: list[Any]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def _check_models(models: Sequence[Mapping], name: str = "models") -> list[Mapping]:
    """``models`` as a non-empty list of mappings."""
    if isinstance(models, Mapping):
        raise TypeError(f"{name} is a single mapping: pass a list of parameter dicts, e.g. [model]")
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise TypeError(f"{name} is a {type(models).__name__}: pass a list of parameter dicts")
    models = list(models)
    if not models:
        raise ValueError(f"{name} is empty: pass at least one parameter dict")
    for i, model in enumerate(models):
        if not isinstance(model, Mapping):
            raise TypeError(
                f"{name}[{i}] is a {type(model).__name__}: pass a mapping from parameter "
                "name to numpy array or torch tensor (e.g. module.state_dict())"
            )
    return models


def _check_base(base: Mapping) -> Mapping:
    if not isinstance(base, Mapping):
        raise TypeError(
            f"base is a {type(base).__name__}: pass a mapping from parameter name to numpy "
            "array or torch tensor (e.g. module.state_dict())"
        )
    return base


def _check_structure(mappings: list[Mapping], names: list[str]) -> dict[Any, bool]:
    """Check keys, value types and shapes agree; return {key: merged?} in reference order."""
    reference, ref_name = mappings[0], names[0]
    kinds = {key: _float_kind(value, _describe(ref_name, key)) for key, value in reference.items()}
    for model, name in zip(mappings[1:], names[1:]):
        missing = [k for k in reference if k not in model]
        extra = [k for k in model if k not in reference]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {_key_list(missing)}")
            if extra:
                parts.append(f"extra {_key_list(extra)}")
            raise ValueError(
                f"{name} has different keys from {ref_name}: {'; '.join(parts)}; every model "
                "needs the same parameter names"
            )
        for key, floating in kinds.items():
            value, ref_value = model[key], reference[key]
            where = _describe(name, key)
            if _float_kind(value, where) != floating:
                raise TypeError(
                    f"{where} has dtype {value.dtype} but {_describe(ref_name, key)} has "
                    f"{ref_value.dtype}: a key must be floating in every model or in none"
                )
            if _shape(value) != _shape(ref_value):
                raise ValueError(
                    f"{where} has shape {_shape(value)} but {_describe(ref_name, key)} has "
                    f"shape {_shape(ref_value)}: merged models need identical shapes per key"
                )
    return kinds


def _check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Weights as a float64 array of length ``count`` (ones when None)."""
    if weights is None:
        return np.ones(count)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"weights={weights!r} is not a sequence of numbers: {error}") from None
    if w.ndim != 1 or w.size != count:
        got = f"{w.size} entries" if w.ndim == 1 else f"shape {w.shape}"
        raise ValueError(
            f"weights has {got} but there are {count} models: pass one weight per model"
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights={w.tolist()} must be finite and non-negative")
    if not w.sum() > 0:
        raise ValueError(f"weights={w.tolist()} are all zero: give some model a positive weight")
    return w


def _check_real(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}={value!r} is not a real number: pass a float")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not finite: pass a finite float")
    return float(value)


def _check_density(density: float) -> float:
    density = _check_real(density, "density")
    if not 0.0 < density <= 1.0:
        raise ValueError(
            f"density={density!r} is outside (0, 1]: it is the fraction of each task vector "
            "kept, e.g. 0.2"
        )
    return density


# ------------------------------------------------------------------ shared machinery
def _apply(
    mappings: list[Mapping],
    names: list[str],
    combine: Callable[[list[np.ndarray]], np.ndarray],
) -> dict:
    """Merge key by key: ``combine`` maps the float64 arrays (one per mapping, in order)
    to a fresh float64 array; non-floating entries are copied from ``mappings[0]``."""
    kinds = _check_structure(mappings, names)
    reference = mappings[0]
    merged = {}
    for key, floating in kinds.items():
        if floating:
            arrays = [_to_float64(m[key], _describe(n, key)) for m, n in zip(mappings, names)]
            merged[key] = _restore(combine(arrays), reference[key])
        else:
            merged[key] = _copy(reference[key])
    return merged


def _base_names(count: int) -> list[str]:
    return ["base", *(f"models[{i}]" for i in range(count))]


def _keep_count(density: float, size: int) -> int:
    """⌈density · size⌉, reading density as the decimal it prints as (0.7 · 10 keeps 7)."""
    return min(size, math.ceil(Fraction(repr(density)) * size))


def _trim(delta: np.ndarray, density: float) -> np.ndarray:
    """``delta`` with all but its ⌈density · n⌉ largest-magnitude entries set to 0.

    Among entries tied at the threshold magnitude the lowest flat indices are kept, so
    exactly ⌈density · n⌉ entries survive.
    """
    size = delta.size
    keep_count = _keep_count(density, size)
    if keep_count >= size:
        return delta
    magnitude = np.abs(delta).ravel()
    threshold = np.partition(magnitude, size - keep_count)[size - keep_count]
    keep = magnitude > threshold
    at_threshold = np.flatnonzero(magnitude == threshold)
    keep[at_threshold[: keep_count - int(keep.sum())]] = True
    return np.where(keep.reshape(delta.shape), delta, 0.0)


def _disjoint_mean(deltas: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """TIES' sign election and disjoint mean of the (already sparsified) task vectors.

    The elected sign of an entry is sign(Σ w_i δ_i); the result is the w-weighted mean of
    the δ_i that are non-zero with the elected sign (0 where none is, or the sum is 0).
    """
    elected = np.sign(sum(w_i * d for w_i, d in zip(w, deltas)))
    total = np.zeros_like(elected)
    mass = np.zeros_like(elected)
    for w_i, d in zip(w, deltas):
        agree = np.sign(d) * elected > 0
        total += np.where(agree, w_i * d, 0.0)
        mass += np.where(agree, w_i, 0.0)
    return np.divide(total, mass, out=np.zeros_like(total), where=mass > 0)


# ------------------------------------------------------------------ public methods
def linear(models: Sequence[Mapping], weights: Sequence[float] | None = None) -> dict:
    """Weighted average Σ w_i θ_i / Σ w_i of the models (equal weights when None).

    The output follows ``models[0]``'s types and dtypes; integer/bool entries are copied
    from ``models[0]``.

    >>> import numpy as np
    >>> a, b = {"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, 6.0])}
    >>> linear([a, b], weights=[3, 1])["w"].tolist()
    [1.5, 3.0]
    """
    models = _check_models(models)
    w = _check_weights(weights, len(models))
    scale = 1.0 / w.sum()

    def combine(thetas: list[np.ndarray]) -> np.ndarray:
        return sum(w_i * t for w_i, t in zip(w, thetas)) * scale

    return _apply(models, [f"models[{i}]" for i in range(len(models))], combine)


def task_arithmetic(
    base: Mapping,
    models: Sequence[Mapping],
    *,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
) -> dict:
    """Task arithmetic θ_base + λ Σ w_i (θ_i − θ_base), λ = ``scale`` (weights 1 when None).

    Weights are not normalised: with the default weights the task vectors are summed; pass
    ``weights=[1/n] * n`` for their mean.  ``scale`` may be negative (task negation).

    >>> import numpy as np
    >>> base = {"w": np.array([1.0, 1.0])}
    >>> a, b = {"w": np.array([2.0, 1.0])}, {"w": np.array([1.0, 3.0])}
    >>> task_arithmetic(base, [a, b], scale=0.5)["w"].tolist()
    [1.5, 2.0]
    """
    base = _check_base(base)
    models = _check_models(models)
    w = _check_weights(weights, len(models))
    lam = _check_real(scale, "scale")

    def combine(arrays: list[np.ndarray]) -> np.ndarray:
        theta_base, *thetas = arrays
        return theta_base + lam * sum(w_i * (t - theta_base) for w_i, t in zip(w, thetas))

    return _apply([base, *models], _base_names(len(models)), combine)


def ties(
    base: Mapping,
    models: Sequence[Mapping],
    *,
    density: float = 0.2,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
) -> dict:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean.

    Each task vector δ_i = θ_i − θ_base keeps its ⌈density · n⌉ largest-magnitude entries
    per tensor of n entries (density read as the decimal it prints as; ties at the
    threshold keep the lowest flat indices) and the rest become 0.  Per entry the elected
    sign is sign(Σ w_i δ_i) over the trimmed δ_i, and the merged task vector is the
    w-weighted mean of the trimmed δ_i that are non-zero with that sign (0 if none).
    Result: θ_base + scale · merged.

    >>> import numpy as np
    >>> base = {"w": np.zeros(3)}
    >>> a = {"w": np.array([4.0, -1.0, 0.5])}
    >>> b = {"w": np.array([2.0, 3.0, -0.5])}
    >>> ties(base, [a, b], density=1.0)["w"].tolist()
    [3.0, 3.0, 0.0]
    """
    base = _check_base(base)
    models = _check_models(models)
    density = _check_density(density)
    w = _check_weights(weights, len(models))
    lam = _check_real(scale, "scale")

    def combine(arrays: list[np.ndarray]) -> np.ndarray:
        theta_base, *thetas = arrays
        deltas = [_trim(t - theta_base, density) for t in thetas]
        return theta_base + lam * _disjoint_mean(deltas, w)

    return _apply([base, *models], _base_names(len(models)), combine)


def dare(
    base: Mapping,
    models: Sequence[Mapping],
    *,
    density: float = 0.5,
    seed: int = 0,
    combine: str = "linear",
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
) -> dict:
    """DARE (Yu et al., 2024): random drop and rescale of task vectors, then combine.

    Each entry of δ_i = θ_i − θ_base is kept with probability ``density`` and the
    survivors are divided by ``density`` (so the expectation is δ_i; ``density=1`` drops
    nothing).  ``combine="linear"`` then applies task arithmetic θ_base + λ Σ w_i δ̃_i;
    ``combine="ties"`` applies TIES' sign election and disjoint mean (no further trimming).

    Randomness: ``numpy.random.SeedSequence(seed).spawn(len(models))`` gives model i its
    own ``default_rng`` stream, which draws one uniform per entry for each floating
    tensor in the base's key order.  The same seed gives the same merge.

    >>> import numpy as np
    >>> base, model = {"w": np.zeros(4)}, {"w": np.ones(4)}
    >>> merged = dare(base, [model], density=0.5, seed=1)["w"]
    >>> sorted(set(merged.tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    >>> np.array_equal(merged, dare(base, [model], density=0.5, seed=1)["w"])
    True
    """
    base = _check_base(base)
    models = _check_models(models)
    density = _check_density(density)
    if combine not in ("linear", "ties"):
        raise ValueError(f"combine={combine!r} is unknown: use 'linear' or 'ties'")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed={seed!r} is not a non-negative int: pass e.g. seed=0")
    w = _check_weights(weights, len(models))
    lam = _check_real(scale, "scale")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(w))]

    def drop(delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if density == 1.0:
            return delta
        keep = rng.random(delta.shape) < density
        return np.where(keep, delta / density, 0.0)

    def merge_key(arrays: list[np.ndarray]) -> np.ndarray:
        theta_base, *thetas = arrays
        deltas = [drop(t - theta_base, rng) for t, rng in zip(thetas, streams)]
        if combine == "ties":
            return theta_base + lam * _disjoint_mean(deltas, w)
        return theta_base + lam * sum(w_i * d for w_i, d in zip(w, deltas))

    return _apply([base, *models], _base_names(len(models)), merge_key)


def slerp(a: Mapping, b: Mapping, t: float) -> dict:
    """Spherical linear interpolation from ``a`` (t=0) to ``b`` (t=1), tensor by tensor.

    With cos Ω = ⟨a, b⟩ / (‖a‖ ‖b‖) over the flattened tensors, the result is
    sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b; when |cos Ω| > 0.9995 (nearly colinear,
    or opposite) or a norm is 0 it is the linear (1−t) a + t b.  t=0 returns ``a`` and t=1
    returns ``b`` exactly (in ``a``'s dtype).  Integer/bool entries are copied from ``a``.

    >>> import numpy as np
    >>> a, b = {"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 1.0])}
    >>> np.round(slerp(a, b, 0.5)["w"], 6).tolist()
    [0.707107, 0.707107]
    """
    for name, model in (("a", a), ("b", b)):
        if not isinstance(model, Mapping):
            raise TypeError(
                f"{name} is a {type(model).__name__}: pass a mapping from parameter name "
                "to numpy array or torch tensor"
            )
    t = _check_real(t, "t")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t={t!r} is outside [0, 1]: t=0 gives a, t=1 gives b")

    def combine(arrays: list[np.ndarray]) -> np.ndarray:
        x, y = arrays
        if t == 0.0:
            return x.copy()
        if t == 1.0:
            return y.copy()
        norm_x, norm_y = np.linalg.norm(x), np.linalg.norm(y)
        if norm_x > 0 and norm_y > 0:
            cos = float(np.clip(np.vdot(x, y) / (norm_x * norm_y), -1.0, 1.0))
            if abs(cos) <= COLINEAR_COS:
                omega = math.acos(cos)
                sin_omega = math.sin(omega)
                return (math.sin((1 - t) * omega) * x + math.sin(t * omega) * y) / sin_omega
        return (1 - t) * x + t * y

    return _apply([a, b], ["a", "b"], combine)


def merge(method: str, base: Mapping | None, models: Sequence[Mapping], **kwargs: Any) -> dict:
    """Merge ``models`` with the method named ``method`` (one of :data:`MERGE_METHODS`).

    ``kwargs`` go to the method: ``linear(models, weights)``, ``task_arithmetic``,
    ``ties``, ``dare`` (``"dare_linear"`` and ``"dare_ties"`` set ``combine``) and
    ``slerp`` (exactly two models and ``t``).  ``linear`` and ``slerp`` do not use
    ``base``, which may then be None; the other methods need it.

    >>> import numpy as np
    >>> base = {"w": np.zeros(2)}
    >>> models = [{"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 1.0])}]
    >>> merge("task_arithmetic", base, models, weights=[0.5, 0.5])["w"].tolist()
    [0.5, 0.5]
    >>> merge("slerp", None, models, t=0.0)["w"].tolist()
    [1.0, 0.0]
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"method={method!r} is unknown: use one of {', '.join(MERGE_METHODS)}")
    if method == "linear":
        return linear(models, **kwargs)
    if method == "slerp":
        models = _check_models(models)
        if len(models) != 2:
            raise ValueError(
                f"slerp merges exactly two models but models has {len(models)}: pass [a, b]"
            )
        if "t" not in kwargs:
            raise TypeError("slerp needs the interpolation parameter: pass t=... in [0, 1]")
        return slerp(models[0], models[1], **kwargs)
    if base is None:
        raise ValueError(f"base is None but method {method!r} needs the base model: pass base")
    if method == "task_arithmetic":
        return task_arithmetic(base, models, **kwargs)
    if method == "ties":
        return ties(base, models, **kwargs)
    if "combine" in kwargs:
        raise TypeError(f"method {method!r} sets combine itself: drop the combine argument")
    return dare(base, models, combine=method.removeprefix("dare_"), **kwargs)
