"""The Dask backend: data in partitions on a cluster's workers.

A Dask DataFrame is repartitioned once, by a hash shuffle on the groups
column, so that every group lies in one partition; each worker builds the
designs of its partitions and keeps them (the rows never come back).  The
moments that standardise the fit, the Gram matrices that check the designs'
ranks and the group sizes are summed over the partitions.  Per evaluation
every partition evaluates the likelihood of its groups with the compiled
kernel, and the log-likelihoods and scores (and, for sandwich standard
errors, the outer products of the per-group scores) are summed by a tree
reduction: only parameter-sized vectors travel.  The scheduling is Dask's.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .config import ModelOptions
from .exceptions import MELSInputError, MissingDataWarning
from .formula import (
    DesignMatrices,
    _parse,
    _required,
    build_design,
    check_rank,
    check_scale_facts,
    scale_design_facts,
    take_groups,
)
from .hessian import closed_form_hessian
from .identify import check_outcome
from .likelihood import MELSObjective
from .params import ParamLayout
from .plan import constant_within_groups
from .scaling import ColumnMoments, Scaling, design_moments

#: formulaic's stateful transforms: they learn from the data they see, which on a
#: cluster would be one partition
STATEFUL = ("center", "scale", "standardize", "poly", "bs", "cr", "cs", "cc", "te", "hashed", "lag")
_BLOCKS = (
    ("formula", "x_mean"),
    ("bs_formula", "x_bs"),
    ("ws_formula", "x_ws"),
    ("re_formula", "x_re"),
    ("ws_re_formula", "x_scale"),
)
#: rows of whole groups each partition lends to the sample the starting values
#: and the names come from
SAMPLE_ROWS = 200_000


def is_dask_frame(data) -> bool:
    """Whether ``data`` is a Dask DataFrame (without importing Dask)."""
    return type(data).__module__.split(".")[0] in ("dask", "dask_expr") and hasattr(
        data, "npartitions"
    )


def get_client(client=None):
    """``client``, or the running ``dask.distributed`` client, or a clear error."""
    try:
        import distributed
    except ImportError:
        raise MELSInputError(
            "the Dask backend needs dask.distributed: pip install 'melsml[dask]'"
        ) from None
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise MELSInputError(
                f"client must be a dask.distributed.Client, got {type(client).__name__}"
            )
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise MELSInputError(
            "no Dask client is running: start one first, e.g. "
            "client = distributed.Client() (a LocalCluster on this machine) or "
            "distributed.Client('tcp://scheduler:8786') (a remote cluster)"
        ) from None


# ------------------------------------------------------------------ on the workers
class Part:
    """One partition's groups, on a worker.

    Attributes
    ----------
    n_rows : rows of the partition before missing values were dropped
    missing : rows with a missing value, per column
    design : DesignMatrices in the data's units, or None for an empty partition
    objective : the likelihood over the standardised design (set for a fit)
    final : the evaluation at the estimates in the data's units (after a fit)
    """

    def __init__(self, n_rows: int, missing: dict, design: DesignMatrices | None):
        self.n_rows = n_rows
        self.missing = missing
        self.design = design
        self.objective: MELSObjective | None = None
        self.final = None
        self.final_plan = None
        self.n_threads = 1


def build_part(frame: pd.DataFrame, formula: str, groups: str, kw: dict) -> Part:
    """The design of one partition (no rank checks: the parts are checked together)."""
    n_rows = len(frame)
    missing = {str(c): int(k) for c, k in frame.isna().sum().items() if k}
    if not n_rows or not frame.notna().all(axis=1).any():
        return Part(n_rows, missing, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingDataWarning)
        design = build_design(formula, frame, groups, checks=False, **kw)
    return Part(n_rows, missing, design)


def part_summary(part: Part) -> dict:
    """What the client needs of a part: counts, moments, Gram matrices, groups."""
    d = part.design
    out = {"n_rows": part.n_rows, "missing": part.missing, "n_obs": 0}
    if d is None:
        return out
    w = d.row_weights
    grams = {}
    for opt, attr in _BLOCKS:
        x = getattr(d, attr)
        grams[opt] = x.T @ x if w is None else x.T @ (x * w[:, None])
    xy = np.column_stack([d.x_mean, d.y])
    starts, sizes = d.group_ptr[:-1], d.group_sizes
    h = d.x_scale
    varies, ok = scale_design_facts(h, d.scale_names, d.group_ptr)
    out.update(
        n_obs=d.n_obs,
        labels=d.group_labels,
        sizes=sizes,
        group_weights=d.group_weights,
        weight_total=float(d.n_obs if w is None else w.sum()),
        moments=design_moments(d),
        grams=grams,
        gram_xy=xy.T @ xy,
        y_varies_within=bool(np.any(d.y != np.repeat(d.y[starts], sizes))),
        h_const=bool(constant_within_groups(h, d.group_ptr).all()),
        scale_varies=varies,
        scale_ok=ok,
    )
    return out


def sample_design(part: Part, max_rows: int) -> DesignMatrices | None:
    """The part's first groups, whole, up to about ``max_rows`` rows."""
    d = part.design
    if d is None:
        return None
    n_groups = int(np.searchsorted(d.group_ptr, max_rows, side="right"))
    return slice_groups(d, 0, max(1, min(n_groups, d.n_groups)))


