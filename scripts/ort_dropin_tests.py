#!/usr/bin/env python3
"""How many of ONNX Runtime's own quantization tests pass when `quantize_static` is zeropoint's.

ONNX Runtime's tests (``onnxruntime/test/python/quantization`` of its source) are copied into a
temporary folder twice: once as they are (the baseline, ORT's ``quantize_static``) and once with
every reference to ORT's ``quantize_static`` rewritten to ``zeropoint.onnxruntime.quantize_static``
(the other imports from ``onnxruntime.quantization`` are left alone). Each test file that calls
``quantize_static`` is run with pytest in both copies; a ``conftest.py`` written next to them wraps
both implementations to record which test functions call ``quantize_static`` from test code, what
zeropoint warned about or raised, and each test's outcome. Only tests that call ``quantize_static``
are counted.

    scripts/ort_dropin_tests.py --ort-source /work/.mirror/<owner>+onnxruntime/repo \\
        [--rev HEAD] [--files test_qdq.py,test_op_relu.py] [--max-files 8] [--budget 1200] \\
        [--examples /work/.mirror/microsoft+onnxruntime-inference-examples/repo \\
         --example-model model.onnx] [--write docs/ort-dropin-tests.txt]

``--ort-source`` is a git directory (bare or not; ``--rev`` picks the commit), an ONNX Runtime
checkout, or the quantization test folder itself. ``--examples`` also runs the
``quantization/image_classification/cpu`` example of onnxruntime-inference-examples (its
``run.py`` with its own data reader and test images) both ways, on ``--example-model`` (any float
NCHW 224x224 image model; the example's mobilenetv2-7.onnx is a large file that git snapshots may
lack).

Shims, the same in both runs: the ORT tests of early 2025 import float8 helpers that onnx 1.19
removed (``onnx.helper.float32_to_float8e4m3``, ``onnx.numpy_helper.float8e4m3_to_float32``,
``onnx.reference.custom_element_types``); the conftest puts equivalents back (via ml_dtypes). Their
op-count check imports ``onnx_array_api`` only to print the model when the count is wrong; a stub
stands in when it is not installed. zeropoint is imported from a copy of ``--zeropoint-path``
(``python/`` with its native module, as ``scripts/test`` builds it), made at the start.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PYTHON = REPO / ".venv" / "bin" / "python"
TESTS_DIR = "onnxruntime/test/python/quantization"
# Test data some of those tests look for next to the folder (skipped when absent).
EXTRA_DATA = ["onnxruntime/test/testdata/qdq_minimal_model.onnx"]
EXAMPLE_DIR = "quantization/image_classification/cpu"

ORT_MODULES = {"onnxruntime.quantization", "onnxruntime.quantization.quantize"}
ZP_MODULE_ALIAS = "_zp_onnxruntime"


# --------------------------------------------------------------------------- getting the tests


def _is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def _git_dir_of(path: Path) -> Optional[Path]:
    if _is_git_dir(path):
        return path
    if _is_git_dir(path / ".git"):
        return path / ".git"
    return None


def _git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True
    ).stdout


def extract(source: Path, rev: str, subdir: str, extra: Sequence[str], dest: Path) -> str:
    """Copies ``subdir`` (and the ``extra`` files that exist) of ``source`` under ``dest``,
    keeping their paths; returns a line describing what was taken."""
    git_dir = _git_dir_of(source)
    if git_dir is not None:
        commit = _git(git_dir, "rev-parse", f"{rev}^{{commit}}").strip()
        # Snapshots may lack large blobs: take the files whose contents are there.
        entries = [line.split(None, 3) for line in _git(git_dir, "ls-tree", "-r", commit, "--", subdir, *extra).splitlines()]
        blobs = [(e[2], e[3]) for e in entries if e[1] == "blob"]
        check = subprocess.run(
            ["git", f"--git-dir={git_dir}", "cat-file", "--batch-check"],
            input="".join(f"{sha}\n" for sha, _ in blobs), capture_output=True, text=True, check=True,
        ).stdout.splitlines()
        paths = [path for (sha, path), line in zip(blobs, check) if not line.endswith("missing")]
        missing = len(blobs) - len(paths)
        if not paths:
            raise SystemExit(f"{git_dir}: nothing under {subdir} at {rev}")
        archive = subprocess.run(
            ["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit, "--", *paths],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        info = _git(git_dir, "log", "-1", "--format=%h %cs", commit).strip()
        try:
            version = _git(git_dir, "show", f"{commit}:VERSION_NUMBER").strip()
        except subprocess.CalledProcessError:
            version = "?"
        absent = f"; {missing} files absent from the snapshot" if missing else ""
        return f"{git_dir} at {rev} = {info} (VERSION_NUMBER {version}){absent}"
    if (source / subdir).is_dir():
        root = source
    elif any(source.glob("test_*.py")):  # the test folder itself
        root = None
    else:
        raise SystemExit(f"{source}: neither a git directory, a checkout with {subdir}, nor the test folder")
    target = dest / subdir
    shutil.copytree(source / subdir if root else source, target)
    for p in extra:
        if root and (root / p).is_file():
            (dest / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / p, dest / p)
    return f"{source} (folder)"


# --------------------------------------------------------------------------- rewriting the import


def _dotted(node: ast.AST) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _ort_module_names(tree: ast.AST) -> set:
    """Dotted names that refer, in this file, to onnxruntime.quantization (or its quantize
    submodule): ``oq`` after ``import onnxruntime.quantization as oq``, ``quantization`` after
    ``from onnxruntime import quantization``, ``onnxruntime.quantization`` after ``import
    onnxruntime``..."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ORT_MODULES:
                    names.add(a.asname or a.name)
                elif a.name == "onnxruntime" or a.name.startswith("onnxruntime."):
                    top = a.asname if (a.asname and a.name == "onnxruntime") else None
                    if a.asname is None:
                        top = "onnxruntime"
                    if top:
                        names.update({f"{top}.quantization", f"{top}.quantization.quantize"})
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "onnxruntime":
                for a in node.names:
                    if a.name == "quantization":
                        names.add(a.asname or "quantization")
                        names.add(f"{a.asname or 'quantization'}.quantize")
    return names


