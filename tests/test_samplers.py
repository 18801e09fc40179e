"""Samplers: EDM parity, closed-form Gaussian statistics, evaluation counts, jit/eager, sharding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from edm_fixtures import FIXTURES, nchw_to_nhwc, network_from_case
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import Partial

from pdr_jax import samplers, schedules, settings

# ----------------------------------------------------------------------------------------------
# EDM parity (tests/fixtures/edm/sampler_ddpmpp_cond6_gray64.*).


def _sampler_fixture():
    return dict(np.load(FIXTURES / "sampler_ddpmpp_cond6_gray64.npz"))


def test_sigma_steps_match_edm():
    """EDM eq. 5 on the host in float64 equals the sigmas EDM's sampler called the net with."""
    ref = _sampler_fixture()
    for num_steps in (18, 5):
        t_steps = schedules.edm_sigma_steps(num_steps, 0.002, 80.0, 7.0)
        np.testing.assert_allclose(t_steps, ref[f"t_steps_{num_steps}"], rtol=1e-12, atol=0)
        assert t_steps[-1] == 0 and t_steps[0] == 80.0


def _recording_denoise(denoise_fn, record, x, sigma):
    jax.debug.callback(record, sigma, ordered=True)
    return denoise_fn(x, sigma)


def test_heun_matches_edm():
    """5-step Heun on the 64x64 fixture net reproduces EDM's deterministic and churn runs.

    EDM ran in float64 around a float32 net; here everything is float32. Measured max
    |x - x_EDM| (outputs up to |x| ~ 7): det 1.2e-5, churn 2.3e-5, asserted at atol 1e-4 (the
    fixture README's suggestion for sampler outputs). The sampler's own float32 arithmetic is not
    what limits this: with jax x64 (float64 latents and sampler, float32 net) it is 1.1e-5 and
    1.7e-5. The last Euler step to sigma = 0 returns the last D, so the error is that of the
    float32 net evaluated at slightly different inputs.
    The sigmas at which D is called (9 = 2N-1 calls, counted by a debug callback in the jitted
    program) match EDM's call log to float32 precision. Both runs share one compiled program:
    the churn settings are traced schedule values, and EDM's randn_like draws (`churn_noise`)
    enter through the `noise` argument.
    """
    net, variables, _ = network_from_case("ddpmpp_cond6_gray64")
    ref = _sampler_fixture()
    latents = jnp.asarray(nchw_to_nhwc(ref["latents"]))
    noise = jnp.asarray(np.transpose(ref["churn_noise"], (0, 1, 3, 4, 2)), jnp.float32)
    args = samplers.network_sampler_args(net, variables, jnp.asarray(ref["class_labels"]))
    calls = []
    args["denoise_fn"] = Partial(_recording_denoise, args["denoise_fn"], Partial(calls.append))

    runs = {
        "det": {},
        "churn": dict(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003),
    }
    for name, churn in runs.items():
        calls.clear()
        out = samplers.edm_sampler(latents=latents, num_steps=5, noise=noise, **args, **churn)
        jax.effects_barrier()
        err = np.max(np.abs(np.asarray(out, np.float64) - nchw_to_nhwc(ref[f"out_5step_{name}"])))
        print(f"{name}: max |x - x_EDM| = {err:.3g}")
        assert err < 1e-4, name
        sigmas = np.array([float(s) for s in calls])
        assert len(sigmas) == 2 * 5 - 1
        np.testing.assert_allclose(sigmas, ref[f"calls_{name}/sigma"], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Closed form: Gaussian data N(mu, Sigma) on [2, 2, 2] images, whose ideal denoiser is
# D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu).

SHAPE = (2, 2, 2)  # H, W, C: d = 8
NUM_SAMPLES = 16384


def _gaussian():
    """mu [d], Sigma [d, d] with eigenvalues 0.1 .. 1 (image-like scales), and its eigenbasis."""
    d = int(np.prod(SHAPE))
    rng = np.random.default_rng(0)
    eigvals = np.logspace(-1, 0, d)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu = 0.5 * rng.normal(size=d)
    return mu, (basis * eigvals) @ basis.T, eigvals, basis


def _gaussian_denoise(params, x, sigma):
    """Ideal denoiser in the eigenbasis U: mu + U diag(lambda / (lambda + sigma^2)) U^T (x - mu)."""
    mu, eigvals, basis = params
    coords = (x.reshape(x.shape[0], -1) - mu) @ basis
    coords = coords * (eigvals / (eigvals + sigma**2))
    return (mu + coords @ basis.T).reshape(x.shape)


def _gaussian_params():
    mu, _, eigvals, basis = _gaussian()
    return tuple(jnp.asarray(a, jnp.float32) for a in (mu, eigvals, basis))


def gaussian_denoiser():
    return Partial(_gaussian_denoise, _gaussian_params())


def _gaussian_model(params, alpha_bar, x_t, t, *, parameterization):
    """The ideal denoiser as a DDPM-style model: prediction of x_t at (fractional) timestep t."""
    abar = jnp.interp(t, jnp.arange(alpha_bar.shape[0], dtype=jnp.float32), alpha_bar)
    sigma = jnp.sqrt((1 - abar) / abar)
    x = x_t / jnp.sqrt(abar)
    x0 = _gaussian_denoise(params, x, sigma)
    eps = (x - x0) / sigma
    return schedules.training_target(x0, eps, abar, parameterization)


_GAUSSIAN_MODELS = {
    p: lambda *a, p=p: _gaussian_model(*a, parameterization=p) for p in schedules.PARAMETERIZATIONS
}


def gaussian_model(betas, parameterization="eps"):
    alpha_bar = jnp.asarray(schedules.alpha_bars(betas), jnp.float32)
    return Partial(_GAUSSIAN_MODELS[parameterization], _gaussian_params(), alpha_bar)


def gaussian_stats(samples):
    """Whitened statistics: y = L^-1 (x - mu) with Sigma = L L^T should be N(0, I).

    Returns (max_i |mean(y)_i|, max_ij |cov(y) - I|_ij). Standard errors at N = 16384:
    0.008 for the mean, 0.008 (off-diagonal) and 0.011 (diagonal) for the covariance.
    """
    mu, cov, _, _ = _gaussian()
    whiten = np.linalg.inv(np.linalg.cholesky(cov))
    y = (np.asarray(samples, np.float64).reshape(len(samples), -1) - mu) @ whiten.T
    return np.max(np.abs(y.mean(0))), np.max(np.abs(np.cov(y.T) - np.eye(len(mu))))


# Statistical part: 5 standard errors (0.04 for the mean, 0.055 for the covariance). On top, the
# covariance allows for the samplers' discretisation bias at these step counts, which is real
# and not small: on a 1-D Gaussian of variance 0.1 .. 1, 18-step Heun over-disperses the variance
# by 9-13% (float64 recursion; ~3% at 32 steps, second order). Measured max |cov - I|: Heun 0.13,
# DPM-Solver++ 0.12 (0.11 on the v-prediction model), DDIM 0.094, DDPM (100 of 1000 steps) 0.086;
# max |mean| 0.010-0.016. Deliberately broken samplers land at 0.31 and beyond.
MEAN_TOL = 0.05
COV_TOL = 0.2


def assert_matches_gaussian(samples):
    mean_err, cov_err = gaussian_stats(samples)
    assert mean_err < MEAN_TOL and cov_err < COV_TOL, (mean_err, cov_err)
    return mean_err, cov_err


def _latents(batch=NUM_SAMPLES, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, *SHAPE), jnp.float32)


