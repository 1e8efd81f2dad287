"""``rqa plugin new``: the package it writes installs with pip and passes its own tests as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rqa.cli import main
from rqa.errors import RqaError
from rqa.scaffold import PluginNames, new_plugin, plugin_files
from rqa.scaffold.kinds import TEMPLATES

RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent))


def install_and_test(packages: list[Path], site: Path) -> subprocess.CompletedProcess[str]:
    """``pip install`` the packages into ``site`` (built from their pyproject, as users install them; the venv
    is left alone), then run their own tests with pytest in a fresh interpreter that has ``site`` on its path."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    installed = subprocess.run(
        [*pip, "--target", str(site), *map(str, packages)], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("RQA_LOAD_PLUGINS", None)
    tests = [str(package / "tests") for package in packages]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(site.parent), *tests],
        cwd=site.parent, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def generate(kinds: list[str], directory: Path) -> list[Path]:
    return [new_plugin(f"my-{kind.replace('_', '-')}", kind, directory) for kind in kinds]


def test_packages_of_every_kind_without_a_model_install_and_pass_their_tests(tmp_path: Path) -> None:
    tests = {"metric": 2, "loss": 3, "formatter": 2, "retriever": 2, "passage_filter": 3}  # entry point + own tests
    result = install_and_test(generate(list(tests), tmp_path), tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{sum(tests.values())} passed" in result.stdout


@pytest.mark.slow  # its test loads the embedded embedder
def test_a_retriever_loss_package_installs_and_passes_its_test(tmp_path: Path) -> None:
    result = install_and_test(generate(["retriever_loss"], tmp_path), tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
@pytest.mark.parametrize("kind", TEMPLATES)
def test_generated_code_is_lint_clean_and_formatted(kind: str, tmp_path: Path) -> None:
    root = new_plugin("lint-me", kind, tmp_path, check_taken=False)
    rules = "E,F,W,I,B,UP,SIM,RUF"
    checked = subprocess.run([RUFF, "check", "--select", rules, "."], cwd=root, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    formatted = subprocess.run([RUFF, "format", "--check", "."], cwd=root, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout


def test_the_package_layout_and_its_entry_point() -> None:
    files = plugin_files("exact-match", "metric")
    assert sorted(files) == [
        "README.md",
        "pyproject.toml",
        "src/rqa_exact_match/__init__.py",
        "tests/test_exact_match.py",
    ]
    assert '[project.entry-points.rqa]\nexact-match = "rqa_exact_match"' in files["pyproject.toml"]
    assert 'register("exact-match", exact_match)' in files["src/rqa_exact_match/__init__.py"]
    assert '"gen/exact_match": KeyInfo(' in files["src/rqa_exact_match/__init__.py"]
    assert "rqa list-plugins --kind metrics" in files["README.md"]


@pytest.mark.parametrize(
    ("name", "package", "module", "cls"),
    [
        ("exact-match", "rqa-exact-match", "rqa_exact_match", "ExactMatch"),
        ("rqa-bm25x", "rqa-bm25x", "rqa_bm25x", "Bm25x"),
    ],
)
def test_names_made_from_a_plugin_name(name: str, package: str, module: str, cls: str) -> None:
    names = PluginNames.of(name)
    assert (names.package, names.module, names.cls) == (package, module, cls)


@pytest.mark.parametrize("name", ["Exact", "2fast", "a.b", "my plugin", ""])
def test_names_that_make_no_module_are_refused(name: str) -> None:
    with pytest.raises(RqaError, match="invalid plugin name"):
        PluginNames.of(name)


def test_a_taken_name_or_a_full_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RqaError, match=r"plugin 'rqa-metrics' \(rqa==.*\) already registers a metric named 'rouge'"):
        new_plugin("rouge", "metric", tmp_path)
    new_plugin("fresh", "loss", tmp_path)
    with pytest.raises(RqaError, match="rqa-fresh already exists and is not empty"):
        new_plugin("fresh", "loss", tmp_path)


def test_the_command_writes_the_package_and_says_what_next(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["plugin", "new", "word-count", "--kind", "retriever", "--dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert (tmp_path / "rqa-word-count" / "src" / "rqa_word_count" / "__init__.py").is_file()
    assert "tests/test_word_count.py" in output
    assert f"pip install -e {tmp_path / 'rqa-word-count'} && rqa list-plugins --kind retrievers" in output


def test_a_passage_filter_package_is_offered_by_the_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["plugin", "new", "no-copies", "--kind", "passage_filter", "--dir", str(tmp_path)])
    assert "rqa list-plugins --kind passage_filters" in capsys.readouterr().out
    module = (tmp_path / "rqa-no-copies" / "src" / "rqa_no_copies" / "__init__.py").read_text()
    assert "def no_copies(documents: Sequence[Document], max_copies: int = 1)" in module
    assert 'register("no-copies", no_copies)' in module
