"""Conditional restoration model: conditioning image, network, DDPM losses, tiling, model files.

Schedules and the parameterisation conversions themselves are in tests/test_schedules.py; here
are the hand-computed values of what the conditional training adds on top of them.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_prior_kwargs

from pdr_jax import conditional, model_io, schedules
from pdr_jax.precond import init_variables
from pdr_jax.restore import Physics, tiling
from pdr_jax.settings import SOLVERS
from pdr_jax.train import loss as losses


def _make_tiny_model(**overrides):
    # The tiny prior's U-Net (no attention) with a conditional model's schedule.
    kwargs = tiny_prior_kwargs(attn_resolutions=())
    del kwargs["precond"]
    kwargs.update(num_timesteps=100, beta_schedule="linear", parameterization="v")
    kwargs.update(overrides)
    net = conditional.build_conditional(**kwargs)
    return net, kwargs, init_variables(net, jax.random.key(0))


def test_measurement_channels_hand_values():
    # y = 60 e-, s = 100, r = 2, b = 10: y_n = 0.5 -> 0; noise 2 sqrt(50 + 4) / 100.
    y = jnp.array([60.0, 10.0 - 400.0, 1000.0]).reshape(1, 1, 3, 1)
    c = conditional.measurement_channels(y, 100.0, 2.0, 10.0)
    chex.assert_shape(c, (1, 1, 3, 2))
    np.testing.assert_allclose(c[0, 0, :, 0], [0.0, -2.0, 2.0], atol=1e-6)  # clipped to [-0.5, 1.5]
    np.testing.assert_allclose(
        c[0, 0, :, 1], [2 * np.sqrt(54) / 100, 0.04, 2 * np.sqrt(994) / 100], rtol=1e-6
    )
    # Very few photons: the noise level is capped.
    low = conditional.measurement_channels(
        jnp.full((2, 1, 1, 1), 5.0), jnp.array([0.1, 10.0]), 3.0, 0.0
    )
    np.testing.assert_allclose(
        low[:, 0, 0, 1], [conditional.MAX_NOISE_LEVEL, 2 * np.sqrt(14.0) / 10], rtol=1e-6
    )


@pytest.mark.parametrize("arch", ["ddpmpp", "adm"])
def test_denoiser_shapes_and_channels(arch):
    overrides = (
        dict(arch=arch)
        if arch == "ddpmpp"
        else dict(arch=arch, model_channels=8, attn_resolutions=())
    )
    net, _, variables = _make_tiny_model(**overrides)
    assert (net.model.in_channels, net.model.out_channels, net.cond_channels) == (3, 1, 2)
    x = conditional.model_input(jnp.zeros((2, 16, 16, 1)), jnp.ones((2, 16, 16, 2)))
    out = net.apply(variables, x, jnp.array([0, 99]), jnp.zeros((2, 6)))
    chex.assert_shape(out, (2, 16, 16, 1))
    assert out.dtype == jnp.float32


def test_timestep_enters_the_noise_embedding_as_1000_t_over_T():
    """c_noise = 1000 t / T: a model with T = 100 at t = 5 equals one with T = 1000 at t = 50,
    and not t = 5 there. Jittered weights: at EDM's init the output layer is zero and t moved the
    output by 4e-11, below any tolerance (so the check could not fail)."""
    net100, kwargs, variables = _make_tiny_model(num_timesteps=100)
    net1000 = conditional.build_conditional(**{**kwargs, "num_timesteps": 1000})
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    variables = jax.tree_util.tree_unflatten(
        tree, [v + 0.05 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
    )
    x = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
    out100 = net100.apply(variables, x, 5)
    chex.assert_trees_all_close(out100, net1000.apply(variables, x, 50), atol=1e-5)
    assert float(jnp.max(jnp.abs(out100 - net1000.apply(variables, x, 5)))) > 1e-3


@pytest.mark.parametrize("parameterization", schedules.PARAMETERIZATIONS)
def test_ddpm_loss_is_zero_for_the_exact_target_and_converts_to_x0(parameterization):
    """A model that returns the parameterisation's target has zero loss, and its output converts
    back to the clean image and the noise."""
    alpha_bar = jnp.asarray(schedules.alpha_bars(schedules.linear_betas(10)), jnp.float32)
    x0 = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1), minval=-1, maxval=1)
    t = jnp.array([0, 3, 6, 9])
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    abar = alpha_bar[t][:, None, None, None]

    def oracle(x_t, t_):
        return schedules.training_target(
            x0, noise, alpha_bar[t_][:, None, None, None], parameterization
        )

    err = losses.discrete_denoising_error(
        oracle, x0, t, noise, alpha_bar, parameterization=parameterization
    )
    assert float(jnp.max(err)) == 0.0
    x_t = schedules.diffuse(x0, noise, abar)
    x0_hat, eps_hat = schedules.predicted_x0_and_eps(oracle(x_t, t), x_t, abar, parameterization)
    chex.assert_trees_all_close((x0_hat, eps_hat), (x0, noise), atol=2e-5)


def test_targets_hand_values():
    """x0 = 0.5, eps = -1 at abar = 0.64: x_t = 0.8 * 0.5 - 0.6 = -0.2, v = 0.8 * -1 - 0.6 * 0.5 = -1.1."""
    x0, eps, abar = jnp.array(0.5), jnp.array(-1.0), 0.64
    assert float(schedules.diffuse(x0, eps, abar)) == pytest.approx(-0.2, abs=1e-6)
    assert float(schedules.training_target(x0, eps, abar, "v")) == pytest.approx(-1.1, abs=1e-6)
    for p in schedules.PARAMETERIZATIONS:
        x0_hat, eps_hat = schedules.predicted_x0_and_eps(
            schedules.training_target(x0, eps, abar, p), jnp.array(-0.2), abar, p
        )
        assert (float(x0_hat), float(eps_hat)) == pytest.approx((0.5, -1.0), abs=1e-6)
    # Linear schedule, T = 2: betas 1e-4 and 0.02, abar = 0.9999 and 0.9999 * 0.98.
    np.testing.assert_allclose(
        schedules.alpha_bars(schedules.linear_betas(2)), [0.9999, 0.979902], rtol=1e-12
    )


def test_distances_hand_values():
    err = jnp.array([-3.0, -0.5, 0.0, 2.0])
    np.testing.assert_allclose(losses.DISTANCES["l2"](err), [9.0, 0.25, 0.0, 4.0])
    np.testing.assert_allclose(losses.DISTANCES["l1"](err), [3.0, 0.5, 0.0, 2.0])
    # Huber (delta 1) x 2: err^2 inside, 2|err| - 1 outside.
    np.testing.assert_allclose(losses.DISTANCES["huber"](err), [5.0, 0.25, 0.0, 3.0])


def test_ddpm_loss_draws_and_jit():
    alpha_bar = jnp.asarray(schedules.alpha_bars(schedules.cosine_betas(50)), jnp.float32)
    x0 = jnp.zeros((8, 16, 16, 1))
    zero_model = lambda x_t, t: jnp.zeros_like(x_t)
    loss = lambda key: losses.ddpm_loss(
        zero_model, key, x0, alpha_bar=alpha_bar, parameterization="eps"
    )
    out = loss(jax.random.key(0))
    chex.assert_shape(out, x0.shape)
    chex.assert_trees_all_close(out, jax.jit(loss)(jax.random.key(0)))
    # With x0 = 0 and a zero model, the eps loss is eps^2: mean 1, sd sqrt(2 / 2048) = 0.03
    # (keys 0-999: 0.91-1.09).
    assert 0.8 < float(jnp.mean(out)) < 1.2


def test_tiled_denoiser_cuts_the_conditioning_image_at_the_same_origins():
    """A tile function that returns its conditioning tile rebuilds the padded conditioning image."""
    plan = tiling.plan_tiles(20, 28, tile=16, overlap=4)
    cond = tiling.pad(jax.random.normal(jax.random.key(0), (1, 20, 28, 1)), plan)
    fn = tiling.tiled_denoiser(
        lambda tiles, t, cond_tiles: cond_tiles + 0 * tiles, plan, batch=3, cond_image=cond
    )
    out = fn(jnp.zeros_like(cond), jnp.array(7))
    chex.assert_trees_all_close(out, cond, atol=1e-5)
    # Without a conditioning image the tiled denoiser is unchanged.
    same = tiling.tiled_denoiser(lambda tiles, t: tiles * 2, plan, batch=3)(cond, jnp.array(1.0))
    chex.assert_trees_all_close(same, 2 * cond, atol=1e-5)


def test_the_conditional_model_denoises_in_sigma_space_with_the_measurement():
    """ConditionalModel's denoiser at sigma is the x0 its discrete model predicts at the grid
    timestep of sigma, fed x_t = x / sqrt(1 + sigma^2) and the measurement's channels."""
    net, _, variables = _make_tiny_model()
    model, physics = (
        conditional.ConditionalModel(net, variables),
        Physics(100.0, 2.0, 1.0, "microscopy"),
    )
    y = 100 * jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    cond = model.conditioning_image(y, physics)
    chex.assert_trees_all_close(cond, conditional.measurement_channels(y, 100.0, 2.0, 1.0))
    args = model.sampler_args(physics, 2)
    grid = schedules.sigmas_from_alpha_bars(schedules.alpha_bars(net.betas()))
    t = 37
    sigma = float(grid[t])
    assert args["round_sigma"](jnp.float32(sigma * 1.01)) == pytest.approx(grid[t], rel=1e-5)
    x = jax.random.normal(jax.random.key(2), y.shape)
    x_t = x / np.sqrt(1 + sigma**2)
    prediction = net.apply(
        variables, conditional.model_input(x_t, cond), jnp.float32(t), physics.labels(2)
    )
    x0, _ = schedules.predicted_x0_and_eps(prediction, x_t, 1 / (1 + sigma**2), "v")
    chex.assert_trees_all_close(args["denoise_fn"](x, jnp.float32(sigma), cond), x0, atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_restore_runs_the_conditional_model_with_every_solver(solver):
    """pdr_jax.restore.restore with CONDITIONAL_SETTINGS: whole images, K = 2 samples and their
    std; the one-call start is refused (the model needs no estimate to start from)."""
    from pdr_jax.restore import CONDITIONAL_SETTINGS, SamplerSettings, restore

    net, _, variables = _make_tiny_model()
    model, physics = (
        conditional.ConditionalModel(net, variables),
        Physics(100.0, 2.0, 0.0, "microscopy"),
    )
    y = np.asarray(100 * jax.random.uniform(jax.random.key(0), (2, 16, 16, 1)))
    sampler = SamplerSettings(start="noise", solver=solver, num_steps=3)
    result = restore(
        model,
        y,
        physics=physics,
        guidance=CONDITIONAL_SETTINGS["guidance"],
        sampler=sampler,
        tiling_settings=None,
        num_samples=2,
        key=jax.random.key(1),
    )
    chex.assert_shape([result.image, result.std], y.shape)
    assert (
        float(result.image.min()) >= 0
        and float(result.image.max()) <= 1
        and float(result.std.max()) > 0
    )
    with pytest.raises(ValueError, match="starts from noise"):
        restore(model, y, physics=physics, tiling_settings=None)


def test_model_dir_round_trip_and_tiled_restoration(tmp_path):
    from pdr_jax.restore import CONDITIONAL_SETTINGS, TilingSettings, restore

    _, kwargs, variables = _make_tiny_model()
    model_io.save_model(tmp_path / "m", kwargs, variables, kind="conditional")
    assert model_io.read_network_json(tmp_path / "m")["kind"] == "conditional"
    loaded, restored = model_io.load_model(tmp_path / "m")
    assert isinstance(loaded, conditional.ConditionalDenoiser) and loaded.parameterization == "v"
    chex.assert_trees_all_close(restored, jax.device_get(variables))
    model, physics = (
        conditional.ConditionalModel(loaded, restored),
        Physics(100.0, 2.0, 0.0, "microscopy"),
    )
    # An image larger than the tile (and not square): several tiles, conditioned tile by tile.
    y = np.random.default_rng(0).poisson(50.0, (20, 30)).astype(np.float32)
    sampler = dataclasses.replace(CONDITIONAL_SETTINGS["sampler"], num_steps=3)
    tiled = restore(
        model,
        y,
        physics=physics,
        guidance=CONDITIONAL_SETTINGS["guidance"],
        sampler=sampler,
        tiling_settings=TilingSettings(tile=16, overlap=4, batch=4),
    )
    assert tiled.image.shape == y.shape and tiled.report["num_tiles"] == 2 * 3
    assert np.isfinite(tiled.report["chi_square"])
    # A plan of one tile is the whole image: the same result as no tiling.
    square = y[:16, :16]
    kwargs = dict(physics=physics, guidance=CONDITIONAL_SETTINGS["guidance"], sampler=sampler)
    one = restore(model, square, tiling_settings=TilingSettings(tile=16, overlap=4), **kwargs)
    whole = restore(model, square, tiling_settings=None, **kwargs)
    assert one.report["num_tiles"] == 1
    np.testing.assert_allclose(one.image, whole.image, atol=1e-5)


def test_a_prior_model_dir_is_still_a_prior(tmp_path):
    from pdr_jax.precond import build_network

    kwargs = dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=16,
        img_channels=1,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
    )
    net = build_network(**kwargs)
    model_io.save_model(tmp_path / "p", kwargs, init_variables(net, jax.random.key(0)))
    assert "kind" not in model_io.read_network_json(tmp_path / "p")
    with pytest.raises(ValueError, match="kind"):
        model_io.save_model(
            tmp_path / "q", kwargs, init_variables(net, jax.random.key(0)), kind="other"
        )