COSINE_1000 = schedules.cosine_betas(1000)


def _sample(name, latents):
    """The samplers of the closed-form test, each at the step count the issue names."""
    key = jax.random.key(7)
    if name == "heun":
        return samplers.edm_sampler(gaussian_denoiser(), latents, num_steps=18)
    if name == "euler":
        return samplers.edm_sampler(gaussian_denoiser(), latents, num_steps=18, solver="euler")
    if name == "dpmpp_2m":
        return samplers.dpmpp_2m_sampler(gaussian_denoiser(), latents, num_steps=20)
    if name == "dpmpp_2m_discrete":
        args = samplers.discrete_sampler_args(gaussian_model(COSINE_1000, "v"), COSINE_1000, "v")
        return samplers.dpmpp_2m_sampler(latents=latents, num_steps=20, **args)
    if name == "ddim":
        return samplers.ddim_sampler(gaussian_model(COSINE_1000), latents, betas=COSINE_1000)
    if name == "ddpm":
        model = gaussian_model(COSINE_1000)
        return samplers.ddpm_sampler(model, latents, key=key, betas=COSINE_1000, num_steps=100)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "dpmpp_2m_discrete", "ddim", "ddpm"])
def test_samples_match_gaussian_data(name):
    """Heun (18 steps), DPM-Solver++ (20; also on a v-prediction DDPM model), DDIM (50) and DDPM
    (100 of T = 1000) with the ideal denoiser reproduce the data's mean and covariance."""
    samples = _sample(name, _latents())
    chex.assert_shape(samples, (NUM_SAMPLES, *SHAPE))
    print(name, assert_matches_gaussian(samples))


