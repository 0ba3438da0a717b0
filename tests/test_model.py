"""The K-SSM contract (docs/model.md): real recurrence, R as the only context path, stateful decoding,
forcing R, numerics, presets and comparison models."""

import json

import mlx_kssm  # noqa: F401  (before mlx: loads OpenBLAS)

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_kssm import ModelArgs, build_model
from mlx_kssm.kernels import reference
from mlx_kssm.models import preset_args, preset_names
from mlx_kssm.models.bistable import bound_u

from _fit import fit

V = 50


def tokens(seed, shape=(2, 12)):
    return mx.random.randint(0, V, shape, key=mx.random.key(seed))


def with_first_token_changed(x):
    return mx.concatenate([(x[:, :1] + 7) % V, x[:, 1:]], axis=1)


@pytest.fixture(scope="module")
def kssm():
    return build_model("tiny", vocab_size=V, seed=0)


DESIGN_1 = {"design": 1, "rotation": "input", "gate": False, "squash": "exp"}


@pytest.fixture(scope="module", params=[2, 1], ids=["design2", "design1"])
def kssm_any(request):
    """The tiny K-SSM in the current design and in design 1 (mlx-kssm 0.1's)."""
    return build_model("tiny", vocab_size=V, seed=0, **({} if request.param == 2 else DESIGN_1))


def test_recurrence_carries_token0_forward_kssm_but_not_upstream(kssm):
    x = tokens(1)
    x2 = with_first_token_changed(x)
    diff = mx.abs(kssm(x) - kssm(x2))[:, 1:].max().item()
    assert diff > 1e-3, "K-SSM output at t > 0 must depend on token 0"
    upstream = build_model("upstream-v3-tiny", vocab_size=V, seed=0)
    assert mx.abs(upstream(x) - upstream(x2))[:, 1:].max().item() == 0.0


def test_order_parameters_are_the_only_context_path(kssm_any):
    """Zeroing the order-parameter features makes every prediction a function of the current
    token alone. In design 2 this also covers the output gate: it is computed from the current
    layer input only, so with the features zeroed, earlier tokens still change nothing."""
    kssm = kssm_any
    x = tokens(2)
    x2 = with_first_token_changed(x)
    try:
        for layer in kssm.layers:
            layer.bank.ablate_readout = True
        ablated = mx.abs(kssm(x) - kssm(x2))[:, 1:].max().item()
    finally:
        for layer in kssm.layers:
            layer.bank.ablate_readout = False
    assert ablated == 0.0, "with the features zeroed, nothing of tokens < t may reach t"
    assert mx.abs(kssm(x) - kssm(x2))[:, 1:].max().item() > 1e-3  # and the switch is off again


def test_gate_depends_on_the_current_input_only():
    """The gate of design 2, on its own: changing earlier tokens leaves the gate at t alone."""
    bank = build_model("tiny", vocab_size=V, seed=0).layers[0].bank
    x = mx.random.normal((2, 9, bank.args.d_model), key=mx.random.key(3))
    x2 = mx.concatenate([x[:, :1] + 1.0, x[:, 1:]], axis=1)
    _, gate, _ = bank._inputs(x)
    _, gate2, _ = bank._inputs(x2)
    assert mx.abs(gate - gate2)[:, 1:].max().item() == 0.0
    assert mx.abs(gate - gate2)[:, 0].max().item() > 0.0


@pytest.mark.parametrize("name", ["kssm", "v3"])
def test_folder_saved_by_v010_loads_as_design_1_with_the_same_outputs(name):
    """A model folder written by mlx-kssm 0.1.0 (no "design" in config.json) still loads, as
    design 1, and gives the logits, R and forced logits 0.1.0 computed for it."""
    import os
    from mlx_kssm import load
    folder = os.path.join(os.path.dirname(__file__), "fixtures", "model_v010", name)
    expected = json.load(open(os.path.join(folder, "expected.json")))
    model, _ = load(folder)
    assert model.args.design == 1 and model.args.rotation == "input" and not model.args.gate
    x = mx.array(expected["inputs"])
    logits, r = model(x, return_r=True)
    assert np.abs(np.array(logits) - np.array(expected["logits"])).max() < 1e-5
    assert np.abs(np.array(r) - np.array(expected["r"])).max() < 1e-5
    forced = model(x, force_r=0.4)
    assert np.abs(np.array(forced) - np.array(expected["logits_forced_0.4"])).max() < 1e-5


