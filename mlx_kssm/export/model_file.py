"""The model file of an mlx-lm export (OUT/kssm.py), assembled from mlx_kssm's own code.

mlx_lm_kssm.py holds what is mlx-lm's (ModelArgs as mlx-lm reads config.json, its cache, batch
padding, the vocabulary maps) and imports the K-SSM computation from mlx_kssm with relative
imports: the recurrence (kernels/reference.py, kernels/cpu.py), the readout
(models/order_params.py), v3's bistable core, the bank's inputs and output and the MLP
(models/). `model_source()` writes, in place of those imports, the definitions they name, each
as it stands in its module (with the comment lines just above it), so the exported file runs
without mlx_kssm and computes what mlx_kssm computes: the package is the one source of both.

What is copied must need nothing but mx, nn, numpy and other copied names, and nothing of the
template's own when it is defined (an annotation naming ModelArgs is quoted).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

TEMPLATE = Path(__file__).with_name("mlx_lm_kssm.py")
HEADING_WIDTH = 84  # as the template's own section rules


def model_source() -> str:
    """The text of the exported model file: the template with mlx_kssm's definitions in place
    of its relative imports (and of the comment just above them)."""
    lines = TEMPLATE.read_text().splitlines(keepends=True)
    imports = _relative_imports(lines)
    start = _comment_start(lines, imports[0].lineno - 1)
    copied = "\n\n".join(_definitions(node) for node in imports)
    text = "".join(lines[:start]) + copied + "\n" + "".join(lines[imports[-1].end_lineno:])
    _check_self_contained(text)
    return text


def _relative_imports(lines: list[str]) -> list[ast.ImportFrom]:
    """The template's imports from mlx_kssm: one block of consecutive lines."""
    tree = ast.parse("".join(lines))
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level > 0]
    covered = {i for n in imports for i in range(n.lineno - 1, n.end_lineno)}
    block = range(imports[0].lineno - 1, imports[-1].end_lineno)
    if any(i not in covered and lines[i].strip() for i in block):
        raise ValueError(f"{TEMPLATE.name}: the imports from mlx_kssm must stand together")
    return imports


def _comment_start(lines: list[str], index: int) -> int:
    """The first of the comment lines directly above line `index` (itself if there are none)."""
    while index > 0 and lines[index - 1].lstrip().startswith("#"):
        index -= 1
    return index


def _definitions(node: ast.ImportFrom) -> str:
    """The source of every name `node` imports, in its module's order, under a heading."""
    module = importlib.import_module("." * node.level + (node.module or ""), __package__)
    path = Path(module.__file__)
    lines = path.read_text().splitlines(keepends=True)
    wanted = {alias.name for alias in node.names}
    chunks, found = [], set()
    for stmt in ast.parse("".join(lines)).body:
        names = _defined_names(stmt) & wanted
        if names:
            found |= names
            first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            chunks.append((isinstance(stmt, ast.Assign),
                           "".join(lines[_comment_start(lines, first - 1):stmt.end_lineno])))
    if found != wanted:
        raise ValueError(f"{module.__name__} defines no {sorted(wanted - found)} at top level")
    label = f"from mlx_kssm/{path.relative_to(path.parents[1]).as_posix()}"
    return f"# {'-' * (HEADING_WIDTH - len(label) - 3)} {label}\n\n" + _join(chunks)


def _defined_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, ast.Assign):
        return {n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def _join(chunks: list[tuple[bool, str]]) -> str:
    """Constants one after another, two blank lines around functions and classes."""
    text = chunks[0][1]
    for (prev_assign, _), (is_assign, chunk) in zip(chunks, chunks[1:]):
        text += ("" if prev_assign and is_assign else "\n\n") + chunk
    return text


def _check_self_contained(text: str) -> None:
    """No import of mlx_kssm is left (the exported folder must load without it)."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.level or "mlx_kssm" in node.module):
            raise ValueError(f"the exported model file still imports {node.module!r}")
        if isinstance(node, ast.Import) and any("mlx_kssm" in a.name for a in node.names):
            raise ValueError("the exported model file still imports mlx_kssm")