def _broken_heun_correction(x_hat, t_hat, t_next, d_cur, d_prime):
    return x_hat + (t_next - t_hat) * (0.5 * d_cur - 0.5 * d_prime)  # sign error


def _broken_dpmpp_2m_schedule(sigmas, original=samplers._dpmpp_2m_schedule):
    schedule = original(sigmas)
    return {**schedule, "half_inv_r": -schedule["half_inv_r"]}  # sign error in the 2nd-order term


def _broken_ddim_update(x_t, x0, eps, z, s):
    return s["sqrt_alpha_bar_prev"] * x0 + s["sigma"] * z  # the direction to x_t is missing


def _broken_ddpm_update(x_t, x0, eps, z, s):
    return s["coef_x0"] * x0 + s["coef_xt"] * x_t  # the posterior noise is missing


@pytest.mark.parametrize(
    "name, patch",
    [
        ("euler", None),  # Heun without its 2nd-order correction
        ("heun", ("_heun_correction", _broken_heun_correction)),
        ("dpmpp_2m", ("_dpmpp_2m_schedule", _broken_dpmpp_2m_schedule)),
        ("ddim", ("_ddim_update", _broken_ddim_update)),
        ("ddpm", ("_ddpm_update", _broken_ddpm_update)),
    ],
)
def test_broken_samplers_fail_the_gaussian_check(name, patch, monkeypatch):
    """The closed-form check catches a wrong step. Measured max |cov - I| (tolerance 0.2): Euler,
    i.e. Heun without its correction, 0.31; Heun with a sign error in the correction 4e4;
    DPM-Solver++ with the 2nd-order term's sign flipped 0.46; DDIM without its direction term
    1.0; DDPM without its posterior noise 1.0."""
    if patch is not None:
        monkeypatch.setattr(samplers, *patch)
    samplers._edm_sample.clear_cache()  # the Heun correction is baked into the compiled program
    try:
        samples = _sample(name, _latents())
    finally:
        samplers._edm_sample.clear_cache()
    print(name, gaussian_stats(samples))
    with pytest.raises(AssertionError):
        assert_matches_gaussian(samples)


# ----------------------------------------------------------------------------------------------
# Evaluation counts, jit vs eager, sharding, trajectories, guidance.


def _counting(fn, counter):
    def counted(*args):
        counter.append(1)
        return fn(*args)

    return counted


@pytest.mark.parametrize("num_steps", [1, 4])
def test_number_of_network_evaluations(num_steps):
    """Heun: 2N-1 (no correction on the last step); Euler and DPM-Solver++: N; DDIM/DDPM: S.
    Counted with a Python counter in an eager (disable_jit) run, where lax.cond runs one branch."""
    latents = _latents(batch=1)
    betas = schedules.linear_betas(20)
    denoise, model = gaussian_denoiser(), gaussian_model(betas)
    key = jax.random.key(0)
    runs = {
        "heun": (
            2 * num_steps - 1,
            lambda f: samplers.edm_sampler(f, latents, num_steps=num_steps),
        ),
        "heun_churn": (
            2 * num_steps - 1,
            lambda f: samplers.edm_sampler(f, latents, key=key, num_steps=num_steps, S_churn=10),
        ),
        "euler": (
            num_steps,
            lambda f: samplers.edm_sampler(f, latents, num_steps=num_steps, solver="euler"),
        ),
        "dpmpp_2m": (
            num_steps,
            lambda f: samplers.dpmpp_2m_sampler(f, latents, num_steps=num_steps),
        ),
        "ddim": (
            num_steps,
            lambda f: samplers.ddim_sampler(f, latents, betas=betas, num_steps=num_steps),
        ),
        "ddpm": (
            num_steps,
            lambda f: samplers.ddpm_sampler(f, latents, key=key, betas=betas, num_steps=num_steps),
        ),
    }
    for name, (expected, run) in runs.items():
        calls = []
        fn = model if name in ("ddim", "ddpm") else denoise
        with jax.disable_jit():
            run(_counting(fn, calls))
        assert len(calls) == expected, name