def test_unknown_design_is_one_clear_error(tmp_path):
    from mlx_kssm import load, save_model
    from mlx_kssm.io import ModelLoadError
    save_model(tmp_path / "m", build_model("tiny", vocab_size=V, seed=0))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["design"] == 2
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "design": 99}))
    with pytest.raises(ModelLoadError, match="design 99 is unknown.*upgrade"):
        load(tmp_path / "m")


DECODE_CASES = [(preset, force_r) for preset in ("tiny", "tiny-design1", "v3", "transformer-tiny",
                                                 "upstream-v3-tiny", "control-bolted-tiny")
                for force_r in (None, 0.3)
                if not (preset == "transformer-tiny" and force_r is not None)]  # no R to force


@pytest.mark.parametrize("preset, force_r", DECODE_CASES)
def test_decode_with_cache_equals_full_forward(preset, force_r):
    overrides = {"d_model": 64, "n_layers": 2, "osc_per_group": 4} if preset == "v3" else {}
    if preset == "tiny-design1":
        preset, overrides = "tiny", DESIGN_1
    model = build_model(preset, vocab_size=V, seed=3, **overrides)
    x = tokens(3, (2, 10))
    full = model(x, force_r=force_r)
    cache = model.make_cache()
    prefix = model(x[:, :4], cache=cache, force_r=force_r)  # prompt in one call, then tokens
    steps = [model(x[:, t:t + 1], cache=cache, force_r=force_r) for t in range(4, 10)]
    stepped = mx.concatenate([prefix] + steps, axis=1)
    assert mx.abs(stepped - full).max().item() <= 1e-4


def test_forced_r_is_reported_exactly_and_changes_logits(kssm):
    x = tokens(4)
    before = {k: np.array(v) for k, v in tree_flatten(kssm.parameters())}
    logits_a, r_a = kssm(x, force_r=0.25, return_r=True)
    logits_b, r_b = kssm(x, force_r=0.75, return_r=True)
    assert mx.abs(r_a - 0.25).max().item() <= 1e-6
    assert mx.abs(r_b - 0.75).max().item() <= 1e-6
    assert mx.abs(logits_a - logits_b).max().item() > 1e-3
    after = dict(tree_flatten(kssm.parameters()))
    assert all(np.array_equal(before[k], np.array(after[k])) for k in before), "forcing changed weights"


def test_forcing_propagates_through_time_via_the_coupling(kssm):
    """Force only position 0's dynamics: run a free prefix vs a forced prefix, then continue
    free; later free tokens still differ because the forced state was carried forward."""
    x = tokens(5, (1, 8))
    free_cache, forced_cache = kssm.make_cache(), kssm.make_cache()
    kssm(x[:, :4], cache=free_cache)
    kssm(x[:, :4], cache=forced_cache, force_r=0.9)
    later_free = kssm(x[:, 4:], cache=free_cache)
    later_after_forcing = kssm(x[:, 4:], cache=forced_cache)
    assert mx.abs(later_free - later_after_forcing).max().item() > 1e-4


def test_force_r_per_layer(kssm):
    x = tokens(6)
    _, r = kssm(x, force_r={1: 0.6}, return_r=True)
    assert mx.abs(r[..., 1] - 0.6).max().item() <= 1e-6
    assert mx.abs(r[..., 0] - 0.6).max().item() > 1e-3  # layer 0 runs free
    with pytest.raises(ValueError):
        kssm(x, force_r={5: 0.5})
    with pytest.raises(ValueError):
        kssm(x, force_r=1.5)


def test_r_zone_counts_a_value_within_1e6_below_a_bound_as_above_it():
    """A forced 0.3 comes back as 0.29999998 in float32: every place that names zones (the
    generate trace, evaluate's statistics, the trainer's report lines) calls r_zone, which
    names it by the zone starting at 0.3, as docs/model.md states."""
    from mlx_kssm.models import ZONE_TABLES, r_zone
    from mlx_kssm.probe.causality import r_statistics

    assert r_zone(0.29999998) == r_zone(0.3) == "⚖ Balance"
    assert r_zone(0.29999998, "v2") == "✨ Unbound"
    for name, table in ZONE_TABLES.items():
        for lower, label in table[1:]:
            assert r_zone(lower - 5e-7, name) == label
            assert r_zone(lower - 1e-4, name) != label  # the tolerance is float rounding, no more
    stats = r_statistics(np.full((2, 3, 2), 0.29999998))
    assert stats["zone"] == "⚖ Balance" and stats["zone_occupancy"]["⚖ Balance"] == 1.0
    assert stats["zone_occupancy_by_table"]["v2"]["✨ Unbound"] == 1.0


