"""The L-BFGS probe: it reaches the optimum of its objective (gradient norm
below the tolerance), that objective is scikit-learn's multinomial logistic
regression, and the Trainer exports a head that sits at that optimum."""
import numpy as np
import pytest
from scipy.optimize import check_grad

from tfx_transfer.modules import probe_solver as ps


def features(n=240, d=24, k=4, seed=0, signal=0.7):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % k
    centres = rng.randn(k, d) * signal
    # Post-ReLU-like features with different scales per unit and a dead unit.
    x = np.maximum(0, rng.randn(n, d) + centres[y]) * rng.uniform(0.1, 5, d)
    x[:, 0] = 0
    return x.astype(np.float32), y


def test_objective_gradient_matches_finite_differences():
    x, y = features(n=40, d=6, k=3)
    t = ps._targets(y, 3, 0.1)
    x64 = x.astype(np.float64)
    p0 = np.random.RandomState(1).randn(6 * 3 + 3) * 0.1
    err = check_grad(lambda p: ps.objective(p, x64, t, 0.01)[0],
                     lambda p: ps.objective(p, x64, t, 0.01)[1], p0)
    assert err < 1e-5


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_fit_converges_to_scikit_learns_optimum(l2):
    from sklearn.linear_model import LogisticRegression

    x, y = features()
    mean, std = ps.standardiser(x)
    z = ((x - mean) / std).astype(np.float32)
    f = ps.fit(z, y, 4, l2)
    assert f.converged and f.grad_norm <= ps.TOLERANCE
    # Recompute the gradient at the returned point, independently of the solver's bookkeeping.
    _, grad = ps.objective(np.concatenate([f.weights.ravel(), f.bias]), z.astype(np.float64),
                           ps._targets(y, 4, 0.0), l2)
    assert np.abs(grad).max() <= ps.TOLERANCE
    # scikit-learn: C * sum of losses + |W|^2 / 2, the same problem scaled by 1 / (C n).
    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(z, y)
    ours_loss = ps.objective(np.concatenate([f.weights.ravel(), f.bias]), z.astype(np.float64),
                             ps._targets(y, 4, 0.0), l2)[0]
    ref_loss = ps.objective(np.concatenate([ref.coef_.T.ravel(), ref.intercept_]),
                            z.astype(np.float64), ps._targets(y, 4, 0.0), l2)[0]
    # Strong convexity bounds the gap to the optimum by |gradient|^2 / (2 l2).
    assert ref_loss - 1e-9 <= ours_loss <= ref_loss + grad.size * ps.TOLERANCE ** 2 / (2 * l2)
    # |W - W*| <= |gradient| / l2 (the objective is l2-strongly convex).
    np.testing.assert_allclose(f.weights, ref.coef_.T, atol=1e-2 * np.abs(ref.coef_).max())


def test_solve_folds_the_standardisation_into_raw_feature_weights():
    x, y = features()
    r = ps.solve(x, y, 4, l2=1e-2)
    assert r["converged"] and r["grad_norm"] <= ps.TOLERANCE and r["l2_grid"] == []
    mean, std = ps.standardiser(x)
    z = ((x - mean) / std).astype(np.float32)
    f = ps.fit(z, y, 4, 1e-2)
    np.testing.assert_allclose(x @ r["kernel"] + r["bias"], z @ f.weights + f.bias,
                               rtol=1e-3, atol=1e-3)
    assert np.isfinite(r["kernel"]).all()  # the dead unit (std 0) did not divide by zero


def test_penalty_is_chosen_by_held_out_accuracy():
    x, y = features(n=120, d=200, k=4, signal=0.25)  # few examples, many features: overfits
    r = ps.solve(x, y, 4, grid=(1e-4, 1e-2, 1.0), seed=3)
    table = r["l2_grid"]
    assert [row["l2"] for row in table] == [1.0, 1e-2, 1e-4]
    best = max(row["heldout_accuracy"] for row in table)
    chosen = [row for row in table if row["l2"] == r["l2"]][0]
    assert chosen["heldout_accuracy"] == best
    assert r["converged"]