def _offsets(src: bytes) -> List[int]:
    starts, pos = [0], 0
    for line in src.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def rewrite(source: str) -> Tuple[str, int]:
    """``source`` with ORT's ``quantize_static`` swapped for zeropoint's, and how many references
    were rewritten. Imports of it are split off (``from onnxruntime.quantization import A,
    quantize_static`` → ``from onnxruntime.quantization import A`` + ``from zeropoint.onnxruntime
    import quantize_static``); attribute uses of it on an ORT module become
    ``_zp_onnxruntime.quantize_static``."""
    tree = ast.parse(source)
    raw = source.encode()
    starts = _offsets(raw)
    modules = _ort_module_names(tree)
    edits: List[Tuple[int, int, bytes]] = []
    need_alias = False
    last_future = 0

    def span(node: ast.AST) -> Tuple[int, int]:
        return (
            starts[node.lineno - 1] + node.col_offset,  # type: ignore[attr-defined]
            starts[node.end_lineno - 1] + node.end_col_offset,  # type: ignore[attr-defined]
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            last_future = max(last_future, node.end_lineno or 0)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in ORT_MODULES:
            if any(a.name == "*" for a in node.names):
                a, b = span(node)
                indent = " " * node.col_offset
                edits.append((b, b, f"\n{indent}from zeropoint.onnxruntime import quantize_static".encode()))
                continue
            hits = [a for a in node.names if a.name == "quantize_static"]
            if not hits:
                continue
            keep = [a for a in node.names if a.name != "quantize_static"]
            stmts = []
            if keep:
                listed = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep)
                stmts.append(f"from {node.module} import {listed}")
            for a in hits:
                stmts.append("from zeropoint.onnxruntime import quantize_static" + (f" as {a.asname}" if a.asname else ""))
            a, b = span(node)
            edits.append((a, b, ("\n" + " " * node.col_offset).join(stmts).encode()))
        elif isinstance(node, ast.Attribute) and node.attr == "quantize_static":
            base = _dotted(node.value)
            if base is not None and base in modules:
                a, b = span(node)
                edits.append((a, b, f"{ZP_MODULE_ALIAS}.quantize_static".encode()))
                need_alias = True
    out = raw
    for a, b, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        out = out[:a] + text + out[b:]
    if need_alias:
        at = _offsets(out)[last_future]
        out = out[:at] + f"import zeropoint.onnxruntime as {ZP_MODULE_ALIAS}\n".encode() + out[at:]
    result = out.decode()
    ast.parse(result)  # still Python
    return result, len(edits)