def _all_samplers(latents, key):
    """Every sampler with randomness switched on where it has any, few steps, tiny batch."""
    betas = schedules.linear_betas(50)
    denoise, model = gaussian_denoiser(), gaussian_model(betas, "x0")
    return {
        "heun_churn": samplers.edm_sampler(
            denoise, latents, key=key, num_steps=6, S_churn=5.0, S_min=0.05, S_max=10.0
        ),
        "euler": samplers.edm_sampler(denoise, latents, num_steps=6, solver="euler"),
        "dpmpp_2m": samplers.dpmpp_2m_sampler(denoise, latents, num_steps=6),
        "ddim_eta": samplers.ddim_sampler(
            model, latents, key=key, betas=betas, num_steps=6, eta=0.5
        ),
        "ddpm": samplers.ddpm_sampler(model, latents, key=key, betas=betas, num_steps=6),
    }


def test_jit_equals_eager():
    """Up to float32 rounding, which the fused program and the op-by-op run do differently.
    Measured max |jit - eager| / (1 + |x|): Heun with churn up to 1.1e-5 over latent seeds 1-40
    (median 7e-6; 1e-5 failed seed 40), the others below 1e-6 (seeds 1-6)."""
    latents, key = _latents(batch=16), jax.random.key(3)
    jitted = _all_samplers(latents, key)
    with jax.disable_jit():
        eager = _all_samplers(latents, key)
    churn = jitted.pop("heun_churn"), eager.pop("heun_churn")
    chex.assert_trees_all_close(*churn, atol=2.5e-5, rtol=2.5e-5)
    chex.assert_trees_all_close(jitted, eager, atol=1e-5, rtol=1e-5)


def test_sharded_equals_unsharded():
    """Latents sharded over a 1-D mesh of the 8 CPU devices: the programs run sharded (the output
    keeps the batch sharding) and give the unsharded samples, noise included."""
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    latents, key = _latents(batch=16), jax.random.key(3)  # as above: reuses its programs
    unsharded = _all_samplers(latents, key)
    sharded = _all_samplers(jax.device_put(latents, sharding), key)
    for name, out in sharded.items():
        assert out.sharding.is_equivalent_to(sharding, out.ndim), name
    chex.assert_trees_all_close(sharded, unsharded, atol=1e-6, rtol=1e-6)


def test_trajectory():
    """return_trajectory gives [S+1, B, H, W, C] (here B = 3): it starts at latents * sigma_max
    (x_T = latents for DDIM) and ends at the sample."""
    betas = schedules.linear_betas(50)
    latents = _latents(batch=3)
    trajectories = {
        "heun": samplers.edm_sampler(
            gaussian_denoiser(), latents, num_steps=4, return_trajectory=True
        ),
        "dpmpp_2m": samplers.dpmpp_2m_sampler(
            gaussian_denoiser(), latents, num_steps=4, return_trajectory=True
        ),
        "ddim": samplers.ddim_sampler(
            gaussian_model(betas), latents, betas=betas, num_steps=4, return_trajectory=True
        ),
    }
    for name, trajectory in trajectories.items():
        chex.assert_shape(trajectory, (5, 3, *SHAPE))
        start = latents if name == "ddim" else latents * 80.0
        np.testing.assert_allclose(trajectory[0], start, rtol=1e-6, err_msg=name)
    sample = samplers.edm_sampler(gaussian_denoiser(), latents, num_steps=4)
    np.testing.assert_allclose(trajectories["heun"][-1], sample, rtol=1e-6, atol=1e-6)


