"""The method registry refuses to replace a name or an alias unless asked to."""

import pytest
import tensorflow as tf

import tfcam
from tfcam.methods import REGISTRY, Method, get_method, register, registry


def _weights(a, g, y):
    return tf.reduce_mean(g, axis=[1, 2])


@pytest.fixture
def cleanup():
    names = []
    yield names
    for name in names:
        REGISTRY.pop(name, None)
        for key in [k for k, owner in registry._ALIASES.items() if owner == name]:
            del registry._ALIASES[key]


def test_register_refuses_an_existing_name(cleanup):
    cleanup.append("tmp-once")
    first = register(Method("tmp-once", _weights, aliases=("tmp-first",)))
    with pytest.raises(tfcam.TfcamError, match=r"'tmp-once'.*replace=True.*Received: method='tmp-once'"):
        register(Method("tmp-once", _weights))
    # another spelling of the same name is the same name
    with pytest.raises(tfcam.errors.MethodError, match="taken by method 'tmp-once'"):
        register(Method("TMP_ONCE", _weights))
    assert get_method("tmp-once") is first and get_method("tmp-first") is first


def test_register_refuses_an_alias_of_another_method(cleanup):
    cleanup.append("tmp-alias")
    with pytest.raises(tfcam.errors.MethodError, match=r"'grad-cam' \(taken by method 'gradcam'\)"):
        register(Method("tmp-alias", _weights, aliases=("grad-cam",)))
    assert "tmp-alias" not in REGISTRY
    assert get_method("grad-cam").name == "gradcam"
    # an alias taken by a method's alias is refused too
    with pytest.raises(tfcam.errors.MethodError, match="taken by method 'fullgrad'"):
        register(Method("tmp-alias", _weights, aliases=("full_grad",)))
    assert get_method("full-grad").name == "fullgrad"


def test_register_replace_true_replaces(cleanup):
    cleanup.append("tmp-replace")
    register(Method("tmp-replace", _weights, aliases=("tmp-old-alias",)))
    new = register(Method("tmp-replace", _weights, aliases=("tmp-new-alias",)), replace=True)
    assert get_method("tmp-replace") is new and get_method("tmp-new-alias") is new
    with pytest.raises(tfcam.errors.MethodError, match="Unknown method"):
        get_method("tmp-old-alias")  # the replaced method's aliases are gone


def test_register_replace_takes_over_another_methods_alias(cleanup):
    cleanup += ["tmp-owner", "tmp-thief"]
    owner = register(Method("tmp-owner", _weights, aliases=("tmp-shared",)))
    thief = register(Method("tmp-thief", _weights, aliases=("tmp-shared",)), replace=True)
    assert get_method("tmp-shared") is thief and get_method("tmp-owner") is owner


def test_builtin_modules_register_each_name_once():
    # every built-in registered without replace: no name or alias maps to two methods
    # (an alias spelling its own method's name is allowed)
    keys = [k for m in REGISTRY.values() for k in {registry._key(s) for s in (m.name,) + tuple(m.aliases)}]
    assert len(keys) == len(set(keys))
