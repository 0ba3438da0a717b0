"""Type checks for values read from users' files (config.json, meta.json, run.toml, a lock,
history.jsonl) and library arguments. JSON and TOML give bool, int, float and str; Python
counts True as an int, so a plain isinstance(value, int) would take `seq_len = true` for a
length of 1."""

import functools
import typing

# what every seeded generator here takes (MLX's mx.random.seed, NumPy's): an unsigned 32-bit
# value; a seed outside it fails early, named, instead of deep inside either library
MAX_SEED = 2**32 - 1
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
              list: "a list of strings", tuple: "a sequence of numbers"}


def has_type(value, kind: type) -> bool:
    """Whether `value` is a `kind` as a user means it: a bool is no number, an int is a float."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def is_int(value) -> bool:
    return has_type(value, int)


def check_seed(seed, error: type = ValueError) -> None:
    """Raise `error` unless `seed` is an integer in [0, MAX_SEED]."""
    if not (is_int(seed) and 0 <= seed <= MAX_SEED):
        raise error(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")


@functools.cache  # a class's annotations do not change
def field_types(cls) -> dict:
    """Field name -> (the type its value must have, whether None is allowed), from the
    dataclass `cls`'s annotations: Optional[int] and int | None both give (int, True)."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        kind = next((a for a in args if a is not type(None)), hint) if args else hint
        kinds[name] = (typing.get_origin(kind) or kind, type(None) in args)
    return kinds


def check_value(name: str, value, kind: type, optional: bool, prefix: str = "") -> None:
    """ValueError "{prefix}{name} must be ..." unless `value` is a `kind` (None where
    `optional`). A list field holds strings, a tuple field numbers (at least one)."""
    if value is None and optional:
        return
    if kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind is tuple:
        ok = (isinstance(value, (tuple, list)) and len(value) > 0
              and all(has_type(v, float) for v in value))
    else:
        ok = has_type(value, kind)
    if not ok:
        raise ValueError(f"{prefix}{name} must be {TYPE_WORDS[kind]}, got {value!r}")


def check_fields(obj, prefix: str = "") -> None:
    """check_value on every field of the dataclass instance `obj` (built in Python, or from a
    user's file: "257" is not 257, true is not 1)."""
    for name, (kind, optional) in field_types(type(obj)).items():
        check_value(name, getattr(obj, name), kind, optional, prefix)


def check_positive_counts(obj, names) -> None:
    """Each field of `obj` named in `names` at least 1 (a count: windows, samples, tokens);
    ValueError naming the first that is not, as its option is spelled ("batch-size")."""
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(obj, name)}")
