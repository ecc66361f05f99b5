"""The Dask backend on a real ``dask.distributed`` cluster (a LocalCluster of
worker processes): the same fits, school effects and errors as in memory."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from melsml import MELS, simulate_london  # noqa: E402
from melsml.distributed import concat_designs, split_design  # noqa: E402
from melsml.distributed_model import DistributedMELS, DistributedResults  # noqa: E402
from melsml.exceptions import MELSInputError, MissingDataWarning  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def data():
    df = simulate_london(3, seed=11, n_schools=60, n_students=5000)
    rng = np.random.default_rng(3)
    # a factor with a rare level (absent from most partitions) and missing values
    df["region"] = rng.choice(["north", "south", "east", "west"], len(df), p=[0.4, 0.3, 0.28, 0.02])
    df.loc[rng.choice(len(df), 40, replace=False), "prior"] = np.nan
    return df


def _spread(df: pd.DataFrame, npartitions: int = 8):
    """Rows in random order, so that the groups are spread over the partitions."""
    shuffled = df.sample(frac=1.0, random_state=1)
    ddf = dd.from_pandas(shuffled, npartitions=npartitions, sort=False)
    parts = [set(ddf.get_partition(i)["school"].compute()) for i in range(npartitions)]
    spread = sum(sum(g in p for p in parts) > 1 for g in set(df["school"]))
    assert spread > 0.9 * df["school"].nunique()  # most groups in several partitions
    return ddf


def _fit_both(data, ddf, formula, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingDataWarning)
        mem = MELS.from_formula(formula, data, "school", **kw).fit()
        model = MELS.from_formula(formula, ddf, "school", **kw)
    return mem, model, model.fit()


def _assert_same_fit(mem, dask_res, cov_type=None):
    assert isinstance(dask_res, DistributedResults)
    assert dask_res.converged
    assert abs(dask_res.llf - mem.llf) < 1e-8
    np.testing.assert_allclose(dask_res.params, mem.params, rtol=0, atol=1e-6)
    cov = mem.cov_params(cov_type).to_numpy()
    np.testing.assert_allclose(
        dask_res.cov_params(cov_type), cov, rtol=1e-5, atol=1e-8 * np.abs(cov).max()
    )
    assert dask_res.nobs == mem.nobs and dask_res.n_groups == mem.n_groups
    assert dask_res.aic == pytest.approx(mem.aic, abs=1e-7)


def test_model_3_from_spread_partitions_equals_the_fit_in_memory(client, data):
    ddf = _spread(data)
    mem, model, res = _fit_both(data, ddf, "y ~ prior + region", ws_formula="~ prior")
    assert isinstance(model, DistributedMELS)
    assert model.design.n_dropped == 40 == mem.model.design.n_dropped
    _assert_same_fit(mem, res)
    # the parts' closed-form Hessians, summed, as in memory
    assert res.fit_info.hessian == mem.fit_info.hessian == "closed form"
    # an evaluation at the previous point is reused without a round trip
    obj = res._std.objective
    theta = res._std.theta
    first = obj.evaluate(theta)
    count = obj.n_evals
    assert obj.evaluate(theta) is first and obj.n_evals == count
    obj.evaluate(theta + 1e-9)
    assert obj.n_evals == count + 1
    _assert_same_fit(mem, res, "robust")
    # school effects and random effects: computed on the workers, ranked over all
    se_mem, se = mem.school_effects(), res.school_effects()
    assert se.index.equals(se_mem.index)
    num = [c for c in se.columns if se[c].dtype.kind == "f"]
    np.testing.assert_allclose(se[num], se_mem[num], rtol=1e-6, atol=1e-8)
    for col in ("mean_rank", "variance_rank", "n"):
        np.testing.assert_array_equal(se[col], se_mem[col])
    assert se.attrs["variance_reference"] == pytest.approx(se_mem.attrs["variance_reference"])
    re_mem, re = mem.random_effects(), res.random_effects()
    np.testing.assert_allclose(re.to_numpy(float), re_mem.to_numpy(float), rtol=1e-6, atol=1e-8)
    assert f"{mem.nobs} (40 dropped: missing values)" in str(res.summary())


def test_missing_values_are_counted_over_the_partitions(client, data):
    ddf = _spread(data)
    with pytest.warns(MissingDataWarning, match=r"dropped 40 of \d+ rows .*prior: 40"):
        MELS.from_formula("y ~ prior", ddf, "school")


@pytest.mark.filterwarnings("ignore::melsml.exceptions.BoundaryWarning")
def test_random_slopes_and_a_random_scale_slope(client, data):
    ddf = _spread(data.dropna(), npartitions=5)
    full = data.dropna()
    mem, _, res = _fit_both(full, ddf, "y ~ prior", re_formula="~ 1 + prior")
    _assert_same_fit(mem, res)
    mem, _, res = _fit_both(
        full, ddf, "y ~ prior", ws_formula="~ prior", ws_re_formula="~ 1 + prior"
    )
    _assert_same_fit(mem, res)
    se_mem = mem.school_effects(at={"prior": [-1.0, 1.0]})
    se = res.school_effects(at={"prior": [-1.0, 1.0]})
    np.testing.assert_allclose(
        se["variance[prior=1]"], se_mem["variance[prior=1]"], rtol=1e-6, atol=1e-8
    )


def test_weights_and_a_parquet_folder(client, data, tmp_path):
    full = data.dropna().copy()
    full["w"] = 1.0 + (full["school"] % 3)
    dd.from_pandas(full.sample(frac=1.0, random_state=2), npartitions=6).to_parquet(
        tmp_path / "pupils"
    )
    ddf = dd.read_parquet(tmp_path / "pupils")
    mem, _, res = _fit_both(full, ddf, "y ~ prior", group_weights="w")
    _assert_same_fit(mem, res)


def test_a_model_in_memory_fits_on_the_cluster(client, data):
    full = data.dropna()
    model = MELS.from_formula("y ~ prior", full, "school", ws_formula="~ prior")
    mem = model.fit()
    res = model.fit(backend="dask")
    _assert_same_fit(mem, res)
    assert "parts on a Dask cluster" in repr(res.model)


def test_split_and_concat_designs_are_inverse():
    df = simulate_london(3, seed=2, n_schools=20, n_students=800)
    design = MELS.from_formula("y ~ prior", df, "school").design
    parts = split_design(design, 4)
    assert len(parts) == 4
    assert all(p.n_groups >= 1 for p in parts)
    back = concat_designs(parts)
    np.testing.assert_array_equal(back.y, design.y)
    np.testing.assert_array_equal(back.x_mean, design.x_mean)
    np.testing.assert_array_equal(back.group_ptr, design.group_ptr)
    np.testing.assert_array_equal(back.group_labels, design.group_labels)


def test_clear_errors(client, data):
    ddf = _spread(data.dropna(), npartitions=4)
    with pytest.raises(MELSInputError, match="center"):
        MELS.from_formula("y ~ center(prior)", ddf, "school")
    with pytest.raises(MELSInputError, match="family"):
        MELS.from_formula("y ~ prior", ddf, "school", family="ordinal")
    with pytest.raises(MELSInputError, match="groups column 'nope'"):
        MELS.from_formula("y ~ prior", ddf, "nope")
    with pytest.raises(MELSInputError, match="not in the data: zzz"):
        MELS.from_formula("y ~ zzz", ddf, "school")
    with pytest.raises(MELSInputError, match="rank-deficient"):
        MELS.from_formula("y ~ prior + female + I(1 - female)", ddf, "school")
    model = MELS.from_formula("y ~ prior", ddf, "school")
    with pytest.raises(MELSInputError, match="backend='memory'"):
        model.fit(backend="memory")
    with pytest.raises(MELSInputError, match="unknown backend"):
        MELS.from_formula("y ~ prior", data.dropna(), "school").fit(backend="spark")
    with pytest.raises(MELSInputError, match="npartitions apply to Dask data"):
        MELS.from_formula("y ~ prior", data.dropna(), "school", npartitions=3)
    res = model.fit()
    with pytest.raises(MELSInputError, match="stays on the Dask cluster"):
        res.predict()
