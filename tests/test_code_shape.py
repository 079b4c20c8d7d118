"""The shape issue 14 asked for, checked so that it stays: a thin CLI app, one module per command."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[1]
COMMAND_MODULES = ("eval", "export", "tune", "purify", "serve", "models", "inspect")


def test_cli_app_only_wires_commands():
    tree = ast.parse((ROOT / "cli" / "app.py").read_text())
    functions = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert functions == ["main"]  # every command body lives in its own module
    assert not [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for name in COMMAND_MODULES:
        assert (ROOT / "cli" / f"{name}.py").is_file()


def test_every_cli_command_is_wired_to_its_module():
    from typer.main import get_command

    from robustwrap.cli.app import app

    group = get_command(app)
    commands = {name: command.callback.__module__ for name, command in group.commands.items() if command.callback}
    assert {"eval", "export", "tune", "purify", "serve", "inspect", "version"} <= commands.keys()
    for name in ("eval", "export", "tune", "purify", "serve", "inspect"):
        assert commands[name] == f"robustwrap.cli.{name}"
    models = group.commands["models"]
    assert {c.callback.__module__ for c in models.commands.values()} == {"robustwrap.cli.models"}


def test_transcribed_networks_import_nothing_from_the_library():
    for path in sorted((ROOT / "robustwrap" / "nets").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                inside_nets = node.level == 1  # `from .unet import ...` stays in nets/
                assert inside_nets or (node.level == 0 and not (node.module or "").startswith("robustwrap")), \
                    f"{path.name} imports {'.' * node.level}{node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("robustwrap") for a in node.names), f"{path.name} imports robustwrap"


def test_load_checkpoint_asks_the_registry_not_the_network_class():
    source = ast.parse((ROOT / "robustwrap" / "architectures.py").read_text())
    load = next(n for n in source.body if isinstance(n, ast.FunctionDef) and n.name == "load_checkpoint")
    calls = [n.func.id for n in ast.walk(load) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "isinstance" not in calls


def test_one_strict_key_comparison():
    """compare_keys is defined once, and no other module builds missing/unexpected key lists itself."""
    definitions = []
    for path in sorted((ROOT / "robustwrap").rglob("*.py")):
        text = path.read_text()
        if "def compare_keys(" in text:
            definitions.append(path.name)
        if path.name != "checkpoints.py":  # unexpected-key lists, or torch's non-strict load that returns them
            assert "unexpected = [" not in text and "strict=False" not in text, path
    assert definitions == ["checkpoints.py"]


def _package_imports(root: Path, package: str) -> dict[str, set[str]]:
    """module name -> the modules of ``package`` it imports (relative imports resolved)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((package, *parts)).removesuffix(".__init__")
        modules[name] = (path, path.name == "__init__.py")
    imports: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        found = set()
        base = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                anchor = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join([*anchor, node.module] if node.module else anchor) if node.level else node.module
                for alias in node.names:
                    for candidate in (f"{target}.{alias.name}", target):
                        if candidate in modules and candidate != name:
                            found.add(candidate)
                            break
        imports[name] = found
    return imports


def _assert_no_cycles(imports: dict[str, set[str]]) -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in imports[module]:
            if target.startswith(module + "."):  # a package importing its own submodules is no cycle
                continue
            assert state.get(target) != "open", " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in imports:
        if module not in state:
            visit(module, [])


def test_export_has_no_import_cycles():
    _assert_no_cycles(_package_imports(ROOT / "export", "robustwrap.export"))


EVALUATION_MODULES = ("__init__", "config", "batch", "results", "report", "figure", "distributed", "run",
                      "comparison", "record")


def test_evaluation_is_a_package_of_one_job_per_module_without_import_cycles():
    folder = ROOT / "robustwrap" / "evaluation"
    assert not (ROOT / "robustwrap" / "evaluation.py").exists()
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(EVALUATION_MODULES)
    imports = _package_imports(folder, "robustwrap.evaluation")
    _assert_no_cycles(imports)
    # config (what to run) depends on no other part of the package; run ties the others together.
    assert imports["robustwrap.evaluation.config"] == set()
    assert imports["robustwrap.evaluation.distributed"] == set()
    assert {f"robustwrap.evaluation.{m}" for m in ("batch", "results", "report", "distributed")} \
        <= imports["robustwrap.evaluation.run"]
    # comparison (several defenses in one folder, what `robustwrap eval` runs) sits above run.
    assert "robustwrap.evaluation.run" in imports["robustwrap.evaluation.comparison"]