def _guide_to(target, x, denoised, sigma):
    return target - denoised


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "ddim", "ddpm"])
def test_guidance_corrects_every_denoised_estimate(name):
    """A guidance_fn whose correction replaces D by a fixed image makes every sampler land on it
    (each step is exact when D is constant). For DDIM/DDPM the hook sees EDM's scaling:
    sigma_t = sqrt((1 - abar_t) / abar_t) and x = x_t / sqrt(abar_t), checked exactly at the
    first step, where x_t is the latents (not by std(x - D) ~ sigma: at sigma_T = 0.81, x - D is
    not the noise alone, and on 16 values its std / sigma was 0.84-2.0 over latent seeds 1-40)."""
    latents = _latents(batch=2)
    target = jnp.full((2, *SHAPE), 0.25, jnp.float32)
    betas = schedules.linear_betas(50)
    seen = []

    def guidance(target, x, denoised, sigma):
        jax.debug.callback(lambda s, x_: seen.append((float(s), np.asarray(x_))), sigma, x)
        return _guide_to(target, x, denoised, sigma)

    kw = dict(guidance_fn=Partial(guidance, target))
    if name == "heun":
        out = samplers.edm_sampler(gaussian_denoiser(), latents, num_steps=5, **kw)
    elif name == "dpmpp_2m":
        out = samplers.dpmpp_2m_sampler(gaussian_denoiser(), latents, num_steps=5, **kw)
    elif name == "ddim":
        out = samplers.ddim_sampler(gaussian_model(betas), latents, betas=betas, num_steps=5, **kw)
    else:
        key = jax.random.key(0)
        out = samplers.ddpm_sampler(gaussian_model(betas), latents, key=key, betas=betas, **kw)
    jax.effects_barrier()
    np.testing.assert_allclose(out, target, atol=1e-5)
    sigma = np.array([s for s, _ in seen])
    assert len(seen) == {"heun": 9, "dpmpp_2m": 5, "ddim": 5, "ddpm": 50}[name]
    if name in ("ddim", "ddpm"):
        alpha_bar = schedules.alpha_bars(betas)
        steps = schedules.spaced_timesteps(50, len(seen))
        grid = schedules.sigmas_from_alpha_bars(alpha_bar)
        np.testing.assert_allclose(sigma, grid[steps], rtol=1e-5)
        x_first = latents / np.sqrt(alpha_bar[steps[0]])  # x_t is the latents at the first step
        np.testing.assert_allclose(seen[0][1], x_first, rtol=1e-5)


def test_ddpm_equals_ddim_with_eta_one():
    """DDIM's eta = 1 has DDPM's posterior variance and the same mean (Song et al. 2021, Sec. 4.1),
    and both draw step i's noise from fold_in(key, i): the samples coincide (20 of T = 100)."""
    betas = schedules.cosine_betas(100)
    latents, key = _latents(batch=8), jax.random.key(2)
    ddpm = samplers.ddpm_sampler(gaussian_model(betas), latents, key=key, betas=betas, num_steps=20)
    ddim = samplers.ddim_sampler(
        gaussian_model(betas), latents, key=key, betas=betas, num_steps=20, eta=1.0
    )
    np.testing.assert_allclose(ddpm, ddim, atol=2e-5)


