"""The layout's rules, checked on the source: no import cycle inside ``amasim`` or ``llm``
(imports inside functions included), no private name imported across modules, the
library never reaching the studies, the CLI, ``llm`` or ``proofs_check``, and no function
over 80 lines in ``amasim``, ``llm`` or ``proofs_check``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("amasim", "llm")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any
    depth (lazy imports inside functions count), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [alias.name for alias in node.names]
            # "from pkg import submodule" imports the submodule
            subs = [n for n in names if f"{base}.{n}" in MODULES]
            found += [(f"{base}.{n}", [], node.lineno) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest:
                found.append((base, rest, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for module, _, _ in _imports(name, path):
            if module in MODULES and module != name:
                edges.add(module)
        graph[name] = edges
    return graph


def test_no_import_cycle_inside_the_packages():
    graph, cycles = _graph(), []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, path in MODULES.items():
        for module, names, line in _imports(name, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != name:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module} {private}")
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("amasim")])
def test_the_library_stays_below_the_studies_and_the_cli(name):
    """amasim's library modules import neither the studies nor the CLI; only the CLI reaches
    llm and proofs_check."""
    targets = {module for module, _, _ in _imports(name, MODULES[name])}
    cli = ("amasim.cli", "amasim.__main__")  # python -m amasim is the CLI
    if name not in cli:
        assert not {t for t in targets if t.split(".")[0] in ("llm", "proofs_check")}
    if not name.startswith(("amasim.studies", *cli)):
        assert not {t for t in targets if t.startswith(("amasim.studies", "amasim.cli"))}


# ------------------------------------------------------------------- small functions
MAX_FUNCTION_LINES = 80  # first line of the ``def`` to its last line, docstring included

# Functions over the limit in files that other changes are splitting now (issue 19): the
# lead empties this set as those changes land.  Every entry must still be over the limit,
# so a split function leaves the list with the change that split it.
_BEING_SPLIT: set[str] = set()


def _function_lengths(path: Path) -> dict[str, int]:
    """Lines of every function and method in the file, nested ones included, by their
    qualified name (``Class.method``, ``outer.inner``)."""
    lengths = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return lengths


def test_no_function_is_over_80_lines():
    """A reader can hold any function: none in amasim/, llm/ or proofs_check/ spans more than
    MAX_FUNCTION_LINES lines (tests and benchmarks are exempt)."""
    lengths = {}
    for package in ("amasim", "llm", "proofs_check"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for name, n in _function_lengths(path).items():
                lengths[f"{path.relative_to(ROOT).as_posix()}:{name}"] = n
    long = {key: n for key, n in lengths.items() if n > MAX_FUNCTION_LINES}
    offenders = [f"{key} ({n} lines)" for key, n in sorted(long.items()) if key not in _BEING_SPLIT]
    stale = sorted(_BEING_SPLIT - set(long))
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)
    assert not stale, "no longer over the limit, drop from _BEING_SPLIT:\n" + "\n".join(stale)


#: the config sections each stage may read (llm/stages/__init__.py); run-wide settings come
#: through the run context (llm.context), never from [run] directly
STAGE_SECTIONS = {
    "tasks": {"data"},
    "reference": {"model", "sft"},
    "scoring": {"eval"},
    "specialists": {"specialist", "eval"},
    "default_reference": {"mix"},
    "generalists": {"generalist", "mix", "eval"},  # its cached record is evaluated
    "merges": set(),
    "evaluation": {"eval"},
    "records": set(),
}


def _sections_read(path: Path) -> set[str]:
    """The config sections a module reads: every ``<x>.cfg.<section>`` or ``cfg.<section>``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Attribute, ast.Name)):
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
            if owner == "cfg":
                found.add(node.attr)
    return found


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_a_stage_reads_only_its_own_config_sections(stage):
    read = _sections_read(ROOT / "llm" / "stages" / f"{stage}.py")
    assert read <= STAGE_SECTIONS[stage], (
        f"llm/stages/{stage}.py reads {read - STAGE_SECTIONS[stage]}"
    )


def test_every_stage_module_is_listed():
    modules = {p.stem for p in (ROOT / "llm" / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(STAGE_SECTIONS)


def test_only_llm_parallel_asks_who_is_who():
    """Rank, world size and "is a process group up" are read in one module (llm.parallel:
    ParallelDims and its helpers); everything else reads a ParallelDims."""
    calls = ("get_rank", "get_world_size", "is_initialized", "init_process_group")
    offenders = []
    for name, path in MODULES.items():
        if name == "llm.parallel" or not name.startswith("llm"):
            continue
        text = path.read_text()
        offenders += [f"{name}: {c}" for c in calls if f".{c}(" in text]
        offenders += [f"{name}: environ RANK" for key in ('"RANK"', '"WORLD_SIZE"') if key in text]
    assert not offenders, offenders