def fit_part(part: Part, scaling: Scaling | None, layout, options, n_threads) -> Part:
    """A part for one fit: the same design, with the objective over its
    standardised copy."""
    fitted = Part(part.n_rows, part.missing, part.design)
    # each evaluation task holds one of the worker's threads: its kernel runs on
    # one thread unless told otherwise
    n_threads = 1 if n_threads is None else n_threads
    fitted.n_threads = n_threads
    if part.design is not None:
        design = part.design if scaling is None else scaling.design(part.design)
        fitted.objective = MELSObjective(design, layout, options, n_threads)
    return fitted


@dataclass(frozen=True)
class PartialSum:
    """Log-likelihood and score of some groups; sums add."""

    llf: float
    score: np.ndarray | None

    def __add__(self, other: PartialSum) -> PartialSum:
        score = None if self.score is None else self.score + other.score
        return PartialSum(self.llf + other.llf, score)


def evaluate_part(part: Part, theta: np.ndarray, score: bool, adapt: bool) -> PartialSum | None:
    """The part's contribution (its objective keeps its node placement, the next
    evaluation's starting point)."""
    if part.objective is None:
        return None
    ev = part.objective.evaluate(theta, score=score, adapt=adapt)
    return PartialSum(ev.llf, ev.score)


def score_outer_part(part: Part, theta: np.ndarray) -> np.ndarray | None:
    if part.objective is None:
        return None
    g = part.objective.score_groups(theta)
    return g.T @ g


def hessian_part(part: Part, theta: np.ndarray) -> np.ndarray | bool | None:
    """The part's Hessian in closed form (the Hessian is a sum over schools, and
    every school lies in one part); False where its model has none, None for a
    part without schools."""
    if part.objective is None:
        return None
    hess = closed_form_hessian(part.objective, theta)
    return False if hess is None else hess


def final_part(part: Part, theta: np.ndarray, layout, options) -> PartialSum | None:
    """The evaluation at the estimates in the data's units, kept for predictions."""
    if part.objective is None:
        return None
    obj = MELSObjective(part.design, layout, options, part.n_threads)
    part.final = obj.evaluate(theta, centers=part.objective.centers)
    part.final_plan = obj.plan
    return PartialSum(part.final.llf, part.final.score)


