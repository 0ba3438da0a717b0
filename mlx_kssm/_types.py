"""Type checks for values read from users' files (config.json, meta.json, run.toml, a lock,
history.jsonl) and library arguments. JSON and TOML give bool, int, float and str; Python
counts True as an int, so a plain isinstance(value, int) would take `seq_len = true` for a
length of 1."""

# what every seeded generator here takes (MLX's mx.random.seed, NumPy's): an unsigned 32-bit
# value; a seed outside it fails early, named, instead of deep inside either library
MAX_SEED = 2**32 - 1
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


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