def test_parameterisations_give_the_same_samples():
    """The same ideal model predicting eps, x0 or v gives the same DDIM samples."""
    betas = schedules.sqrt_betas(200)
    latents = _latents(batch=8)
    ddim = {
        p: samplers.ddim_sampler(
            gaussian_model(betas, p), latents, betas=betas, num_steps=10, parameterization=p
        )
        for p in schedules.PARAMETERIZATIONS
    }
    np.testing.assert_allclose(ddim["x0"], ddim["eps"], atol=1e-4)
    np.testing.assert_allclose(ddim["v"], ddim["eps"], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Sampler arguments from models.


def test_network_sampler_args_clamp_and_round_like_edm():
    """iDDPM: sigma range clamped to [u_999, u_0] and the steps rounded to the stored u grid."""
    net, variables, arrays = network_from_case("iddpm_adm_rgb32")
    args = samplers.network_sampler_args(net, variables)
    u = arrays["state/u"]
    assert args["sigma_max"] == 80.0
    assert args["sigma_min"] == pytest.approx(float(u[-2]))
    t_steps = schedules.edm_sigma_steps(
        18, args["sigma_min"], args["sigma_max"], 7, args["round_sigma"]
    )
    assert np.all(np.isin(t_steps[:-1].astype(np.float32), u))
    assert t_steps[0] == pytest.approx(u[np.argmin(np.abs(u - 80))])
    edm_args = samplers.network_sampler_args(network_from_case("ddpmpp_cond6_gray64")[0], None)
    assert (edm_args["sigma_min"], edm_args["sigma_max"]) == (0.002, 80.0)


def test_discrete_sampler_args_put_sigma_on_the_grid():
    betas = schedules.linear_betas(1000)
    args = samplers.discrete_sampler_args(gaussian_model(betas), betas)
    grid = schedules.sigmas_from_alpha_bars(schedules.alpha_bars(betas))
    assert args["sigma_min"] == pytest.approx(grid[0]) and args["sigma_max"] == 80.0
    t_steps = schedules.edm_sigma_steps(
        20, args["sigma_min"], args["sigma_max"], 7, args["round_sigma"]
    )
    t = np.asarray(
        schedules.timestep_from_sigma(
            jnp.asarray(t_steps[:-1], jnp.float32), grid.astype(np.float32)
        )
    )
    np.testing.assert_array_equal(t, np.round(t))
    assert t[-1] == 0 and np.all(np.diff(t) <= 0)


def test_argument_errors():
    latents = _latents(batch=1)
    with pytest.raises(ValueError, match="key"):
        samplers.edm_sampler(gaussian_denoiser(), latents, S_churn=1.0)
    with pytest.raises(ValueError, match="solver"):
        samplers.edm_sampler(gaussian_denoiser(), latents, solver="rk4")
    with pytest.raises(ValueError, match="parameterization"):
        samplers.ddim_sampler(
            gaussian_model(COSINE_1000), latents, betas=COSINE_1000, parameterization="score"
        )
    with pytest.raises(ValueError, match="key"):
        samplers.ddim_sampler(gaussian_model(COSINE_1000), latents, betas=COSINE_1000, eta=0.5)


# ----------------------------------------------------------------------------------------------
# One solver vocabulary: samplers.sample by name, the deprecated alias, the network-call count.


def test_sample_runs_each_solver_by_name_and_the_alias_warns():
    latents = _latents(batch=2)
    schedule = dict(num_steps=4, sigma_min=0.01, sigma_max=10.0)
    expected = {
        "heun": samplers.edm_sampler(gaussian_denoiser(), latents, solver="heun", **schedule),
        "euler": samplers.edm_sampler(gaussian_denoiser(), latents, solver="euler", **schedule),
        "dpmpp2m": samplers.dpmpp_2m_sampler(gaussian_denoiser(), latents, **schedule),
    }
    assert tuple(expected) == settings.SOLVERS
    for solver, want in expected.items():
        got = samplers.sample(solver, gaussian_denoiser(), latents, **schedule)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.warns(FutureWarning, match="'dpmpp' is deprecated; use 'dpmpp2m'"):
        old = samplers.sample("dpmpp", gaussian_denoiser(), latents, **schedule)
    np.testing.assert_array_equal(np.asarray(old), np.asarray(expected["dpmpp2m"]))
    with pytest.warns(FutureWarning, match="deprecated"):
        assert settings.SamplerSettings(solver="dpmpp").solver == "dpmpp2m"
    with pytest.raises(ValueError, match="unknown solver"):
        samplers.sample("dpm", gaussian_denoiser(), latents, **schedule)
    with pytest.raises(ValueError, match="S_churn"):
        samplers.sample("dpmpp2m", gaussian_denoiser(), latents, S_churn=1.0, **schedule)
    calls = {name: samplers.network_calls(name, 6) for name in settings.SOLVERS}
    assert (
        calls == {"heun": 11, "euler": 6, "dpmpp2m": 6} and samplers.network_calls("heun", 0) == 0
    )