def _add(*items):
    """Sum the non-None items (None where there are none)."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    total = items[0]
    for x in items[1:]:
        total = total + x
    return total


def tree_sum(client, futures: list, split_every: int = 8):
    """Sum futures' results where they are, ``split_every`` at a time, and
    gather the one sum."""
    futures = list(futures)
    while len(futures) > 1:
        futures = [
            client.submit(_add, *futures[i : i + split_every], pure=False)
            for i in range(0, len(futures), split_every)
        ]
    return futures[0].result()


# ------------------------------------------------------------------ designs
def slice_groups(design: DesignMatrices, g0: int, g1: int) -> DesignMatrices:
    """Groups ``g0`` to ``g1 - 1`` of a design (its rows are sorted by group)."""
    return take_groups(design, slice(g0, g1))


def concat_designs(designs: list[DesignMatrices]) -> DesignMatrices:
    """Designs of disjoint groups, stacked."""
    first = designs[0]
    if len(designs) == 1:
        return first

    def stack(attr):
        xs = [getattr(d, attr) for d in designs]
        return None if xs[0] is None else np.ascontiguousarray(np.concatenate(xs))

    sizes = np.concatenate([d.group_sizes for d in designs])
    return replace(
        first,
        y=stack("y"),
        x_mean=stack("x_mean"),
        x_bs=stack("x_bs"),
        x_ws=stack("x_ws"),
        x_re=stack("x_re"),
        x_scale=stack("x_scale"),
        group_ptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp),
        group_labels=np.concatenate([d.group_labels for d in designs]),
        row_index=pd.Index(np.concatenate([np.asarray(d.row_index) for d in designs])),
        row_position=stack("row_position"),
        group_weights=stack("group_weights"),
        unit_weights=stack("unit_weights"),
        censoring=stack("censoring"),
    )


def split_design(design: DesignMatrices, n_parts: int) -> list[DesignMatrices]:
    """A design cut into ``n_parts`` runs of whole groups of about equal rows."""
    n_parts = max(1, min(int(n_parts), design.n_groups))
    cuts = np.searchsorted(design.group_ptr, np.linspace(0, design.n_obs, n_parts + 1))
    cuts[0], cuts[-1] = 0, design.n_groups
    cuts = np.unique(cuts)
    return [slice_groups(design, int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


# ------------------------------------------------------------------ on the client
class DistributedData:
    """A model's data in parts on a Dask cluster, and what was summed over them.

    Attributes
    ----------
    client : the ``dask.distributed.Client``
    parts : futures of :class:`Part`, one per partition, each holding whole groups
    design : DesignMatrices with the names, formulas, group sizes and labels
        (sorted) of all the data but no unit-level rows
    sample : DesignMatrices of whole groups from every part (starting values)
    moments : the column moments of every block over all the data
    """

    def __init__(self, client, parts: list, summaries: list[dict], sample: DesignMatrices):
        self.client = client
        self.parts = parts
        full = [s for s in summaries if s["n_obs"]]
        if not full:
            raise MELSInputError("no rows left after dropping rows with missing values")
        labels = np.concatenate([s["labels"] for s in full])
        sizes = np.concatenate([s["sizes"] for s in full])
        order = np.argsort(labels, kind="stable")
        labels, sizes = labels[order], sizes[order]
        if np.any(labels[1:] == labels[:-1]):
            dup = labels[1:][labels[1:] == labels[:-1]][0]
            raise MELSInputError(
                f"group {dup!r} of {sample.groups!r} lies in more than one partition"
            )
        gw = None
        if sample.group_weights is not None:
            gw = np.concatenate([s["group_weights"] for s in full])[order]
        n_rows = sum(s["n_rows"] for s in summaries)
        self.n_obs = int(sizes.sum())
        self.missing: dict[str, int] = {}
        for s in summaries:
            for c, k in s["missing"].items():
                self.missing[c] = self.missing.get(c, 0) + k
        self.weight_total = float(sum(s["weight_total"] for s in full))
        moments = {}
        for name in full[0]["moments"]:
            m: ColumnMoments = full[0]["moments"][name]
            for s in full[1:]:
                m = m.merge(s["moments"][name])
            moments[name] = m
        self.moments = moments
        self.grams = {opt: sum(s["grams"][opt] for s in full) for opt, _ in _BLOCKS}
        self.gram_xy = sum(s["gram_xy"] for s in full)
        self.unit_level_scale = not all(s["h_const"] for s in full)
        self.sample = sample
        empty = np.zeros(0)
        self.design = replace(
            sample,
            y=empty,
            x_mean=np.zeros((0, sample.x_mean.shape[1])),
            x_bs=np.zeros((0, sample.x_bs.shape[1])),
            x_ws=np.zeros((0, sample.x_ws.shape[1])),
            x_re=np.zeros((0, sample.x_re.shape[1])),
            x_scale=np.zeros((0, sample.x_scale.shape[1])),
            group_ptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp),
            group_labels=labels,
            row_index=pd.Index([]),
            row_position=None,
            n_dropped=n_rows - self.n_obs,
            group_weights=gw,
            unit_weights=None,
            censoring=None,
        )
        self._y_varies_within = any(s["y_varies_within"] for s in full)
        self._scale_varies = np.logical_or.reduce([s["scale_varies"] for s in full])
        self._scale_ok = sum(s["scale_ok"] for s in full)

    @property
    def n_parts(self) -> int:
        return len(self.parts)

    def scaling(self) -> Scaling:
        return Scaling.from_moments(self.moments, self.design.re_names)

    def reference(self) -> dict[str, np.ndarray]:
        """The reference covariates: column means of the BS, WS and scale designs,
        and the covariance of the random location design."""
        m = self.moments
        re = m["re"]
        w = re.weight
        gram = self.grams["re_formula"]
        cov = (gram - w * np.outer(re.mean, re.mean)) / max(w - 1.0, 1.0)
        return {"bs": m["bs"].mean, "ws": m["ws"].mean, "scale": m["scale"].mean, "re_cov": cov}

    def check_identifiable(self) -> None:
        """The checks of a design in memory, made on the sums over the parts."""
        d = self.design
        y = self.moments["y"]
        # the residual sum of squares of y on the mean design, from [X y]'[X y]
        g = self.gram_xy
        k = g.shape[0] - 1
        beta = np.linalg.lstsq(g[:k, :k], g[:k, k], rcond=None)[0]
        rss = g[k, k] - g[:k, k] @ beta
        check_outcome(
            d,
            constant=bool(y.constant[0]),
            value=float(y.first[0]),
            varies_within=self._y_varies_within,
            exact_fit=bool(rss <= 1e-12 * max(y.m2[0], 1e-300)),
        )
        for opt, _ in _BLOCKS:
            names = {
                "formula": d.mean_names,
                "bs_formula": d.bs_names,
                "ws_formula": d.ws_names,
                "re_formula": d.re_names,
                "ws_re_formula": d.scale_names,
            }[opt]
            check_rank(self.grams[opt], names, opt, d.formulas[opt])
        check_scale_facts(
            self._scale_varies, self._scale_ok, d.scale_names, d.formulas["ws_re_formula"]
        )

    def warn_missing(self) -> None:
        if self.design.n_dropped:
            detail = ", ".join(f"{c}: {k}" for c, k in self.missing.items())
            warnings.warn(
                f"dropped {self.design.n_dropped} of {self.design.n_dropped + self.n_obs} "
                f"rows with missing values ({detail})",
                MissingDataWarning,
                stacklevel=4,
            )

    @classmethod
    def from_parts(cls, client, parts: list) -> DistributedData:
        """From futures of :class:`Part` (whole groups each)."""
        summaries = client.gather(client.map(part_summary, parts, pure=False))
        per_part = max(1000, SAMPLE_ROWS // max(len(parts), 1))
        samples = client.gather(client.map(sample_design, parts, max_rows=per_part, pure=False))
        samples = [s for s in samples if s is not None]
        if not samples:
            raise MELSInputError("no rows left after dropping rows with missing values")
        return cls(client, parts, summaries, concat_designs(samples))

    @classmethod
    def from_design(cls, design: DesignMatrices, client, n_parts: int | None = None):
        """A design in memory, cut into runs of whole groups and scattered to the
        workers (default: two parts per worker thread)."""
        if n_parts is None:
            n_parts = 2 * max(1, sum(client.nthreads().values()))
        pieces = [Part(p.n_obs, {}, p) for p in split_design(design, n_parts)]
        parts = client.scatter(pieces)
        data = cls.from_parts(client, parts)
        data.design = replace(data.design, n_dropped=design.n_dropped)
        return data


def _check_formula_text(specs: dict) -> None:
    for opt, f in specs.items():
        for fun in STATEFUL:
            if isinstance(f, str) and re.search(rf"(?<![\w.]){fun}\s*\(", f):
                raise MELSInputError(
                    f"{opt}={f!r} uses {fun}(), which learns from the data it sees: on a "
                    "Dask cluster that would be one partition; compute the column first "
                    "(e.g. with ddf.assign) and use it in the formula"
                )


def from_dask_frame(
    formula: str,
    ddf,
    groups: str,
    kw: dict,
    client=None,
    npartitions: int | None = None,
) -> DistributedData:
    """Partition a Dask DataFrame by group and build every partition's design on
    the workers.

    Parameters
    ----------
    formula, groups, kw
        As :func:`melsml.formula.build_design` takes them.
    ddf : dask.dataframe.DataFrame
    client : dask.distributed.Client, optional
        Default: the running client.
    npartitions : int, optional
        Partitions after the shuffle; default: as many as ``ddf`` has.
    """
    import dask

    client = get_client(client)
    if not isinstance(groups, str) or groups not in ddf.columns:
        raise MELSInputError(f"groups column {groups!r} is not in the data")
    specs = {"formula": formula} | {k: kw[k] for k in kw if k.endswith("formula")}
    _check_formula_text(specs)
    meta = ddf._meta
    used = [groups]
    for col in (kw.get("group_weights"), kw.get("weights")):
        if col is not None:
            if not isinstance(col, str) or col not in ddf.columns:
                raise MELSInputError(f"weights must name columns of the data, got {col!r}")
            used.append(col)
    for opt, f in specs.items():
        parsed = _parse(f, opt, needs_lhs=(opt == "formula"))
        for v in _required(parsed, meta, opt, f):
            if v not in used:
                used.append(v)
    frame = ddf[used]
    # factors: the same levels (all the data's, sorted) in every partition
    factors = [
        c
        for c in used
        if c != groups
        and (
            not pd.api.types.is_numeric_dtype(meta[c])
            or pd.api.types.is_bool_dtype(meta[c])
            or isinstance(meta[c].dtype, pd.CategoricalDtype)
        )
    ]
    if factors:
        levels = dask.compute(*[frame[c].dropna().unique() for c in factors])
        dtypes = {}
        for c, lev in zip(factors, levels, strict=True):
            known = pd.Categorical(np.asarray(lev)).categories
            dtypes[c] = pd.CategoricalDtype(known)
        frame = frame.astype(dtypes)
    n = int(npartitions or ddf.npartitions)
    frame = frame.shuffle(on=groups, npartitions=n)
    build = dask.delayed(build_part, pure=True)
    parts = client.compute([build(p, formula, groups, kw) for p in frame.to_delayed()])
    return DistributedData.from_parts(client, parts)


class DistributedObjective:
    """The log-likelihood of a model whose data are on a Dask cluster, in the
    standardised units of ``scaling`` (None: the data's units), with the
    interface of :class:`~melsml.likelihood.MELSObjective` the optimiser uses."""

    def __init__(
        self,
        data: DistributedData,
        layout: ParamLayout,
        options: ModelOptions,
        scaling: Scaling | None,
        n_threads: int | None = None,
    ):
        self.data = data
        self.design = data.design
        self.layout = layout
        self.options = options
        self.n_threads = n_threads
        client = data.client
        self._parts = client.map(
            fit_part,
            data.parts,
            scaling=scaling,
            layout=layout,
            options=options,
            n_threads=n_threads,
            pure=False,
        )
        self.n_evals = 0
        self._last: tuple[bytes, DistributedEvaluation] | None = None

    def reset_counter(self) -> None:
        self.n_evals = 0

    def clear_cache(self) -> None:
        """Forget the kept evaluation."""
        self._last = None

    def evaluate(self, theta: np.ndarray, *, score: bool = True, adapt: bool = True, centers=None):
        """Log-likelihood (and score) at ``theta``, summed over the parts; called
        again at the same ``theta`` (the optimiser's last point, say), the
        previous evaluation is returned without a round trip to the workers."""
        theta = np.asarray(theta, dtype=float)
        key = theta.tobytes()
        if adapt and self._last is not None and self._last[0] == key:
            if self._last[1].score is not None or not score:
                return self._last[1]
        client = self.data.client
        futures = client.map(
            evaluate_part, self._parts, theta=theta, score=score, adapt=adapt, pure=False
        )
        total: PartialSum = tree_sum(client, futures)
        self.n_evals += 1
        ev = DistributedEvaluation(theta.copy(), total.llf, total.score if score else None)
        self._last = (key, ev) if adapt else None
        return ev

    def loglike(self, theta: np.ndarray) -> float:
        return self.evaluate(theta, score=False).llf

    def score(self, theta: np.ndarray) -> np.ndarray:
        return self.evaluate(theta).score

    def score_outer(self, theta: np.ndarray) -> np.ndarray:
        """Sum over groups of the outer products of the per-group scores."""
        client = self.data.client
        futures = client.map(score_outer_part, self._parts, theta=np.asarray(theta), pure=False)
        return tree_sum(client, futures)

    def hessian(self, theta: np.ndarray) -> np.ndarray | None:
        """The Hessian in closed form, summed over the parts in a fixed order, or
        None where the model has none (see :mod:`melsml.hessian`)."""
        parts = self.map_parts(hessian_part, theta=np.asarray(theta, dtype=float))
        if any(h is False for h in parts):
            return None
        k = self.layout.k_params
        return sum(parts, np.zeros((k, k)))

    def final(self, theta: np.ndarray) -> DistributedEvaluation:
        """Evaluate at the estimates in the data's units, each part keeping its
        evaluation (node placement, posterior moments) for predictions."""
        client = self.data.client
        futures = client.map(
            final_part,
            self._parts,
            theta=np.asarray(theta, dtype=float),
            layout=self.layout,
            options=self.options,
            pure=False,
        )
        total: PartialSum = tree_sum(client, futures)
        return DistributedEvaluation(np.asarray(theta, dtype=float), total.llf, total.score)

    def map_parts(self, func, /, **kwargs) -> list:
        """``func(part, **kwargs)`` on every part, gathered (None results dropped)."""
        client = self.data.client
        out = client.gather(client.map(func, self._parts, pure=False, **kwargs))
        return [x for x in out if x is not None]


@dataclass(frozen=True)
class DistributedEvaluation:
    """An evaluation summed over a cluster's parts."""

    theta: np.ndarray
    llf: float
    score: np.ndarray | None