def quantize_static_sites(source: str) -> int:
    """How many places in ``source`` use ORT's quantize_static (calls and attribute uses)."""
    tree = ast.parse(source)
    modules = _ort_module_names(tree)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in ORT_MODULES:
            imported.update(a.asname or a.name for a in node.names if a.name in ("quantize_static", "*"))
    if "*" in imported:
        imported.add("quantize_static")
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in imported and isinstance(node.ctx, ast.Load):
            n += 1
        elif isinstance(node, ast.Attribute) and node.attr == "quantize_static" and _dotted(node.value) in modules:
            n += 1
    return n


# --------------------------------------------------------------------------- the conftest

# Written into both copies. It wraps ORT's and zeropoint's quantize_static (counting a call only
# when it comes from a file of the test folder, so that ORT's quantize() calling its own
# quantize_static does not count), and appends one JSON line per test to $ZP_DROPIN_RESULTS.
CONFTEST = r'''
import functools, json, os, sys, warnings
import numpy as np
import onnx, onnx.helper, onnx.numpy_helper

_HERE = os.path.dirname(os.path.abspath(__file__))
_OUT = os.environ["ZP_DROPIN_RESULTS"]
_calls = {}


def _f8_dtype(uz):
    import ml_dtypes
    return ml_dtypes.float8_e4m3fnuz if uz else ml_dtypes.float8_e4m3fn


if not hasattr(onnx.helper, "float32_to_float8e4m3"):  # removed in onnx 1.19
    def float32_to_float8e4m3(fval, scale=1.0, fn=True, uz=False, saturate=True):
        import ml_dtypes
        dtype = _f8_dtype(uz)
        x = np.float32(fval) / np.float32(scale)
        if saturate and np.isfinite(x):
            big = float(ml_dtypes.finfo(dtype).max)
            x = np.float32(min(max(float(x), -big), big))
        return int(np.array(x, dtype=np.float32).astype(dtype).view(np.uint8))
    onnx.helper.float32_to_float8e4m3 = float32_to_float8e4m3

if not hasattr(onnx.numpy_helper, "float8e4m3_to_float32"):  # removed in onnx 1.19
    def float8e4m3_to_float32(data, dims=None, fn=True, uz=False):
        arr = np.asarray(data).astype(np.uint8).view(_f8_dtype(uz)).astype(np.float32)
        return arr.reshape(dims) if dims is not None else arr
    onnx.numpy_helper.float8e4m3_to_float32 = float8e4m3_to_float32

try:
    import onnx.reference.custom_element_types  # noqa: F401  (removed in onnx 1.19)
except ImportError:
    import types
    _cet = types.ModuleType("onnx.reference.custom_element_types")
    for _n in ("e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz", "uint4", "int4"):
        setattr(_cet, ("float8" + _n) if _n.startswith("e") else _n, np.dtype((np.uint8, {_n: (np.uint8, 0)})))
    sys.modules["onnx.reference.custom_element_types"] = _cet

try:  # only used to print a model when an op-count assertion fails; not installed here
    import onnx_array_api.plotting.text_plot  # noqa: F401
except ImportError:
    import types
    for _n in ("onnx_array_api", "onnx_array_api.plotting", "onnx_array_api.plotting.text_plot"):
        sys.modules[_n] = types.ModuleType(_n)
    sys.modules["onnx_array_api.plotting.text_plot"].onnx_simple_text_plot = (
        lambda model: "nodes: " + " ".join(n.op_type for n in model.graph.node))


def _test_id():
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]


def _wrap(fn, impl):
    @functools.wraps(fn)
    def quantize_static(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if not os.path.abspath(caller).startswith(_HERE + os.sep):
            return fn(*args, **kwargs)
        rec = _calls.setdefault(_test_id(), {"ort": 0, "zeropoint": 0, "warnings": [], "raised": None})
        rec[impl] += 1
        caught = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return fn(*args, **kwargs)
        except Exception as e:
            if rec["raised"] is None:
                rec["raised"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            for w in list(caught):
                if w.category.__name__ == "ZeropointCompatibilityWarning" and str(w.message) not in rec["warnings"]:
                    rec["warnings"].append(str(w.message))
            for w in list(caught):  # hand them on to the test's own filters, outside the recording
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return quantize_static


import onnxruntime.quantization as _ortq
_ortq.quantize_static = _wrap(_ortq.quantize_static, "ort")
_ortqq = sys.modules["onnxruntime.quantization.quantize"]
_ortqq.quantize_static = _wrap(_ortqq.quantize_static, "ort")
if os.environ.get("ZP_DROPIN_MODE") == "zeropoint":
    import zeropoint.onnxruntime as _zpo
    _zpo.quantize_static = _wrap(_zpo.quantize_static, "zeropoint")

_outcome = {}


def _message(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    if isinstance(report.longrepr, tuple):  # skip: (file, line, reason)
        return str(report.longrepr[-1])
    text = str(report.longrepr).strip().splitlines()
    return text[-1] if text else ""


def _where(report):
    """The failing source line (pytest marks it with '>'), last one of the traceback."""
    lines = [l[1:].strip() for l in str(report.longrepr).splitlines() if l.startswith(">")]
    return lines[-1] if lines else ""


def pytest_runtest_logreport(report):
    o = _outcome.setdefault(report.nodeid, {"outcome": "passed", "message": "", "where": "", "seconds": 0.0})
    o["seconds"] += report.duration
    if report.failed and o["outcome"] in ("passed", "skipped"):
        o["outcome"] = "failed" if report.when == "call" else "error"
        o["message"] = _message(report)
        o["where"] = _where(report)
    elif report.skipped and o["outcome"] == "passed":
        o["outcome"] = "skipped"
        o["message"] = _message(report)
    if report.when == "teardown":
        o["calls"] = _calls.get(report.nodeid, {"ort": 0, "zeropoint": 0, "warnings": [], "raised": None})
        with open(_OUT, "a") as f:
            f.write(json.dumps({"test": report.nodeid, **o}) + "\n")


def pytest_collectreport(report):
    if report.failed:
        with open(_OUT, "a") as f:
            f.write(json.dumps({"collect_error": report.nodeid, "message": _message(report)}) + "\n")
'''


