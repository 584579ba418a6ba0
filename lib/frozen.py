"""A quicker `__init__` for frozen dataclasses built on every call.

dataclasses' frozen `__init__` sets each field through `object.__setattr__` (a frozen class's own
`__setattr__` raises): a global lookup, an attribute lookup and a call per field, some three times
the cost of a plain class's construction. `quick_init` gives the class an `__init__` with the same
signature and defaults that writes the fields straight into the new instance's `__dict__`; the
instance is the same (equality, hashing, repr, `dataclasses.replace`, and assignment still raising).
"""

import dataclasses
from typing import TypeVar

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """`cls` (a frozen dataclass whose fields are plain: no slots, factories, keyword-only fields,
    `__post_init__` or init=False) with the quicker `__init__`. Apply it above `@dataclass`."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init takes a frozen dataclass without slots or __post_init__")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    signature, body, defaults = [], [], {}
    for field in fields:
        if field.name in ("self", "_values") or field.name.startswith("_default_"):
            raise TypeError(f"{cls.__name__}.{field.name}: a name quick_init's __init__ uses itself")
        if not field.init or field.kw_only or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: quick_init takes plain fields only")
        if field.default is dataclasses.MISSING:
            signature.append(field.name)
        else:
            defaults[f"_default_{field.name}"] = field.default
            signature.append(f"{field.name}=_default_{field.name}")
        body.append(f"    _values[{field.name!r}] = {field.name}")
    source = "\n".join([f"def __init__(self, {', '.join(signature)}):", "    _values = self.__dict__", *body])
    namespace: dict = {}
    exec(source, defaults, namespace)  # noqa: S102 - source made above from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc,method-assign]
    return cls
