"""The plain-Python library stays free of Dagster, and nothing in the package pickles a model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "cpst_pipeline"
# The Dagster layer: everything else is the library and must import without Dagster.
DAGSTER_LAYER = (
    # The benchmarks that run the asset definitions themselves.
    "cpst_pipeline.benchmark.__main__",
    "cpst_pipeline.benchmark.calibration_evidence",
    "cpst_pipeline.benchmark.image_score",
    "cpst_pipeline.benchmark.pipeline_run",
    "cpst_pipeline.benchmark.serving",
    "cpst_pipeline.benchmark.speed.__main__",
    "cpst_pipeline.benchmark.speed.gpu",
    "cpst_pipeline.benchmark.speed.incremental",
    "cpst_pipeline.benchmark.speed.latency",
    "cpst_pipeline.assets",
    "cpst_pipeline.definitions",
    "cpst_pipeline.executors",
    "cpst_pipeline.materialize_all",
    "cpst_pipeline.resources",
    "cpst_pipeline.schedules",
)
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> list[str]:
    """Module names from the file tree (pkgutil.walk_packages would import the Dagster packages to recurse)."""
    names = (_module_name(p) for p in sorted(PACKAGE_DIR.rglob("*.py")))
    return [n for n in names if not any(n == layer or n.startswith(layer + ".") for layer in DAGSTER_LAYER)]


_IMPORT_ALL = """
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
names = json.loads(sys.argv[1])
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "dagster": sorted(m for m in sys.modules if m == "dagster" or m.startswith("dagster.") or m.startswith("dagster_")),
    "imported": [n for n in names if n in sys.modules],
}))
"""


def test_library_modules_are_listed_without_the_dagster_layer() -> None:
    names = library_modules()
    for expected in ("cpst_pipeline", "cpst_pipeline.cascade.model", "cpst_pipeline.features.backbone",
                     "cpst_pipeline.pipeline.domain_models", "cpst_pipeline.pipeline.registry", "cpst_pipeline.io_utils"):
        assert expected in names
    assert not [n for n in names if n.startswith(DAGSTER_LAYER)]


def test_library_imports_without_dagster() -> None:
    """A fresh interpreter imports every library module; Dagster must not be among what it loaded."""
    names = library_modules()
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(names)],
        cwd=PACKAGE_DIR.parent, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == names  # every module really was imported
    assert report["dagster"] == [], f"library modules pulled in Dagster: {report['dagster'][:5]}"


# ---------------------------------------------------------------- no pickled models


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def pickling_problems(source: str, filename: str = "<src>") -> list[str]:
    """Places where ``source`` pickles (or unpickles) objects or saves whole models."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            problems.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            func = _dotted(node.func)
            head, _, attr = func.rpartition(".")
            if head.split(".")[0] in PICKLING_MODULES and attr in {"dump", "dumps", "load", "loads", "Pickler"}:
                problems.append(f"{where} calls {func}")
            elif func == "torch.save" or func.endswith(("pytorch.log_model", "sklearn.log_model", "pytorch.save_model")):
                problems.append(f"{where} calls {func}")
            elif func.endswith((".to_pickle", ".read_pickle")):
                problems.append(f"{where} calls {func}")
            elif func == "torch.load":
                flag = _keyword(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} calls torch.load without weights_only=True")
            elif func in {"np.load", "numpy.load", "np.save", "numpy.save"}:
                flag = _keyword(node, "allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False) and func.endswith("load"):
                    problems.append(f"{where} calls {func} without allow_pickle=False")
                if isinstance(flag, ast.Constant) and flag.value is True:
                    problems.append(f"{where} calls {func} with allow_pickle=True")
            elif func.endswith("log_model"):
                model = _keyword(node, "python_model")
                # MLflow "model from code": a path, never a PythonModel instance (which MLflow would cloudpickle)
                is_call_to_str = isinstance(model, ast.Call) and _dotted(model.func) in {"str", "os.fspath"}
                is_path = isinstance(model, ast.Constant) or is_call_to_str
                if model is not None and not is_path:
                    problems.append(f"{where} logs a python_model object")
    return problems


def test_pickling_detector_catches_what_it_should() -> None:
    bad = """
import pickle
import torch, numpy as np, mlflow
pickle.dump(model, handle)
torch.save(model, "m.pt")
state = torch.load("m.pt")
arr = np.load("x.npy")
mlflow.pyfunc.log_model(name="m", python_model=CascadePyfunc())
"""
    found = pickling_problems(bad)
    assert len(found) == 6, found
    good = """
import torch, numpy as np, mlflow
torch.load(p, map_location="cpu", weights_only=True)
np.load(p, allow_pickle=False)
np.save(h, a, allow_pickle=False)
mlflow.pyfunc.log_model(name="m", python_model=str(CODE))
"""
    assert pickling_problems(good) == []


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_library_file_pickles_models(path: Path) -> None:
    assert pickling_problems(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE_DIR.parent))) == []
