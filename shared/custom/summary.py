"""What the owner reads beside a custom function's code: a static summary, and the privacy
cost its researcher declared.

The summary is a reading aid computed from the source (``ast``), never an analysis to trust:
code can hide what it does from any static reading. It lists the imports, the calls into DP
libraries (and the accounted ``dp`` handle), calls that draw randomness or touch the system
outside them, and what the function returns.
"""
from __future__ import annotations

import ast
import re

# "declared privacy cost: epsilon=1.0, delta=1e-5" in the request's reason or the docstring
DECLARED_RE = re.compile(
    r"declared\s+privacy(?:\s+cost)?\s*:\s*(?:eps(?:ilon)?)\s*=\s*([0-9.eE+-]+)"
    r"(?:\s*,?\s*delta\s*=\s*([0-9.eE+-]+))?", re.IGNORECASE)
DP_LIBRARIES = ("opendp", "diffprivlib", "opacus", "snsql", "tmlt", "pydp")
HANDLE = "dp"  # the name of the accounted handle's parameter (shared.custom.handle)
# module prefixes whose calls draw randomness (noise the handle does not count) or reach the
# system; listed so the owner looks at them
RANDOMNESS = ("random.", "np.random.", "numpy.random.", "secrets.", "torch.rand", "os.urandom")
SYSTEM = ("os.", "sys.", "subprocess.", "socket.", "shutil.", "pathlib.", "urllib.",
          "requests.", "http.", "ctypes.", "importlib.", "pickle.", "marshal.", "builtins.")
SYSTEM_BUILTINS = frozenset({"open", "exec", "eval", "compile", "__import__", "getattr",
                             "setattr", "globals", "locals", "vars", "breakpoint", "input"})


def declared_cost(*texts: str | None) -> dict | None:
    """The first "declared privacy cost: epsilon=E, delta=D" found in ``texts`` (the request's
    reason, the function's docstring), as {"epsilon", "delta"}; None when none declares one."""
    for text in texts:
        m = DECLARED_RE.search(text or "")
        if not m:
            continue
        try:
            eps = float(m.group(1))
            delta = float(m.group(2)) if m.group(2) else 0.0
        except ValueError:
            continue
        return {"epsilon": eps, "delta": delta}
    return None


def declaration(epsilon: float, delta: float) -> str:
    """The line ``declared_cost`` reads (what ``jobs.Custom`` puts in the request's reason)."""
    return f"declared privacy cost: epsilon={float(epsilon)!r}, delta={float(delta)!r}"


def _name(node) -> str:
    """Dotted name of a call's target (``dp.m.make_laplace``), '' when it is not a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    if isinstance(node, ast.Call):
        inner = _name(node.func)
        return f"{inner}()." + ".".join(reversed(parts)) if inner else ""
    return ""


def function_node(source: str, name: str | None = None) -> ast.FunctionDef:
    """The function ``name`` (or the only/first top-level function) of ``source``."""
    tree = ast.parse(source)
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for f in funcs:
        if name is None or f.name == name:
            return f
    raise ValueError(f"no function {name!r} in the submitted code")


def static_summary(source: str, name: str | None = None) -> dict:
    """Imports, DP-library calls, handle calls, randomness and system calls, returns, and the
    function's parameters (``takes_handle``: it has a ``dp`` parameter)."""
    try:
        fn = function_node(source, name)
    except (SyntaxError, ValueError) as e:
        return {"error": f"cannot read the code: {e}"}
    imports, aliases = set(), {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Import):
            for a in node.names:
                imports.add(a.name)
                aliases[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            imports.add(mod)
            for a in node.names:
                aliases[a.asname or a.name] = f"{mod}.{a.name}"
    params = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
    dp_calls, handle_calls, randomness, system = set(), set(), set(), set()
    returns = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            called = _name(node.func)
            if not called:
                continue
            head = called.split(".")[0].split("(")[0]
            full = aliases.get(head, head) + called[len(head):]
            if head == HANDLE and HANDLE in params:
                handle_calls.add(called)
            elif full.split(".")[0] in DP_LIBRARIES:
                dp_calls.add(full)
            elif any(full.startswith(p) or called.startswith(p) for p in RANDOMNESS):
                randomness.add(full)
            elif called in SYSTEM_BUILTINS or any(full.startswith(p) for p in SYSTEM):
                system.add(full)
        elif isinstance(node, ast.Return) and node.value is not None:
            returns.append(ast.unparse(node.value)[:200])
    return {"function": fn.name, "parameters": params, "takes_handle": HANDLE in params,
            "imports": sorted(imports), "dp_library_calls": sorted(dp_calls),
            "handle_calls": sorted(handle_calls), "randomness_outside_handle": sorted(randomness),
            "system_calls": sorted(system), "returns": returns,
            "docstring": ast.get_docstring(fn)}