# --------------------------------------------------------------------------- running


def run_file(
    python: Path, folder: Path, name: str, mode: str, timeout: float, logs: Path, pythonpath: Path
) -> Tuple[Dict[str, dict], List[Tuple[str, str]], float, str]:
    """Runs one test file; returns (results by test id, collection errors, seconds, status)."""
    results_path = logs / f"{mode}.{name}.jsonl"
    results_path.unlink(missing_ok=True)
    env = dict(os.environ, ZP_DROPIN_RESULTS=str(results_path), ZP_DROPIN_MODE=mode, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [
        str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN",
        f"--junitxml={logs / f'{mode}.{name}.junit.xml'}", name,
    ]
    start = time.monotonic()
    status = "done"
    with open(logs / f"{mode}.{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # our own pytest and its children only
            proc.wait()
            status = "timed out"
    seconds = time.monotonic() - start
    results: Dict[str, dict] = {}
    errors: List[Tuple[str, str]] = []
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            d = json.loads(line)
            if "collect_error" in d:
                errors.append((d["collect_error"], d["message"]))
            else:
                results[d["test"]] = d
    return results, errors, seconds, status


# --------------------------------------------------------------------------- reading the failures


def _short(text: str, n: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# Named causes, tried in order; each pattern is searched in "T: <test id> | R: <what zeropoint's
# quantize_static raised> | M: <the test's failure message> | W: <the failing source line> |
# Q: <QOperator asked> | X: <extra_options zeropoint warned it does not apply>".
FEWER = ("fewer Q/DQ than ORT: zeropoint leaves op outputs (Conv, Gemm, Softmax, ... and graph outputs) and "
         "activation-only graphs (Sigmoid, Relu) float and keeps Relu/Clip, which ORT folds into the output Q/DQ")
MORE = "more Q/DQ than ORT: zeropoint quantizes around each op where ORT shares one Q/DQ pair (Pad, Squeeze, ...)"
CAUSES: List[Tuple[str, str]] = [
    (r"R: .*(activation|weight)_type \d+ has no zeropoint equivalent",
     "activation_type/weight_type given as an onnx.TensorProto type (an int; ORT accepts it) is rejected"),
    (r"QFLOAT8|FLOAT8E4M3", "float8 quantization types: zeropoint has none"),
    (r"R: .*activation_type QInt4/QUInt4", "4-bit activations: zeropoint quantizes activations to 8/16 bits"),
    (r"R: .*operator unsupported", "zeropoint's engine cannot run the float model (unsupported operator)"),
    (r"R: .*must have shape \[[^]]*\], got \[1[],]",
     "the reader's feeds are re-split along axis 0 into single rows; a model whose leading dimension is "
     "fixed (not 1) rejects them"),
    (r"tensor\(float16\)|FLOAT16|float16|T: \S*fp16",
     "float16 models: zeropoint's engine rejects a model computing in float16, and it quantizes float32 "
     "values only"),
    (r"IndexError.*\| W: .*(int32_data|float_data)",
     "the test reads scale / zero point from int32_data / float_data; zeropoint stores initializers as raw_data"),
    (r"(QLinear|QGemm|QAttention|MatMulInteger|ConvInteger|op count|not in order|count not same|Assert failed).*Q: yes",
     "quant_format QOperator: the test expects ORT's QOperator nodes (QLinear*, QGemm, ...); zeropoint writes QDQ"),
    (r"X: .*TensorQuantOverrides",
     "relies on extra_options['TensorQuantOverrides'] (per-tensor types / ranges, mixed precision), which zeropoint "
     "does not apply (it warns)"),
    (r"W: .*bias_names", "a bias initializer shared by two nodes stays shared (ORT gives each consumer its own copy)"),
    (r"W: .*has_relu", FEWER),
    (r"M: KeyError", "ORT's qdq_loss_debug finds no Q/DQ for a tensor that zeropoint leaves float"),
    (r"Not equal to tolerance|Mismatched elements", "outputs differ from the float model beyond the test's tolerance"),
]


def _qdq_counts(message: str) -> Optional[Tuple[int, int]]:
    """(zeropoint's, expected) numbers of Q/DQ nodes (or of nodes) a count assertion names."""
    m = re.search(r"optype=(\{[^}]*\})\s*kwargs=(\{[^}]*\})", message)
    if m:
        try:
            got, want = ast.literal_eval(m.group(1)), ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError):
            return None
        keys = ("QuantizeLinear", "DequantizeLinear")
        return sum(got.get(k, 0) for k in keys), sum(want.get(k, 0) for k in keys)
    m = re.search(r"(\d+) != (\d+) : (op count is not same|Expected \d+ \w+ nodes)", message)
    if m:
        return int(m.group(2)), int(m.group(1))
    return None


def cause_of(result: dict, test_id: str = "") -> Tuple[str, str]:
    """(cause, representative one-line reason) of one failing zeropoint run."""
    calls = result["calls"]
    raised = calls.get("raised") or ""
    message = result.get("message", "")
    qop = any("QOperator" in w for w in calls.get("warnings", []))
    unapplied = [w for w in calls.get("warnings", []) if w.startswith("extra_options[")]
    joined = (f"T: {test_id} | R: {raised} | M: {message} | W: {result.get('where', '')} | "
              f"Q: {'yes' if qop else 'no'} | X: {' '.join(unapplied)}")
    joined = " ".join(joined.split())
    reason = _short(f"zeropoint raised {raised}" if raised else message)
    for pattern, name in CAUSES:
        if re.search(pattern, joined):
            return name, reason
    counts = _qdq_counts(message)
    if counts is not None and counts[0] != counts[1]:
        return (FEWER if counts[0] < counts[1] else MORE), reason
    text = raised or message
    generic = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text.splitlines()[0] if text else "")
    generic = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", generic)
    return ("zeropoint raised " if raised else "") + _short(generic, 90), reason


def _label(test_id: str) -> str:
    """file::Class::test without the .py."""
    parts = test_id.split("::")
    return "::".join([Path(parts[0]).stem] + parts[1:])


# --------------------------------------------------------------------------- the example


EXAMPLE_CHECK = r'''
import os, sys, numpy as np, onnxruntime as ort
sys.path.insert(0, os.getcwd())
import resnet50_data_reader
float_model, quant_model = sys.argv[1], sys.argv[2]
dr = resnet50_data_reader.ResNet50DataReader("./test_images", float_model)
feeds = list(iter(dr.get_next, None))
f = ort.InferenceSession(float_model, providers=["CPUExecutionProvider"])
q = ort.InferenceSession(quant_model, providers=["CPUExecutionProvider"])
agree, rel = 0, []
for feed in feeds:
    a, b = f.run(None, feed)[0], q.run(None, feed)[0]
    agree += int(a.argmax() == b.argmax())
    rel.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)))
print(f"top-1 agreement with the float model {agree}/{len(feeds)}, mean relative output error {np.mean(rel):.4f}")
'''


def run_example(python: Path, source: Path, model: Path, work: Path, timeout: float, pythonpath: Path) -> List[str]:
    lines = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(pythonpath), os.environ.get("PYTHONPATH", "")) if p))
    base = work / "examples"
    base.mkdir()
    try:
        extract(source, "HEAD", EXAMPLE_DIR, [], base)
    except (subprocess.CalledProcessError, SystemExit) as e:
        return [f"example: could not extract {EXAMPLE_DIR}: {e}"]
    folder = base / EXAMPLE_DIR
    run_py = (folder / "run.py").read_text()
    (folder / "run_zeropoint.py").write_text(rewrite(run_py)[0])
    (folder / "check.py").write_text(EXAMPLE_CHECK)
    for label, script in (("ORT", "run.py"), ("zeropoint", "run_zeropoint.py")):
        out = work / f"example.{label}.onnx"
        cmd = [str(python), script, "--input_model", str(model), "--output_model", str(out), "--calibrate_dataset", "./test_images"]
        start = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
            ok = p.returncode == 0 and out.exists()
            tail = "" if ok else _short((p.stderr or p.stdout).strip().splitlines()[-1] if (p.stderr or p.stdout).strip() else f"exit {p.returncode}")
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {timeout:.0f} s"
        seconds = time.monotonic() - start
        verdict = "ok" if ok else f"FAILED ({tail})"
        detail = ""
        if ok:
            c = subprocess.run([str(python), "check.py", str(model), str(out)], cwd=folder, env=env, capture_output=True, text=True)
            detail = "; " + (c.stdout.strip() or _short(c.stderr.strip().splitlines()[-1] if c.stderr.strip() else "check failed"))
        lines.append(f"  {EXAMPLE_DIR}/run.py with {label:9s} quantize_static: {verdict} in {seconds:.0f} s{detail}")
    return lines