# R -> zone at and around every bound of both tables (docs/model.md, "R zones")
V3_ZONES = [(0.0, "∅ Unformed"), (0.0999, "∅ Unformed"), (0.10, "☾ Intimacy"),
            (0.2999, "☾ Intimacy"), (0.30, "⚖ Balance"), (0.4999, "⚖ Balance"),
            (0.50, "🌀 Mystery"), (0.6999, "🌀 Mystery"), (0.70, "✨ Wonder"),
            (0.8499, "✨ Wonder"), (0.85, "🔥 Passion"), (0.9499, "🔥 Passion"),
            (0.95, "🜂 Ache"), (1.0, "🜂 Ache")]
V2_ZONES = [(0.0999, "∅ Unformed"), (0.10, "☾ Intimacy"), (0.30, "✨ Unbound"),
            (0.4999, "✨ Unbound"), (0.50, "🌀 Goldilocks"), (0.7999, "🌀 Goldilocks"),
            (0.80, "⚖ Balance"), (0.9499, "⚖ Balance"), (0.95, "☍ Over-sync")]


@pytest.mark.parametrize("table, cases", [("v3", V3_ZONES), ("v2", V2_ZONES)])
def test_zone_boundaries_of_both_tables(table, cases):
    from mlx_kssm.models import r_zone
    assert [r_zone(r, table) for r, _ in cases] == [label for _, label in cases]
    if table == "v3":  # the default
        assert [r_zone(r) for r, _ in cases] == [label for _, label in cases]


def test_goldilocks_is_r_at_least_0_3_and_an_unknown_table_is_refused():
    from mlx_kssm.models import GOLDILOCKS_R, r_zone
    from mlx_kssm.train.health import GOLDILOCKS
    assert GOLDILOCKS_R == GOLDILOCKS[0] == 0.30
    assert r_zone(GOLDILOCKS_R) == "⚖ Balance"  # where the stage 5 gate turns healthy
    with pytest.raises(ValueError, match="unknown zone table 'v9'"):
        r_zone(0.5, "v9")


def test_layer_gradient_matches_finite_differences():
    """d loss / d (one weight) of a 1-layer model in float32 vs central differences."""
    model = build_model("tiny", vocab_size=V, seed=7, n_layers=1, n_groups=2, osc_per_group=3,
                        d_model=16, ffn_hidden=16)
    x = tokens(7, (1, 6))
    y = tokens(8, (1, 6))

    def loss(m):
        return nn.losses.cross_entropy(m(x), y).mean()

    grads = dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1]))
    for name in ("layers.0.bank.in_proj.weight", "layers.0.bank.dt_raw", "layers.0.bank.z0"):
        param = dict(tree_flatten(model.parameters()))[name]
        flat = np.array(param).reshape(-1)
        idx = int(np.argmax(np.abs(np.array(grads[name]).reshape(-1))))
        eps = 1e-2
        values = []
        for sign in (1, -1):
            bumped = flat.copy()
            bumped[idx] += sign * eps
            model.update(_set(name, mx.array(bumped.reshape(param.shape))))
            values.append(loss(model).item())
        model.update(_set(name, param))
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = np.array(grads[name]).reshape(-1)[idx]
        assert abs(numeric - analytic) <= 2e-2 * max(1.0, abs(analytic)), (name, numeric, analytic)


def _set(name, value):
    from mlx.utils import tree_unflatten
    return tree_unflatten([(name, value)])


@pytest.mark.slow
def test_long_sequence_stays_bounded_and_gradients_finite():
    model = build_model("tiny", vocab_size=V, seed=9)
    x = mx.random.randint(0, V, (1, 4096), key=mx.random.key(9))
    logits, r = model(x, return_r=True)
    assert np.isfinite(np.array(logits)).all() and np.isfinite(np.array(r)).all()
    # Gradient through 512 steps: the transition has spectral norm < 1 (reference.py), so
    # the adjoint cannot blow up; check it is finite and nonzero for the earliest token.
    x = mx.random.randint(0, V, (1, 512), key=mx.random.key(10))

    def last_logit(emb_table):
        model.embed.weight = emb_table
        return model(x)[0, -1].sum()

    g = mx.grad(last_logit)(model.embed.weight)
    g0 = np.array(g)[int(x[0, 0].item())]
    assert np.isfinite(np.array(g)).all()
    assert np.abs(g0).max() > 0.0


def test_transition_is_a_contraction_for_any_coupling_in_0_2():
    """Per group, ||z_t - c_t|| <= max_j lambda_tj * ||z_{t-1}|| for K anywhere in [0, 2]
    (reference.py's argument): checked step by step on adversarial inputs, and the check
    fails for an expansive coupling (K = 3), so it can tell the difference."""
    rng = np.random.default_rng(0)
    B, T, G, n = 2, 200, 3, 5
    lam = rng.uniform(0.0, 0.98, (B, T, G, n))
    alpha = rng.uniform(-np.pi, np.pi, (B, T, G, n))
    c = (1 - lam) * np.exp(1j * rng.uniform(-np.pi, np.pi, (B, T, G, n)))

    def worst_ratio(k_high):
        k = rng.uniform(0.0, k_high, (B, T, G, 1))
        args = [mx.array(a.astype(np.float32)) for a in
                (lam * np.cos(alpha), lam * np.sin(alpha), k, c.real, c.imag)]
        z0 = [mx.ones((B, G, n)), mx.zeros((B, G, n))]
        zr, zi = reference.scan_sequential(*args, *z0)
        z = np.array(zr) + 1j * np.array(zi)
        prev = np.concatenate([np.ones((B, 1, G, n)), z[:, :-1]], axis=1)
        lhs = np.linalg.norm(z - c, axis=-1)
        rhs = lam.max(axis=-1) * np.linalg.norm(prev, axis=-1)
        return (lhs / rhs).max()

    assert worst_ratio(2.0) <= 1 + 1e-4
    assert worst_ratio(3.0) > 1.01


def test_v3_bound_passes_gradient_and_reports_fraction_at_bound():
    u_raw = mx.array([-3.0, 0.05, 1.0, 5.0, 20.0])
    soft = bound_u(u_raw, "soft")
    assert (np.array(soft) >= 0.1 - 1e-6).all() and (np.array(soft) <= 10 + 1e-6).all()
    assert abs(soft[2].item() - 1.0) < 1e-3, "the soft bound is the identity well inside"
    g_soft = np.array(mx.grad(lambda u: bound_u(u, "soft").sum())(u_raw))
    assert (g_soft > 0).all(), "the soft bound must pass gradient everywhere"
    model = build_model("v3", vocab_size=V, seed=0, d_model=32, osc_per_group=4)
    _, aux = model(tokens(11), return_aux=True)
    assert 0.1 <= aux["u"].item() <= 10
    assert 0.0 <= aux["u_at_bound"].item() <= 1.0
    assert aux["reg"].item() > 0


def test_v3_regularizer_is_not_negative_when_u_exceeds_1():
    """-log u alone is negative for u > 1 (a v3 run printed "Reg -0.0123"): the barrier is
    measured from the top of the regime, -log(u / 10): the same gradient, and >= 0."""
    from mlx_kssm.models.bistable import bistable_core
    p = mx.zeros((2, 5, 8))
    p[..., 3] = 20.0  # d far above its centre: u = d g / (a g) near 1.45 with the box
    p[..., 1] = 20.0  # b too: |Delta| large, so the 1/|Delta| term is small
    u, aux = bistable_core(p, "soft", 1e-3, 1e-2, box=0.45)
    assert mx.min(u).item() > 1.3
    assert aux["reg"].item() >= 0


