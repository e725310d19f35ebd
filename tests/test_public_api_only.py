"""The package uses public Keras / TensorFlow / keras-hub APIs only.

No ``keras.src``, ``keras_hub.src`` or ``tensorflow.python`` import or attribute, and no
underscore attribute read from outside its own class: ``obj._x`` where ``obj`` is not ``self``/
``cls`` is refused, and ``self._x`` only where the package itself assigns ``self._x`` (so an
inherited private of a Keras class, such as ``self._loss_tracker``, is refused). ``getattr``/
``setattr`` with an underscore name count the same.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gflv2_keras"
PRIVATE_MODULES = ("keras.src", "keras_hub.src", "tensorflow.python", "tf.python")


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _own_private_attributes(trees):
    """Underscore names the package assigns on ``self`` (its own private state)."""
    owned = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                        owned.add(sub.attr)
            if isinstance(node, ast.Call) and _dotted(node.func) in ("object.__setattr__", "setattr") and len(node.args) >= 2:
                if isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                    owned.add(node.args[1].value)
        for node in ast.walk(tree):  # methods and class attributes defined by our classes
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        owned.add(item.name)
    return owned


def _violations(path, tree, owned):
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names]
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            for name in [module or "", *names]:
                if name.startswith(PRIVATE_MODULES):
                    found.append(f"{where}: imports {name}")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if any(dotted.startswith(p + ".") or dotted == p for p in PRIVATE_MODULES):
                found.append(f"{where}: uses {dotted}")
            if _is_private(node.attr):
                receiver = node.value.id if isinstance(node.value, ast.Name) else None
                if receiver in ("self", "cls"):
                    if node.attr not in owned:
                        found.append(f"{where}: {receiver}.{node.attr} is not the package's own attribute")
                else:
                    found.append(f"{where}: reads the private attribute {node.attr} of {ast.unparse(node.value)}")
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("getattr", "setattr", "hasattr", "delattr"):
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                name = node.args[1].value
                receiver = ast.unparse(node.args[0])
                if _is_private(name) and not (receiver in ("self", "cls") and name in owned):
                    found.append(f"{where}: {_dotted(node.func)}({receiver}, {name!r})")
    return found


def test_no_private_keras_or_tensorflow_api():
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}
    owned = _own_private_attributes(trees)
    problems = [problem for path, tree in trees.items() for problem in _violations(path, tree, owned)]
    assert not problems, "private APIs in the package:\n" + "\n".join(problems)


def test_the_check_catches_what_it_should(tmp_path):
    source = (
        "import keras\nfrom keras.src import tree\nimport tensorflow.python.ops\n"
        "class A(keras.Model):\n    def f(self, m):\n        self._loss_tracker.update_state(1)\n"
        "        m._flatten_layers()\n        getattr(m, '_private', None)\n        self._mine = 1\n"
        "        return self._mine\n"
    )
    path = PACKAGE / "_probe.py"  # never written: parsed in memory under a package path
    tree = ast.parse(source)
    owned = _own_private_attributes({path: tree})
    problems = _violations(path, tree, owned)
    assert len(problems) == 5, problems
    assert not any("_mine" in p for p in problems)
