"""The package's layers: each module imports only modules exported from notebooks before its own, so no two modules
import each other, directly or through others. Function-level imports count too."""
from __future__ import annotations
import ast, inspect, re
from pathlib import Path

PKG = Path(__file__).parents[1] / 'covidnext'
NBS = Path(__file__).parents[1] / 'nbs'


def notebook_order() -> dict:
    "module name -> the number of the notebook that exports it (`#| default_exp` in nbs/NN_*.ipynb)."
    order = {}
    for nb in sorted(NBS.glob('[0-9][0-9]_*.ipynb')):
        m = re.search(r'#\|\s*default_exp\s+(\w+)', nb.read_text())
        assert m, f'{nb.name}: no default_exp'
        order[m.group(1)] = int(nb.name[:2])
    return order


def package_imports(path: Path) -> set:
    "The covidnext modules that `path` imports, anywhere in the file."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1 and mod: found.add(mod.split('.')[0])               # from .core import x
            elif node.level == 1 or mod == 'covidnext': found.update(a.name for a in node.names)  # from . import core
            elif mod.startswith('covidnext.'): found.add(mod.split('.')[1])        # from covidnext.core import x
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('covidnext.'))
    return {m for m in found if (PKG / f'{m}.py').exists()}


def test_every_module_comes_from_a_numbered_notebook():
    order = notebook_order()
    modules = {p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    assert modules == set(order), (modules ^ set(order))
    assert len(set(order.values())) == len(order), 'two notebooks share a number'


def test_modules_import_only_earlier_notebooks():
    order = notebook_order()
    later = [(m, dep) for m in order for dep in package_imports(PKG / f'{m}.py') if order[dep] >= order[m] and dep != m]
    assert not later, f'modules importing a later (or the same-numbered) notebook: {later}'


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / 'x.py'
    f.write_text('from .core import a\ndef g():\n    from covidnext.predict import b\n    import covidnext.train\n')
    assert package_imports(f) == {'core', 'predict', 'train'}


def _documented(func) -> list:
    "The parameters of `func` that have neither a docments comment nor a `Param` help."
    from fastcore.docments import docments
    from fastcore.script import Param
    d = docments(func, full=True)
    ps = [p for p in inspect.signature(func).parameters.values()
          if p.name not in ('self', 'cls') and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return [p.name for p in ps if not (d.get(p.name) or {}).get('docment') and not isinstance(p.annotation, Param)
            and not (isinstance(p.annotation, str) and p.annotation.startswith('Param('))]


def public_callables(mod) -> list:
    "(name, function) for each function in `mod.__all__` and each public method (and `__init__`) of its classes."
    out = []
    for name in getattr(mod, '__all__', []):
        obj = getattr(mod, name)
        if inspect.isfunction(obj): out.append((name, obj))
        elif inspect.isclass(obj):
            for k, v in vars(obj).items():
                v = v.__func__ if isinstance(v, (classmethod, staticmethod)) else v
                if inspect.isfunction(v) and v.__name__ != '<lambda>' and (not k.startswith('_') or k == '__init__'):
                    out.append((f'{name}.{k}', v))
    return [(n, f) for n, f in out if f.__module__.startswith('covidnext')]


def test_every_public_function_documents_its_parameters():
    "docments (a trailing comment per parameter) or a `Param` help for every parameter, and a docstring."
    import importlib
    missing = []
    for m in sorted(notebook_order()):
        mod = importlib.import_module(f'covidnext.{m}')
        for name, f in public_callables(mod):
            try: src = inspect.getsource(f)
            except (OSError, TypeError): continue          # made by dataclasses: its fields carry the comments
            if und := _documented(f): missing.append(f'{m}.{name}: {", ".join(und)}')
            if not f.__doc__ and not name.endswith('__init__'): missing.append(f'{m}.{name}: no docstring')
    assert not missing, '\n'.join(missing)