def test_v3_boxed_core_keeps_u_in_the_regime_and_off_the_pole():
    """With the box (v3's default, s = 0.45) any projections, however large, give a..j whose
    denominator, numerator and Delta are >= 1 - 2s, so u lies in [0.1, 10] with a bounded
    gradient, and both ends of the regime are reachable; raw projections reach the pole."""
    from mlx_kssm.models.bistable import CORE_BOX, core_projections, raw_u
    floor = 1 - 2 * CORE_BOX
    p = 30 * mx.random.normal((4096, 8), key=mx.random.key(0))
    q = np.array(core_projections(p, CORE_BOX))
    a, b, c, d, e, f, g, h = (q[:, i] for i in range(8))
    for name, value in (("denominator", a * g - c * e), ("numerator", d * g - c * h),
                        ("Delta", b * g - c * f)):
        assert value.min() >= floor - 1e-5, name
    u = np.array(raw_u(core_projections(p, CORE_BOX)))
    assert u.min() >= 0.1 - 1e-5 and u.max() <= 10 + 1e-4
    grad = np.array(mx.grad(lambda x: raw_u(core_projections(x, CORE_BOX)).sum())(p))
    assert np.isfinite(grad).all() and np.abs(grad).max() < 1 / floor ** 2
    # two corners of the box: a = g = 1 - s, d = 1 + s, c = e = -h = s gives
    # u = ((1 + s)(1 - s) + s^2) / ((1 - s)^2 - s^2) = 1 / (1 - 2s); the mirror corner 1 - 2s
    big = 1e4
    top = mx.array([[-big, 0, big, big, big, 0, -big, -big]], dtype=mx.float32)
    bottom = mx.array([[big, 0, big, -big, -big, 0, -big, big]], dtype=mx.float32)
    assert abs(raw_u(core_projections(top, CORE_BOX)).item() - 10) < 1e-2
    assert abs(raw_u(core_projections(bottom, CORE_BOX)).item() - 0.1) < 1e-3
    assert np.abs(np.array(raw_u(p))).max() > 10, "raw projections are not kept off the pole"


def test_v3_folder_saved_before_the_box_loads_with_raw_projections(tmp_path):
    from mlx_kssm import load, save_model
    raw = build_model("v3", vocab_size=V, seed=0, d_model=32, n_layers=1, core_box=0.0)
    save_model(tmp_path / "m", raw)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["core_box"] == 0.0
    del cfg["core_box"]  # as config.json was written before the box
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load(tmp_path / "m")
    assert loaded.args.core_box == 0.0
    x = tokens(12)
    assert np.array_equal(np.array(loaded(x)), np.array(raw(x)))
    assert build_model("v3", vocab_size=V, seed=0).args.core_box == 0.45


@pytest.mark.parametrize("overrides", [{}, DESIGN_1], ids=["design2", "design1"])
def test_v3_projects_eight_core_values_and_upstream_v3_ten(overrides):
    """u and Delta read a..h: a new v3 layer projects those eight and nothing more (its
    in_proj and parameter count by formula); upstream-v3 keeps the ten of the design it
    replicates."""
    from mlx_kssm import count_parameters
    args = preset_args("v3", vocab_size=V, d_model=32, n_groups=2, osc_per_group=4,
                       **overrides)
    bank = build_model(args).layers[0].bank
    N, D = args.n_oscillators, args.d_model
    rows = (4 * N if args.rotation == "input" else 3 * N) + 8 + (D if args.gate else 0)
    assert bank.in_proj.weight.shape == (rows, D) and bank.in_proj.bias.shape == (rows,)
    readout = 3 * args.harmonics * args.n_groups
    assert count_parameters(bank) == D + (D + 1) * rows + 4 * N + 1 + (readout + 1) * D
    upstream = build_model("upstream-v3-tiny", vocab_size=V).layers[0].phase
    assert upstream.to_core.weight.shape[0] == 10


@pytest.mark.parametrize("overrides,raw,quantize", [({}, False, False), (DESIGN_1, False, False),
                                                    ({}, True, False), ({}, False, True)],
                         ids=["design2", "design1", "before-the-box", "quantized"])
def test_v3_folder_with_ten_core_projections_loads_as_the_eight(tmp_path, overrides, raw,
                                                                quantize):
    """A v3 folder saved with ten core projections (i and j, unused, after h) loads: rows i
    and j are dropped, and the logits are those of the eight-projection model made of the same
    a..h rows, with the gate's rows after them in their place (design 2), quantized too."""
    from conftest import with_ten_core_projections
    from mlx_kssm import load, save_model
    from mlx_kssm.export.exporter import export_model

    model = build_model("v3", vocab_size=V, seed=1, d_model=64, n_layers=2, n_groups=2,
                        osc_per_group=4, core_box=0.0 if raw else 0.45, **overrides)
    folder = save_model(tmp_path / "new", model)
    if quantize:
        folder = export_model(folder, tmp_path / "q8", quantize=(8, 64))
    if raw:  # as config.json was written before the box: no core_box, raw projections
        cfg = json.loads((folder / "config.json").read_text())
        del cfg["core_box"]
        (folder / "config.json").write_text(json.dumps(cfg))
    expected = load(folder)[0](tokens(3))
    with_ten_core_projections(folder, seed=2)
    old_rows = mx.load(str(folder / "model.safetensors"))["layers.1.bank.in_proj.bias"].shape[0]
    loaded, _ = load(folder)
    assert old_rows == loaded.layers[1].bank.in_proj.bias.shape[0] + 2
    assert np.array_equal(np.array(loaded(tokens(3))), np.array(expected))


def test_config_round_trip_gives_same_parameter_shapes(tmp_path):
    for name in ("tiny", "v3", "transformer-tiny", "upstream-v3-tiny", "control-bolted-tiny"):
        args = preset_args(name, vocab_size=V)
        (tmp_path / "config.json").write_text(json.dumps(args.to_dict()))
        again = ModelArgs.from_dict({**json.loads((tmp_path / "config.json").read_text()),
                                     "unknown_future_key": 1})
        a = {k: v.shape for k, v in tree_flatten(build_model(args).parameters())}
        b = {k: v.shape for k, v in tree_flatten(build_model(again).parameters())}
        assert a == b


def test_presets_and_matched_transformer():
    from mlx_kssm import count_parameters
    from mlx_kssm.models.presets import KSSM_PRESETS, comparison_presets
    names = preset_names()
    for required in ("tiny", "v1-char", "v2", "v3", "transformer", "upstream-v3", "control-bolted",
                     "transformer-char"):
        assert required in names
    for base in KSSM_PRESETS:
        comps = comparison_presets(base)
        assert set(comps) == {"transformer", "control-bolted", "upstream-v3"}
        assert all(c in names for c in comps.values())
        kssm = count_parameters(build_model(base, vocab_size=1000))
        trans = count_parameters(build_model(comps["transformer"], vocab_size=1000))
        assert abs(kssm - trans) / kssm < 0.02, (base, kssm, trans)
        assert build_model(comps["control-bolted"], vocab_size=10).args.readout == "bolted"
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("v9")
    with pytest.raises(ValueError, match="not a K-SSM preset"):
        comparison_presets("transformer")


@pytest.mark.parametrize("overrides", [{}, {"bistable": True}, {"readout": "bolted"},
                                       {"design": 1, "rotation": "input", "gate": False,
                                        "squash": "exp"},
                                       {"model_type": "transformer"}])
def test_mixer_parameter_formula_matches_a_built_layer(overrides):
    """The matched presets size their FFN from mixer_params: it must count what is built."""
    from mlx_kssm import count_parameters
    from mlx_kssm.models.presets import mixer_params
    args = preset_args("tiny", vocab_size=V, **overrides)
    layer = build_model(args).layers[0]
    mixer = layer.attn if args.model_type == "transformer" else layer.bank
    assert mixer_params(args) == count_parameters(mixer)


def _train_lag_task(preset, steps=200, lag=2, vocab=16):
    """Predict the token `lag` positions back: impossible from the current token alone."""
    model = build_model(preset, vocab_size=vocab, seed=0)

    def batch(key, B=32, T=16):
        x = mx.random.randint(0, vocab, (B, T), key=key)
        return x, x[:, :-lag]

    keys = mx.random.split(mx.random.key(1), steps)
    fit(model, lambda i: batch(keys[i]), steps,
        loss_fn=lambda m, x, y: nn.losses.cross_entropy(m(x)[:, lag:], y).mean())
    x, y = batch(mx.random.key(999), B=256)
    return (mx.argmax(model(x)[:, lag:], -1) == y).mean().item()


