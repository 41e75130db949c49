"""Observers: ranges against numpy, merging, per-channel, pickling, and damaged state."""

import pickle

import numpy as np
import pytest

import zeropoint as zp


def batches(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, 3, 10)) * np.array([1.0, 2.0, 0.5])[None, :, None]).astype(np.float32) for _ in range(n)]


def test_minmax_and_percentiles_match_numpy():
    data = batches()
    allx = np.concatenate(data)
    mm = zp.Observer("minmax")
    pc = zp.Observer("percentile", lower=1.0, upper=99.0)
    for b in data:
        mm.update(b)
        pc.update(b)
    assert mm.range() == (float(allx.min()), float(allx.max()))
    lo, hi = pc.range()
    # Histogram percentiles are bin-accurate: within a bin of the order statistics around the
    # rank (numpy's "lower" and "higher" percentiles; definitions differ between them).
    width = 4 * np.abs(allx).max() / 8192
    for got, p in [(lo, 1.0), (hi, 99.0)]:
        below, above = np.percentile(allx, p, method="lower"), np.percentile(allx, p, method="higher")
        assert below - width <= got <= above + width, (got, below, above)


def test_merged_workers_equal_one_observer():
    for method in ["minmax", "mse", "entropy", "percentile", "cross-entropy"]:
        whole = zp.Observer(method)
        a, b = zp.Observer(method), zp.Observer(method)
        for i, x in enumerate(batches()):
            whole.update(x)
            (a if i % 2 else b).update(x)
        a.merge(b)
        assert a.range() == whole.range(), method


def test_per_channel_ranges():
    s = zp.Scheme(bits=8, symmetric=True, granularity="per-channel", axis=1)
    o = zp.Observer("minmax", s)
    data = batches()
    for x in data:
        o.update(x)
    lo, hi = o.range()
    allx = np.concatenate(data)
    np.testing.assert_array_equal(lo, allx.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, allx.max(axis=(0, 2)))
    scale, z = o.params()
    np.testing.assert_allclose(scale, np.maximum(-lo, hi) / 127, rtol=1e-6)
    assert z.shape == (3,) and not z.any()


def test_mse_range_beats_minmax_on_outliers():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(100_000).astype(np.float32)
    x[:5] = 40.0  # a few outliers
    s = zp.Scheme(bits=4)
    errors = {}
    for method in ["minmax", "mse"]:
        o = zp.Observer(method, s)
        o.update(x)
        scale, z = o.params()
        errors[method] = float(np.mean((zp.fake_quant(x, s, scale, z) - x) ** 2))
    assert errors["mse"] < 0.5 * errors["minmax"], errors


def test_pickled_observers_carry_on_identically():
    for method in ["minmax", "ema", "mse", "entropy", "cross-entropy"]:
        o = zp.Observer(method, zp.Scheme(bits=8))
        data = batches(1)
        o.update(data[0])
        p = pickle.loads(pickle.dumps(o))
        assert repr(p) == repr(o)
        for x in data[1:]:
            o.update(x)
            p.update(x)
        assert p.range() == o.range(), method


def test_bad_observers_and_states_raise():
    with pytest.raises(zp.SchemeError, match="unknown range method 'best'"):
        zp.Observer("best")
    with pytest.raises(zp.SchemeError, match="takes no parameter 'momentum'"):
        zp.Observer("mse", momentum=0.5)
    with pytest.raises(zp.SchemeError, match="NaN"):
        zp.Observer().update(np.array([1.0, np.nan], np.float32))
    with pytest.raises(zp.SchemeError, match="empty"):
        zp.Observer().range()
    with pytest.raises(zp.SchemeError, match="different schemes"):
        zp.Observer("minmax", zp.Scheme(bits=8)).merge(zp.Observer("minmax", zp.Scheme(bits=4)))
    o = zp.Observer("mse")
    o.update(np.arange(10, dtype=np.float32))
    restore, (state, scheme) = o.__reduce__()
    for cut in (0, 3, len(state) // 2, len(state) - 1):
        with pytest.raises(zp.SchemeError, match="observer state"):
            restore(state[:cut], scheme)