def test_every_name_imported_from_robustwrap_evaluation_still_resolves():
    import robustwrap.evaluation as evaluation

    used = set()
    for folder in ("cli", "robustwrap", "tests", "benchmarks", "examples", "export"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module == "robustwrap.evaluation" or (
                        node.level == 1 and node.module == "evaluation" and path.parent.name == "robustwrap")):
                    used |= {a.name for a in node.names}
    assert {"EvalConfig", "run_evaluation", "process_group_from_env", "check_inputs"} <= used
    assert [name for name in sorted(used) if not hasattr(evaluation, name)] == []
    assert set(evaluation.__all__) <= set(dir(evaluation))


def _string_collections(path: Path) -> list[tuple[int, list[str]]]:
    """(line, strings) of every tuple, list, set or Literal[...] in ``path`` made only of string constants."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        elements = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elements = node.elts
        if elements and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements):
            found.append((node.lineno, [e.value for e in elements]))
    return found


def test_the_defense_choice_is_defined_once():
    """The modes are PurifyConfig's Mode (robustwrap.MODES), the one list eval, tune and the model store read;
    the defense names (none / the modes / config) are built from it in robustwrap/evaluation/config.py."""
    from typing import get_args

    import robustwrap
    import robustwrap.cli.tune as cli_tune
    import robustwrap.evaluation.comparison as compare
    from robustwrap import evaluation, store, tune
    from robustwrap.config import MODES, Mode

    allowed = {ROOT / "robustwrap" / "evaluation" / "config.py", ROOT / "robustwrap" / "config.py"}
    names = set(evaluation.DEFENSES)
    offenders = []
    for folder in ("robustwrap", "cli", "export"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in allowed:
                continue
            for line, strings in _string_collections(path):
                if {"uniform", "heterogeneous"} <= set(strings):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {strings}")
            for node in ast.walk(ast.parse(path.read_text())):  # a comma list of defenses spelled out
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "," in node.value \
                        and set(node.value.split(",")) <= names:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []
    assert evaluation.DEFENSES == ("none", "uniform", "heterogeneous", "config")
    assert MODES == get_args(Mode) and set(MODES) < names and robustwrap.MODES is MODES
    assert not hasattr(evaluation, "MODES")  # no second list
    assert compare.DEFENSES is evaluation.DEFENSES and tune.FAMILIES is MODES and store.MODES is MODES
    assert cli_tune.FAMILIES is MODES and compare.MODES is MODES
    assert evaluation.choose_defenses(None, has_config=False) == ("none", *MODES)


def test_tune_settings_hold_an_eval_config_instead_of_its_fields():
    import dataclasses

    from robustwrap.evaluation import EvalConfig
    from robustwrap.tune import TuneSettings

    fields = {f.name for f in dataclasses.fields(TuneSettings)}
    assert "evaluation" in fields
    assert not fields & {f.name for f in dataclasses.fields(EvalConfig)}
    assert isinstance(TuneSettings().evaluation, EvalConfig)


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for folder in ("robustwrap", "export", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    offenders += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                                  if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_the_triton_python_models_are_package_files_not_templates():
    for name in ("pipeline_model.py", "component_model.py"):
        source = (ROOT / "export" / "triton" / name).read_text()
        ast.parse(source)  # a real module: linters and tests read it
        assert "{{" not in source and "class TritonPythonModel" in source


def test_commands_are_thin_and_share_their_option_groups():
    """Every cli/ module is at most 200 lines; the model options are declared once (cli/groups.py) and every
    command that builds the defense takes that one group; choices are the library's own names."""
    import inspect

    from robustwrap.cli import export, groups
    from robustwrap.cli.app import app
    from robustwrap.export.bundle import NoiseMode
    from robustwrap.export.parity import TARGETS

    long = {p.name: n for p in sorted((ROOT / "cli").glob("*.py")) if (n := len(p.read_text().splitlines())) > 200}
    assert long == {}
    commands = {c.name: c.callback for c in app.registered_commands}
    model_options = [p.name for p in groups.MODELS.params]
    for name in ("eval", "export", "purify", "tune"):
        params = inspect.signature(commands[name]).parameters
        assert all(params[o].default is next(p.default for p in groups.MODELS.params if p.name == o)
                   for o in model_options), name
    for path in sorted((ROOT / "cli").glob("*.py")):
        if path.name != "groups.py":
            assert 'typer.Option("mnist", help=CLASSIFIER_SPECS)' not in path.read_text(), path.name
    assert [e.value for e in export.Engine] == list(TARGETS)
    assert [e.value for e in export.NoiseMode] == list(get_args(NoiseMode))