@pytest.mark.slow
def test_memory_that_learns_kssm_beats_chance_upstream_does_not():
    """Recall of the token two positions back: a per-position model can only guess (1/16);
    the task is fair because it needs exactly what the contract promises - information carried
    from earlier tokens through the oscillator state - and nothing else."""
    chance = 1 / 16
    kssm_acc = _train_lag_task("tiny")
    upstream_acc = _train_lag_task("upstream-v3-tiny")
    assert kssm_acc > 0.6, f"K-SSM recall accuracy {kssm_acc:.2f}"
    assert upstream_acc < chance + 0.04, f"upstream-v3 accuracy {upstream_acc:.2f} above chance"


@pytest.mark.parametrize("one_cotangent", [False, True])
def test_hand_written_adjoint_matches_autodiff_of_the_sequential_scan(one_cotangent):
    """cpu.scan_free (the training scan: complex forward, hand-written VJP) vs MLX autodiff
    through the oracle scan_sequential, for every input including the initial state; random
    cotangents on both outputs, or on zr alone (zi's cotangent then reaches the VJP as None
    or zeros)."""
    from mlx_kssm.kernels import cpu
    from mlx_kssm.kernels.fused import random_inputs
    primals = list(random_inputs(2, 23, 3, 5, seed=4))
    rng = np.random.default_rng(4)
    cot = [mx.array(rng.normal(size=(2, 23, 3, 5)).astype(np.float32)) for _ in range(2)]
    if one_cotangent:
        cot[1] = mx.zeros_like(cot[1])
    out_a, grads_a = mx.vjp(cpu.scan_free, primals, cot)
    out_b, grads_b = mx.vjp(reference.scan_sequential, primals, cot)
    for a, b in zip(out_a, out_b):
        assert mx.abs(a - b).max().item() < 1e-6
    for name, a, b in zip(("dr", "di", "k", "cr", "ci", "z0r", "z0i"), grads_a, grads_b):
        assert a.shape == b.shape, name
        assert mx.abs(a - b).max().item() < 1e-4 * max(1.0, mx.abs(b).max().item()), name


# -- malformed inputs and caches: one clear ValueError from shapes and types alone --

INPUTS_ERROR = r"inputs must be an integer mx\.array of shape \(batch, tokens\)"


@pytest.mark.parametrize("inputs", [
    mx.array([1, 2, 3]),  # 1-D
    mx.zeros((1, 2, 3), mx.int32),  # 3-D
    mx.zeros((1, 0), mx.int32),  # no tokens
    mx.zeros((1, 3)),  # float ids
    np.zeros((1, 3), np.int32),  # not an mx.array
], ids=["1d", "3d", "empty", "float", "numpy"])
@pytest.mark.parametrize("preset", ["tiny", "transformer-tiny", "upstream-v3-tiny"])
def test_malformed_inputs_are_refused(preset, inputs):
    with pytest.raises(ValueError, match=INPUTS_ERROR):
        build_model(preset, vocab_size=V, seed=0)(inputs)


@pytest.mark.parametrize("preset", ["tiny", "transformer-tiny", "upstream-v3-tiny"])
@pytest.mark.parametrize("cache", [[], {}, "one"], ids=["empty", "dict", "str"])
def test_cache_must_be_one_entry_per_layer(preset, cache):
    with pytest.raises(ValueError, match="cache must be a list with one entry per layer"):
        build_model(preset, vocab_size=V, seed=0)(tokens(0), cache=cache)


def test_cache_of_too_few_layers_or_another_kind_is_refused(kssm):
    with pytest.raises(ValueError, match="one entry per layer"):
        kssm(tokens(0), cache=kssm.make_cache()[:1])
    transformer = build_model("transformer-tiny", vocab_size=V, seed=0)
    with pytest.raises(ValueError, match="OscillatorCache"):
        kssm(tokens(0), cache=transformer.make_cache())


@pytest.mark.parametrize("filled, fed", [(1, 2), (2, 1)])
@pytest.mark.parametrize("preset", ["tiny", "transformer-tiny"])
def test_cache_batch_must_match_the_inputs(preset, filled, fed):
    """A batch-1 cache fed 2 rows used to continue row 0's state in both, silently."""
    model = build_model(preset, vocab_size=V, seed=0)
    cache = model.make_cache()
    model(tokens(0, (filled, 4)), cache=cache)
    with pytest.raises(ValueError, match=r"cache\[0\] holds .* need \(%d," % fed):
        model(tokens(1, (fed, 1)), cache=cache)


