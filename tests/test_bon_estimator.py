"""The exact best-of-n estimator against brute force over all subsets, and against Monte Carlo at N = 4096."""

import collections
import itertools
import math

import numpy as np
import pytest

from rlhf_syco.bon.estimator import best_of_n, kl_bon, kl_plugin, selection_weights


def brute_force(scores: np.ndarray, values: np.ndarray, n: int) -> float:
    """Mean value of the best sample over every n-subset; np.argmax keeps the earliest of tied samples."""
    picks = [values[list(subset)[int(np.argmax(scores[list(subset)]))]]
             for subset in itertools.combinations(range(len(scores)), n)]
    return float(np.mean(picks))


@pytest.mark.parametrize("pool_size", [1, 2, 5, 8, 11])
def test_equals_brute_force_over_all_subsets_with_ties(pool_size):
    rng = np.random.default_rng(pool_size)
    for _ in range(3):
        scores = rng.integers(0, 3, pool_size).astype(float)  # few distinct scores: many ties
        values = rng.normal(size=pool_size)
        exact = best_of_n(scores, values, range(1, pool_size + 1))
        for n in range(1, pool_size + 1):
            assert exact[n - 1] == pytest.approx(brute_force(scores, values, n), abs=1e-9)


def test_n_one_is_the_pool_mean_and_n_max_the_argmax_sample():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(6, 50)), 1)  # ties within each pool
    values = rng.normal(size=(6, 50))
    first, last = best_of_n(scores, values, [1, 50])
    np.testing.assert_allclose(first, values.mean(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(last, values[np.arange(6), scores.argmax(axis=1)])


def test_leading_and_trailing_axes_are_independent_pools_and_values():
    rng = np.random.default_rng(1)
    scores, values = rng.normal(size=(3, 7)), rng.normal(size=(3, 7, 2))
    together = best_of_n(scores, values, [1, 3, 7])
    assert together.shape == (3, 3, 2)
    for p in range(3):
        for k in range(2):
            np.testing.assert_allclose(together[:, p, k], best_of_n(scores[p], values[p, :, k], [1, 3, 7]))


def test_weights_are_a_distribution_at_n_4096():
    for n in (1, 2, 64, 2048, 4095, 4096):
        w = selection_weights(4096, n)
        assert np.isfinite(w).all() and (w >= 0).all() and w[:n - 1].sum() == 0
        assert w.sum() == pytest.approx(1.0, abs=1e-9)
    # C(i-1, n-1) / C(N, n) by hand for one entry: i = 10, n = 3, N = 12 -> C(9, 2) / C(12, 3) = 36 / 220
    assert selection_weights(12, 3)[9] == pytest.approx(36 / 220, abs=1e-15)


def test_matches_monte_carlo_at_n_4096():
    rng = np.random.default_rng(2)
    pool_size, draws = 4096, 4000
    scores = np.round(rng.normal(size=pool_size), 2)  # about 600 distinct scores: ties
    values = scores + rng.normal(size=pool_size)  # correlated with the score, as judgments are
    sizes = [2, 16, 256, 4000]
    exact = best_of_n(scores, values, sizes)
    for n, expected in zip(sizes, exact):
        picks = []
        for _ in range(draws):
            subset = np.sort(rng.choice(pool_size, n, replace=False))
            picks.append(values[subset[np.argmax(scores[subset])]])
        mean, half_width = np.mean(picks), 3.29 * np.std(picks, ddof=1) / math.sqrt(draws)  # 99.9% CI
        assert abs(expected - mean) <= half_width, (n, expected, mean, half_width)


def test_rejects_nan_scores_and_bad_n():
    with pytest.raises(ValueError, match="NaN"):
        best_of_n([0.0, np.nan], [1.0, 2.0], [1])
    with pytest.raises(ValueError, match="1 <= n"):
        selection_weights(4, 5)


def test_kl_bon_closed_form():
    assert kl_bon(1) == 0
    assert kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    np.testing.assert_allclose(kl_bon(np.array([4, 4096])), [math.log(4) - 0.75, math.log(4096) - 4095 / 4096])


def test_kl_plugin_against_enumerating_every_draw():
    """Best-of-n of n independent draws from the pool's distinct replies, by brute force over all N^n draws."""
    samples = ["a", "b", "a", "c", "b", "a"]
    scores = np.array([0.3, 0.9, 0.3, 0.1, 0.9, 0.7])  # a reply scores the same wherever it occurs
    ns = [1, 2, 3, 4]
    got = kl_plugin(samples, scores, ns)
    pool = collections.Counter(samples)
    for n, value in zip(ns, got):
        picks = collections.Counter()
        for draw in itertools.product(range(len(samples)), repeat=n):
            best = max(draw, key=lambda i: scores[i])
            picks[samples[best]] += 1 / len(samples) ** n
        expected = sum(q * math.log(q / (pool[r] / len(samples))) for r, q in picks.items() if q > 0)
        assert value == pytest.approx(expected, abs=1e-12)
    assert got[0] == pytest.approx(0.0, abs=1e-12)  # n = 1 selects as the pool samples


def test_kl_plugin_never_exceeds_the_bound():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.integers(1, 12))
        samples = [str(x) for x in rng.integers(0, size, size)]
        scores = np.array([hash(s) % 7 / 7 for s in samples])  # ties between different replies too
        ns = list(range(1, size + 1))
        assert np.all(kl_plugin(samples, scores, ns) <= kl_bon(np.array(ns)) + 1e-12)


def test_kl_plugin_is_far_below_the_bound_when_replies_repeat():
    """Two equally likely replies, the PM always prefers one: at n = 8 best-of-n picks it unless all eight
    draws are the other, a KL of 0.668 nats, while the closed form gives 1.20."""
    samples = ["good", "bad"] * 4
    scores = np.array([1.0, 0.0] * 4)
    top = 1 - 0.5 ** 8
    assert kl_plugin(samples, scores, [8])[0] == pytest.approx(top * math.log(2 * top)
                                                              + (1 - top) * math.log(2 * (1 - top)))
    assert kl_bon(8) == pytest.approx(1.2044, abs=1e-4)