def test_restore_tool_method_conditional(tmp_path):
    """tools/restore.py --method conditional on an odd-sized image; a prior flag on it is refused."""

    import tifffile

    from pdr_jax.cli import restore as restore_tool

    _, kwargs, variables = _make_tiny_model()
    model_io.save_model(tmp_path / "m", kwargs, variables, kind="conditional")
    y = np.random.default_rng(0).poisson(20.0, (19, 27)).astype(np.float32)
    np.save(tmp_path / "y.npy", y)
    common = [
        "--checkpoint",
        str(tmp_path / "m"),
        "--domain",
        "microscopy",
        "--scale",
        "20",
        "--read-noise",
        "2",
        "--steps",
        "2",
        "--tile",
        "16",
        "--overlap",
        "4",
        "--batch",
        "4",
    ]
    # The solver's old spelling (now dpmpp2m) still works, with a warning.
    with pytest.warns(FutureWarning, match="'dpmpp' is deprecated; use 'dpmpp2m'"):
        code = restore_tool.main(
            [
                str(tmp_path / "y.npy"),
                "--output",
                str(tmp_path / "x.tif"),
                "--method",
                "conditional",
                "--solver",
                "dpmpp",
                *common,
            ]
        )
    assert code == 0
    x = tifffile.imread(tmp_path / "x.tif")
    assert x.shape == y.shape and np.all((x >= 0) & (x <= 1))
    with pytest.raises(SystemExit, match="--method conditional"):
        restore_tool.main([str(tmp_path / "y.npy"), "--output", str(tmp_path / "z.tif"), *common])


def test_evaluation_method_loads_the_shipped_conditional_model(tmp_path):
    """tools/evaluate.py's "conditional": the committed default model, or --conditional-checkpoint
    (a prior there is skipped with its reason); --checkpoint is the prior's and leaves it alone."""
    from pdr_jax.evaluation import methods
    from pdr_jax.precond import build_network

    assert callable(methods.conditional_method(methods.MethodOptions()).restore)
    kwargs = dict(
        precond="edm",
        arch="ddpmpp",
        img_resolution=16,
        img_channels=1,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(),
    )
    model_io.save_model(
        tmp_path / "p", kwargs, init_variables(build_network(**kwargs), jax.random.key(0))
    )
    with pytest.raises(
        methods.MethodUnavailable, match="--conditional-checkpoint .* is a prior model"
    ):
        methods.conditional_method(
            methods.MethodOptions(conditional_checkpoint=str(tmp_path / "p"))
        )
    both = methods.MethodOptions(checkpoint=str(tmp_path / "p"))
    assert methods.conditional_checkpoint_dir(both) == str(methods.DEFAULT_CONDITIONAL)
    assert methods.checkpoint_dir(both) == str(tmp_path / "p")