def test_cache_of_another_bank_is_refused(kssm):
    other = build_model("tiny", vocab_size=V, seed=0, n_groups=8)
    cache = other.make_cache()
    other(tokens(0), cache=cache)
    with pytest.raises(ValueError, match=r"state of shape \(2, 8, 4\)"):
        kssm(tokens(1), cache=cache)


def test_checks_leave_compiled_calls_and_positions_alone(kssm):
    """The checks read shapes only, so the model still compiles; upstream's positions still
    advance through a checked cache."""
    x = tokens(3)
    assert mx.allclose(mx.compile(kssm)(x), kssm(x), atol=1e-5)
    upstream = build_model("upstream-v3-tiny", vocab_size=V, seed=0)
    cache = upstream.make_cache()
    upstream(x, cache=cache)
    assert [c.offset for c in cache] == [x.shape[1]] * len(cache)


# -- build_model's arguments --


def _saved_config(tmp_path, **extra):
    """A tiny model saved to tmp_path/m, its config.json given `extra` keys; its logits."""
    from mlx_kssm import save_model
    model = build_model("tiny", vocab_size=V, seed=0)
    save_model(tmp_path / "m", model)
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    return model(mx.array([[1, 2, 3]]))


def test_retired_options_at_the_presets_values_load_and_are_ignored(tmp_path):
    """config.json files written before damping_init, coupling_bias and max_seq_len were
    removed hold them: at the value every preset used, the folder loads unchanged."""
    from mlx_kssm import load
    logits = _saved_config(tmp_path, damping_init="linear", coupling_bias=0.0, max_seq_len=512)
    model, _ = load(tmp_path / "m")
    assert "damping_init" not in model.args.to_dict() and "max_seq_len" not in model.args.to_dict()
    assert mx.array_equal(model(mx.array([[1, 2, 3]])), logits)


@pytest.mark.parametrize("key, value", [("damping_init", "log"), ("coupling_bias", 2.0)])
def test_retired_option_at_another_value_is_refused_saying_what_to_do(tmp_path, key, value):
    from mlx_kssm import load
    from mlx_kssm.io import ModelLoadError
    _saved_config(tmp_path, **{key: value})
    with pytest.raises(ModelLoadError, match=f"{key}=.*no longer supported.*remove \"{key}\""):
        load(tmp_path / "m")


def test_hard_u_bound_is_refused():
    with pytest.raises(ValueError, match="u_bound 'hard' is no longer supported"):
        build_model("v3", vocab_size=V, seed=0, u_bound="hard")
    with pytest.raises(ValueError, match="no longer supported"):
        bound_u(mx.array([0.5]), "hard")


def test_design_label_must_not_contradict_its_parts():
    """Design 2 with exactly design 1's parts is a contradiction; a mix keeps its label."""
    with pytest.raises(ValueError, match="design 2 contradicts.*design 1's parts"):
        build_model("tiny", vocab_size=V, seed=0, rotation="input", gate=False, squash="exp")
    mix = build_model("tiny", vocab_size=V, seed=0, rotation="input")  # design 2, varied
    assert mix.args.design == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=2.7), "vocab_size must be an integer"),
    (dict(vocab_size="300"), "vocab_size must be an integer"),
    (dict(vocab_size=True), "vocab_size must be an integer"),
    (dict(seed=-1), "seed must be an integer in"),
    (dict(seed=1.5), "seed must be an integer in"),
    (dict(seed=2 ** 70), "seed must be an integer in"),
    (dict(seed=True), "seed must be an integer in"),
    (dict(lambda_logu=float("nan")), "lambda_logu must be a finite number"),
    (dict(lambda_delta=float("inf")), "lambda_delta must be a finite number"),
])
def test_build_model_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("tiny", **kwargs)


@pytest.mark.parametrize("first", [ModelArgs(), {}, "tiny"], ids=["args", "config", "preset"])
def test_build_model_refuses_unknown_options_on_every_path(first):
    with pytest.raises(ValueError, match="unknown model option"):
        build_model(first, foo=1)


@pytest.mark.parametrize("first", [None, 3, ["tiny"]])
def test_build_model_refuses_what_is_no_model_description(first):
    with pytest.raises(ValueError, match="build_model takes a preset name"):
        build_model(first)


def test_build_model_takes_the_largest_seed():
    assert build_model("tiny", vocab_size=V, seed=2 ** 32 - 1).args.vocab_size == V
