"""The seams hold by code: contract names spelled once, no import circles, one package name."""
import ast
import os

import pytest

from tfx_transfer.modules import contract

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "components", "modules", "serving")

# The contract's names that mean nothing else in this code base. Generic words
# ("image", "examples", "inputs") are also TFX channel names, container images
# and TF Serving REST keys, so a literal of them elsewhere is not a second
# spelling of the contract.
DISTINCT = ("LABEL_ID_KEY", "SERVING_DEFAULT", "SERVING_IMAGES", "TRANSFORM_FEATURES",
            "CLASSIFICATION", "PROBABILITIES", "CLASS_IDS", "WARMUP_DIR", "WARMUP_FILE",
            "TRAINING_REPORT_FILE", "MODULE_CONFIG_FILE", "SKIPPED_FILES_FILE", "SUMMARY_FILE")


def product_files():
    for pkg in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    yield os.path.relpath(path, REPO), ast.parse(open(path).read())


def module_name(rel: str) -> str:
    name = "tfx_transfer." + rel[:-3].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def docstrings(tree):
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def test_each_distinct_contract_name_is_a_literal_only_in_the_contract():
    values = {getattr(contract, k): k for k in DISTINCT}
    assert len(values) == len(DISTINCT), "two contract names share a value"
    found = []
    for rel, tree in product_files():
        if rel == os.path.join("modules", "contract.py"):
            continue
        skip = docstrings(tree)
        found += [f"{rel}:{n.lineno} {n.value!r} (contract.{values[n.value]})"
                  for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and n.value in values and id(n) not in skip]
    assert not found, "spelled outside modules/contract.py:\n" + "\n".join(found)


def module_level_imports(tree, name: str, modules):
    """tfx_transfer modules imported when `name` is imported (lazy imports in functions excluded)."""
    out = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(name.split(".")[: -node.level] + [node.module])
            # `from package import module` needs the module (the package is its parent)
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out |= subs if len(subs) == len(node.names) else subs | {base}
    return {m for m in out if m.startswith("tfx_transfer.")}


def test_no_import_circles_and_no_bare_package_imports():
    files = {module_name(rel): (rel, tree) for rel, tree in product_files()}
    graph = {}
    for name, (rel, tree) in files.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                assert node.module.split(".")[0] not in PACKAGES, \
                    f"{rel}:{node.lineno} imports {node.module} outside the tfx_transfer package"
        graph[name] = {m for m in module_level_imports(tree, name, set(files)) if m in files and m != name}

    state = {}

    def visit(name, path):
        state[name] = "open"
        for dep in graph[name]:
            if state.get(dep) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 40  # every product module was read


def test_setup_installs_only_under_the_tfx_transfer_package():
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", out, REPO], check=True, capture_output=True, cwd=out)
        import zipfile

        wheel = zipfile.ZipFile(os.path.join(out, os.listdir(out)[0]))
        tops = {n.split("/")[0] for n in wheel.namelist()}
        names = set(wheel.namelist())
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tfx_transfer"}
    for pkg in PACKAGES:
        assert f"tfx_transfer/{pkg}/__init__.py" in names
    assert "tfx_transfer/pipeline/backbone_weight_layers.json" in names


def test_no_product_file_imports_the_tfx_v1_facade():
    # tfx.v1 imports TFX's Google Cloud extensions (Vertex AI, BigQuery
    # clients) with it: 2.4 s of every run's start, for nothing this uses.
    offenders = []
    for rel, tree in product_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            if any(n == "tfx.v1" or n.startswith("tfx.v1.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders
