"""lib.frozen.quick_init: the same frozen dataclass, built without a setattr call per field."""

import dataclasses
from decimal import Decimal

import pytest

from lib.frozen import quick_init
from proxy import answers, bodies, meters
from quota.pricing import Usage


@dataclasses.dataclass(frozen=True)
class Plain:
    name: str
    count: int = 0
    price: Decimal | None = None
    tags: tuple[str, ...] = ()


@quick_init
@dataclasses.dataclass(frozen=True)
class Quick:
    name: str
    count: int = 0
    price: Decimal | None = None
    tags: tuple[str, ...] = ()


def test_a_quick_instance_is_the_instance_dataclasses_build():
    for args, kwargs in [(("a",), {}), (("a", 2), {"tags": ("x",)}), ((), {"name": "b", "price": Decimal("1.5")})]:
        plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)
        assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
        assert vars(plain) == vars(quick) and list(vars(quick)) == [f.name for f in dataclasses.fields(Quick)]
        assert hash(quick) == hash(Quick(*args, **kwargs)) and quick == Quick(*args, **kwargs)
        assert repr(quick) == repr(plain).replace("Plain(", "Quick(")
        with pytest.raises(dataclasses.FrozenInstanceError):
            quick.count = 3
        assert dataclasses.replace(quick, count=5).count == 5
    with pytest.raises(TypeError):
        Quick()  # a required field is still required
    with pytest.raises(TypeError):
        Quick("a", nope=1)


def test_the_per_call_dataclasses_have_the_quick_init_and_the_same_signature():
    import inspect

    for cls in (Usage, bodies.Read, bodies.Outgoing, answers.Answer, meters.Answer):
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
        assert "object.__setattr__" not in repr(cls.__init__.__code__.co_names)
        reference = dataclasses.dataclass(frozen=True)(type(cls.__name__, (), {"__annotations__": cls.__annotations__}))
        assert [p.name for p in inspect.signature(cls).parameters.values()] == [
            p.name for p in inspect.signature(reference).parameters.values()
        ]
    usage = Usage(input_tokens=3, tool_calls=(("web_search", 1),))
    assert usage == Usage(3, tool_calls=(("web_search", 1),)) and hash(usage) == hash(
        Usage(3, tool_calls=(("web_search", 1),))
    )
    assert usage.__dict__["output_tokens"] == 0 and usage.unit == ""


@pytest.mark.parametrize("bad", ["slots", "factory", "kw_only", "post_init", "not_frozen"])
def test_a_class_it_cannot_build_the_same_is_refused(bad):
    options = {"frozen": bad != "not_frozen", "slots": bad == "slots"}
    namespace: dict = {"__annotations__": {"a": int, "b": list}, "a": 0}
    namespace["b"] = (
        dataclasses.field(default_factory=list)
        if bad == "factory"
        else dataclasses.field(default=None, kw_only=bad == "kw_only")
    )
    if bad == "post_init":
        namespace["__post_init__"] = lambda self: None
    cls = dataclasses.dataclass(**options)(type("Bad", (), namespace))
    with pytest.raises(TypeError):
        quick_init(cls)
