"""ForceR (models/force.py): the one place a forced R is parsed and checked."""

import math

import mlx_kssm  # noqa: F401  (before mlx: loads OpenBLAS)

import mlx.core as mx
import pytest

from mlx_kssm import ForceR, build_model
from mlx_kssm.models import force as force_module
from mlx_kssm.probe.generate import generate_tokens


@pytest.fixture(scope="module")
def kssm():
    return build_model("tiny", vocab_size=50, seed=0)


@pytest.mark.parametrize("given, layers", [
    (0.3, (0.3, 0.3)),
    (1, (1.0, 1.0)),
    ([0.25, None], (0.25, None)),
    ((None, 0.5), (None, 0.5)),
    ({1: 0.6}, (None, 0.6)),
    ({"0": 0.1}, (0.1, None)),  # config.json keys are strings
])
def test_every_plain_form_gives_one_value_per_layer(given, layers):
    force = ForceR.of(given, 2)
    assert force.layers == layers and all(v is None or type(v) is float for v in force.layers)
    assert ForceR.of(force, 2) is force  # a ForceR is taken as it is
    assert ForceR.of(None, 2) is None


@pytest.mark.parametrize("given, n_layers, message", [
    (1.5, 2, "must lie in [0, 1]"),
    (-0.1, 2, "must lie in [0, 1]"),
    (math.nan, 2, "must lie in [0, 1]"),
    ("abc", 2, "must be a number"),
    ([0.1, 0.2, 0.3], 2, "3 values for 2 layers"),
    ([0.1, 2.0], 2, "must lie in [0, 1]"),
    ({5: 0.5}, 2, "names layers [5]"),
    ({"x": 0.5}, 2, "must be integers"),
    (ForceR((0.1, 0.2, 0.3)), 2, "3 values for 2 layers"),
])
def test_bad_forms_are_refused(given, n_layers, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ForceR.of(given, n_layers)


def test_frozen_and_checked_when_built():
    with pytest.raises(ValueError, match="must lie in"):
        ForceR((0.2, 7.0))
    with pytest.raises(AttributeError):
        ForceR((0.2,)).layers = (0.9,)


@pytest.mark.parametrize("force_r, items, layers", [
    (None, (), None),
    ("0.3", (), (0.3, 0.3)),
    (None, ("1=0.9",), (None, 0.9)),
    ("0.3", ("1=0.9",), (0.3, 0.9)),
    ("0.3", ("1=0.9", "1=0.2"), (0.3, 0.2)),  # the last one given wins
])
def test_command_line_options(force_r, items, layers):
    force = ForceR.from_options(force_r, items, 2)
    assert (force if force is None else force.layers) == layers


@pytest.mark.parametrize("force_r, items, message", [
    ("1.5", (), "--force-r must lie in [0, 1]"),
    ("abc", (), "--force-r must be a number"),
    (None, ("5=0.3",), "unknown layer 5 in --force-r-layer 5=0.3: the model has layers 0..1"),
    (None, ("1:0.3",), "--force-r-layer takes LAYER=R"),
    (None, ("x=0.3",), "the layer must be an integer"),
    (None, ("0=2",), "--force-r-layer 0=2 must lie in [0, 1]"),
])
def test_command_line_mistakes_name_the_option(force_r, items, message):
    with pytest.raises(ValueError) as e:
        ForceR.from_options(force_r, items, 2)
    assert message in str(e.value)


def test_config_value_and_description():
    assert ForceR((0.3, 0.3)).to_config() == 0.3
    assert ForceR((0.25, None)).to_config() == [0.25, None]
    assert ForceR((None, None)).to_config() == [None, None]
    assert ForceR((0.3, 0.3)).describe() == "0.300 in every layer"
    assert ForceR((0.25, None)).describe() == "layer 0 = 0.250, layer 1 free"


def test_a_model_without_r_refuses_forcing_with_one_message():
    transformer = build_model("transformer-tiny", vocab_size=50, seed=0)
    x = mx.array([[1, 2, 3]])
    assert transformer(x, return_r=True)[1] is None
    for call in (lambda: transformer(x, force_r=0.3), lambda: transformer(x, force_r={0: 0.3}),
                 lambda: ForceR.for_model(0.3, transformer)):
        with pytest.raises(ValueError, match="transformer: it has no oscillators"):
            call()
    assert ForceR.for_model(None, transformer) is None


def test_the_model_takes_a_force_r_as_the_plain_forms(kssm):
    x = mx.array([[1, 2, 3, 4]])
    plain_logits, plain_r = kssm(x, force_r={1: 0.6}, return_r=True)
    typed_logits, typed_r = kssm(x, force_r=ForceR((None, 0.6)), return_r=True)
    assert mx.array_equal(plain_logits, typed_logits) and mx.array_equal(plain_r, typed_r)


def test_generation_checks_force_r_once_not_per_token(kssm, monkeypatch):
    """A plain force_r becomes a ForceR once, before the prompt; the decoded tokens reuse it
    (per_layer_force used to re-check it in every layer call of every token)."""
    built = []
    real = ForceR.__post_init__
    monkeypatch.setattr(force_module.ForceR, "__post_init__",
                        lambda self: built.append(self) or real(self))
    gen = generate_tokens(kssm, [1, 2, 3], max_tokens=12, temp=0, force_r=0.3)
    assert len(gen.tokens) == 12 and len(built) == 1
    assert all(abs(v - 0.3) < 1e-6 for r in gen.r_trace for v in r)


@pytest.mark.parametrize("given", [{1.7: 0.3}, {True: 0.3}, {"1.5": 0.3}, {None: 0.3}])
def test_layer_keys_must_be_integers(given):
    """int() would take 1.7 and True as layer 1 and force it silently."""
    with pytest.raises(ValueError, match="layers must be integers"):
        ForceR.of(given, 2)


@pytest.mark.parametrize("n_layers", [0, -1, 1.5, True])
def test_n_layers_must_be_a_positive_integer(n_layers):
    with pytest.raises(ValueError, match="n_layers must be an integer >= 1"):
        ForceR.of(0.3, n_layers)
    with pytest.raises(ValueError, match="n_layers must be an integer >= 1"):
        ForceR.from_options("0.3", (), n_layers)


def test_no_layers_means_no_forcing():
    assert ForceR(()).to_config() is None
    assert ForceR(()).describe() == "no layer forced"