def test_folds_are_stratified_and_partition_the_data():
    y = np.array([0] * 10 + [1] * 7 + [2] * 2)
    parts = ps.folds(y, 3, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    for p in parts:
        assert 3 <= (y[p] == 0).sum() <= 4 and 2 <= (y[p] == 1).sum() <= 3
    assert [p.tolist() for p in parts] == [p.tolist() for p in ps.folds(y, 3, seed=0)]


# --------------------------------------------------------------------------
# In the Trainer: cached features -> solved head -> the exported Keras model.
def _train(tmp_path, **kw):
    import tf_keras as keras

    from tfx_transfer.modules import trainer
    from test_trainer import CLASSES, cfg, data

    keras.utils.set_random_seed(1)
    seen = {}
    real = trainer.build_model

    def build(c, n, w):
        seen["parts"] = real(c, n, w)
        return seen["parts"]

    trainer.build_model = build
    try:
        model, report = trainer.train(cfg(**kw), data(), data(), CLASSES, str(tmp_path))
    finally:
        trainer.build_model = real
    return model, report, seen["parts"], data, CLASSES


def test_trainer_exports_the_head_at_the_optimum(tmp_path):
    import tf_keras as keras

    model, report, (_, backbone, head), data, k = _train(tmp_path, probe_solver="lbfgs")
    probe = [p for p in report["phases"] if p["phase"] == "probe"][0]
    assert probe["solver"] == "lbfgs" and probe["converged"]
    assert report["probe_solver"]["l2"] in ps.L2_GRID
    assert report["final_val_accuracy"] == probe["history"]["val_accuracy"][-1]
    # The gradient of the objective at the exported head's weights, in
    # standardised coordinates, recomputed from the images.
    pool = keras.Model(model.input, model.get_layer("pool").output)
    xs, ys = zip(*[(pool(x, training=False).numpy(), y.numpy().argmax(1)) for x, y in data()])
    x, y = np.concatenate(xs), np.concatenate(ys)
    mean, std = ps.standardiser(x)
    kernel, bias = head.get_layer("probabilities").get_weights()
    w = kernel * std[:, None]
    b = bias + mean @ kernel
    _, grad = ps.objective(np.concatenate([w.ravel(), b]), (x - mean) / std,
                           ps._targets(y, k, 0.0), report["probe_solver"]["l2"])
    assert np.abs(grad).max() <= 10 * ps.TOLERANCE  # float32 round trip through Keras
    # The exported model predicts what the solved linear model predicts.
    images = np.concatenate([x_ for x_, _ in data()])
    np.testing.assert_allclose(model.predict(images, verbose=0).argmax(1),
                               (x @ kernel + bias).argmax(1))


def test_hidden_layer_or_sgd_trains_by_epochs(tmp_path):
    for kw in (dict(probe_solver="sgd"), dict(probe_solver="lbfgs", hidden_units=8)):
        _, report, *_ = _train(tmp_path / kw["probe_solver"], **kw)
        probe = [p for p in report["phases"] if p["phase"] == "probe"][0]
        assert "solver" not in probe and probe["epochs"] == 2 and "probe_solver" not in report


def test_lp_ft_fine_tunes_from_the_solved_head(tmp_path):
    _, report, *_ = _train(tmp_path, mode="lp_ft", probe_solver="lbfgs", probe_l2=1e-2)
    phases = [p["phase"] for p in report["phases"]]
    assert phases == ["feature_extraction", "probe", "fine_tune"]
    assert report["phases"][1]["l2"] == 1e-2 and report["phases"][1]["l2_grid"] == []


def test_config_names_bad_solver_values():
    from tfx_transfer.pipeline.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="probe_solver"):
        RunConfig.from_dict(dict(data="x", probe_solver="newton"))
    with pytest.raises(ConfigError, match="probe_l2"):
        RunConfig.from_dict(dict(data="x", probe_l2=-1))
    c = RunConfig.from_dict(dict(data="x", probe_l2=1))
    assert c.training.probe_l2 == 1.0 and \
        c.module.to_custom_config()["training"]["probe_solver"] == "lbfgs"


@pytest.mark.e2e
def test_pipeline_summary_reports_the_solver(tiny_run):
    """The default config solves the probe with L-BFGS; the summary says how."""
    config, summary = tiny_run
    assert config.training.probe_solver == "lbfgs"
    solver = summary["training"]["probe_solver"]
    assert solver["solver"] == "lbfgs" and solver["converged"]
    assert solver["grad_norm"] <= ps.TOLERANCE and solver["l2"] in ps.L2_GRID
    assert solver["seconds"] > 0
    probe = [p for p in summary["training"]["phases"] if p["phase"] == "probe"][0]
    assert len(probe["l2_grid"]) == len(ps.L2_GRID)


def test_penalty_chosen_on_a_subsample_is_rescaled_per_example(monkeypatch):
    # Above LARGE examples the grid runs on a subsample of LARGE (80 % of it
    # fit): the penalty per example carries over, so l2 shrinks by 0.8 LARGE / n.
    monkeypatch.setattr(ps, "LARGE", 100)
    x, y = features(n=400, d=12)
    r = ps.solve(x, y, 4, grid=(1e-3, 1e-1), seed=0)
    ratios = [r["l2"] / row["l2"] for row in r["l2_grid"]]
    assert pytest.approx(0.8 * 100 / 400) in ratios
    assert r["converged"]