# --------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ort-source", required=True, type=Path, help="ORT git dir, checkout, or its quantization test folder")
    ap.add_argument("--rev", default="HEAD", help="commit of a git --ort-source (default HEAD)")
    ap.add_argument("--python", type=Path, default=DEFAULT_PYTHON)
    ap.add_argument("--zeropoint-path", type=Path, default=REPO / "python",
                    help="folder holding the zeropoint package (default python/; copied, native module included, "
                         "so that a rebuild during the run changes nothing)")
    ap.add_argument("--files", help="comma-separated test files to run (default: all that call quantize_static)")
    ap.add_argument("--max-files", type=int, help="run only the N files with the most quantize_static call sites")
    ap.add_argument("--budget", type=float, default=1200.0, help="seconds for all pytest runs together (default 1200)")
    ap.add_argument("--file-timeout", type=float, default=420.0, help="seconds for one pytest run of one file (default 420)")
    ap.add_argument("--examples", type=Path, help="onnxruntime-inference-examples git dir or checkout")
    ap.add_argument("--example-model", type=Path, help="float NCHW 224x224 model for the image-classification example")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, junit reports)")
    ap.add_argument("--write", type=Path, help="also write the report to this file, with the command")
    ap.add_argument("--note", action="append", default=[], help="a line to print under the header (repeatable)")
    args = ap.parse_args(argv)

    out_lines: List[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out_lines.append(line)

    work = Path(tempfile.mkdtemp(prefix="ort-dropin-"))
    deadline = time.monotonic() + args.budget
    try:
        ort_version = subprocess.run(
            [str(args.python), "-c", "import onnxruntime, onnx; print(onnxruntime.__version__, onnx.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        base_root, zp_root, logs = work / "ort", work / "zeropoint", work / "logs"
        for d in (base_root, zp_root, logs):
            d.mkdir()
        origin = extract(args.ort_source.resolve(), args.rev, TESTS_DIR, EXTRA_DATA, base_root)
        zp_path = work / "zeropoint-python"
        shutil.copytree(args.zeropoint_path / "zeropoint", zp_path / "zeropoint",
                        ignore=shutil.ignore_patterns("__pycache__"))
        native = sorted((args.zeropoint_path / "zeropoint").glob("_zeropoint*.so"))
        native_info = (f"{native[0].resolve()} of {time.strftime('%Y-%m-%d %H:%M', time.localtime(native[0].stat().st_mtime))}"
                       if native else "?")
        base_dir = base_root / TESTS_DIR
        shutil.copytree(base_root, zp_root, dirs_exist_ok=True)
        zp_dir = zp_root / TESTS_DIR

        sites: Dict[str, int] = {}
        for path in sorted(base_dir.glob("test_*.py")):
            try:
                n = quantize_static_sites(path.read_text())
            except SyntaxError:
                continue
            if n:
                sites[path.name] = n
        rewritten: Dict[str, int] = {}
        for path in sorted(zp_dir.glob("*.py")):
            src = path.read_text()
            if "quantize_static" in src:
                new, n = rewrite(src)
                if n:
                    path.write_text(new)
                    rewritten[path.name] = n
        for d in (base_dir, zp_dir):
            (d / "conftest.py").write_text(CONFTEST)

        if args.files:
            chosen = [f.strip() for f in args.files.split(",") if f.strip()]
        else:
            chosen = sorted(sites, key=lambda f: (-sites[f], f))
            if args.max_files:
                chosen = chosen[: args.max_files]
        not_chosen = sorted(set(sites) - set(chosen))

        say("ONNX Runtime quantization tests with quantize_static swapped to zeropoint.onnxruntime.quantize_static")
        say(f"tests from: {origin}")
        say(f"run with:   {args.python} -m pytest -p no:cacheprovider (onnxruntime {ort_version[0]}, onnx {ort_version[1]})")
        say(f"zeropoint:  {args.zeropoint_path / 'zeropoint'} (native module {native_info})")
        say("shims, both runs: onnx float8 helpers removed in onnx 1.19; onnx_array_api stub (only formats a failed "
            "op-count assertion)")
        for note in args.note:
            say(f"note:       {note}")
        say(f"files calling quantize_static: {len(sites)}; rewritten references: "
            + ", ".join(f"{k} {v}" for k, v in sorted(rewritten.items())))
        if not_chosen:
            what = "the files given" if args.files else f"the {len(chosen)} files with the most quantize_static call sites"
            say(f"sample: {what}; not run: {', '.join(not_chosen)}")
        say()

        per_file = []
        base_all: Dict[str, dict] = {}
        zp_all: Dict[str, dict] = {}
        collect_errors: List[str] = []
        unfinished: List[str] = []
        for name in chosen:
            left = deadline - time.monotonic()
            if left < 30:
                unfinished.append(f"{name} (not run: budget spent)")
                continue
            b, be, bs, bstat = run_file(args.python, base_dir, name, "ort", min(args.file_timeout, left), logs, zp_path)
            left = deadline - time.monotonic()
            if left < 30:
                unfinished.append(f"{name} (zeropoint run not started: budget spent)")
                continue
            z, ze, zs, zstat = run_file(args.python, zp_dir, name, "zeropoint", min(args.file_timeout, left), logs, zp_path)
            collect_errors += [f"ORT {n}: {_short(m)}" for n, m in be] + [f"zeropoint {n}: {_short(m)}" for n, m in ze]
            # A test counts when quantize_static was called from test code in either run.
            tests = sorted(
                t for t in set(b) | set(z)
                if b.get(t, {}).get("calls", {}).get("ort") or z.get(t, {}).get("calls", {}).get("zeropoint")
            )
            done = [t for t in tests if t in b and t in z]
            if bstat != "done" or zstat != "done":
                unfinished.append(
                    f"{name} (ORT {bstat} after {bs:.0f} s, zeropoint {zstat} after {zs:.0f} s; "
                    f"{len(tests) - len(done)} tests unfinished, not counted)"
                )
            leftovers = [t for t in done if z[t]["calls"]["ort"]]
            if leftovers:
                collect_errors.append(f"{name}: ORT's quantize_static still called after the rewrite in {len(leftovers)} tests")
            for t in done:
                base_all[t], zp_all[t] = b[t], z[t]
            per_file.append((name, len(done),
                             sum(b[t]["outcome"] == "passed" for t in done),
                             sum(z[t]["outcome"] == "passed" for t in done), bs, zs))
            print(f"  [{name}: {len(done)} tests, ORT {per_file[-1][2]} / zeropoint {per_file[-1][3]} passed, "
                  f"{bs:.0f} s + {zs:.0f} s]", flush=True)

        tests = sorted(base_all)
        ort_pass = [t for t in tests if base_all[t]["outcome"] == "passed"]
        zp_pass = [t for t in tests if zp_all[t]["outcome"] == "passed"]
        regress = [t for t in ort_pass if zp_all[t]["outcome"] != "passed"]
        gained = [t for t in tests if t not in ort_pass and zp_all[t]["outcome"] == "passed"]

        say(f"{'file':42s} {'tests':>5s} {'ORT':>4s} {'zp':>4s} {'ORT s':>6s} {'zp s':>6s}")
        for name, n, bp, zp, bs, zs in per_file:
            say(f"{name:42s} {n:5d} {bp:4d} {zp:4d} {bs:6.0f} {zs:6.0f}")
        say()
        say(f"tests run (test functions that call quantize_static): {len(tests)}")
        say(f"passed with ORT's quantize_static:       {len(ort_pass)}")
        say(f"passed with zeropoint's quantize_static: {len(zp_pass)}")
        say(f"pass with ORT, fail with zeropoint:      {len(regress)}")
        if gained:
            say(f"fail with ORT, pass with zeropoint:      {len(gained)} ({', '.join(t.split('::')[-1] for t in gained[:6])}"
                + (" ..." if len(gained) > 6 else "") + ")")
        for t in tests:
            if t not in ort_pass:
                say(f"not passing with ORT itself ({base_all[t]['outcome']}): {_label(t)}: "
                    f"{_short(base_all[t]['message'], 110)}")
        for line in unfinished:
            say(f"incomplete: {line}")
        for line in collect_errors:
            say(f"note: {line}")

        groups: Dict[str, List[Tuple[str, str]]] = defaultdict(list)
        for t in regress:
            cause, reason = cause_of(zp_all[t], t)
            groups[cause].append((t, reason))
        if regress:
            say()
            say("Pass with ORT, fail with zeropoint, by cause:")
            for cause, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                say(f"[{len(items)}] {cause}")
                shown = set()
                for t, reason in items:
                    if reason not in shown and len(shown) < 3:
                        shown.add(reason)
                        say(f"      e.g. {reason}")
                say("      tests: " + ", ".join(_label(t) for t, _ in items))
            say()
            say("One line per test (file::test: reason):")
            for t in regress:
                say(f"  {_label(t)}: {cause_of(zp_all[t], t)[1]}")

        warned = Counter(w for t in tests for w in zp_all[t]["calls"]["warnings"])
        if warned:
            say()
            say("ZeropointCompatibilityWarning messages (number of tests):")
            for w, n in warned.most_common():
                say(f"  {n:4d}  {_short(w, 120)}")

        if args.examples:
            say()
            say(f"Example (onnxruntime-inference-examples, {EXAMPLE_DIR}):")
            if not args.example_model:
                say("  not run: --example-model not given")
            else:
                say(f"  model: {args.example_model} (stand-in for the example's mobilenetv2-7.onnx)")
                for line in run_example(args.python, args.examples.resolve(), args.example_model.resolve(), work,
                                        max(60.0, deadline - time.monotonic()), zp_path):
                    say(line)
        if args.keep:
            say()
            say(f"logs and junit reports kept in {logs}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if args.write:
        command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None else " ".join(argv)
        args.write.write_text(f"$ {command}\n\n" + "\n".join(out_lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
