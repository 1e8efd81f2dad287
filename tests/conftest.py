"""Shared fixtures: fake plugin distributions on disk, and running the ``rqa`` console script."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RQA_SCRIPT = Path(sys.executable).parent / "rqa"


@dataclass(frozen=True)
class FakePlugin:
    """A plugin written by ``make_plugin``: one module plus a ``*.dist-info`` with an ``rqa`` entry point."""

    name: str  # entry-point name, i.e. the plugin name rqa reports
    package: str  # distribution name (METADATA ``Name``)
    version: str
    module: str  # importable module name, unique per call
    root: Path  # directory to put on sys.path / PYTHONPATH


MakePlugin = Callable[..., FakePlugin]


@pytest.fixture(autouse=True)
def _no_plugin_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without ``RQA_LOAD_PLUGINS``, whatever the calling shell has set."""
    monkeypatch.delenv("RQA_LOAD_PLUGINS", raising=False)


@pytest.fixture
def plugin_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory on ``sys.path`` where fake distributions are written."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def make_plugin(plugin_root: Path) -> Iterator[MakePlugin]:
    """``make_plugin(name, source, package=..., version=...)`` writes an installed-looking plugin.

    ``source`` is the plugin module's code (dedented). The module gets a fresh name on every call, because
    ``importlib`` caches imported modules across tests while entry-point discovery caches nothing; the
    modules are dropped from ``sys.modules`` afterwards.
    """
    modules: list[str] = []

    def make(name: str, source: str, package: str | None = None, version: str = "0.1") -> FakePlugin:
        module = f"rqa_fake_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        package = package or f"rqa-fake-{name}"
        (plugin_root / f"{module}.py").write_text(textwrap.dedent(source))
        dist_info = plugin_root / f"{package.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        (dist_info / "entry_points.txt").write_text(f"[rqa]\n{name} = {module}\n")
        importlib.invalidate_caches()
        modules.append(module)
        return FakePlugin(name=name, package=package, version=version, module=module, root=plugin_root)

    yield make
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture
def run_rqa(plugin_root: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed ``rqa`` console script with the fake plugins of this test importable."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k != "RQA_LOAD_PLUGINS"}
        full_env.update({"PYTHONPATH": str(plugin_root), "COLUMNS": "200", "NO_COLOR": "1"})
        full_env.update(env or {})
        return subprocess.run(
            [str(RQA_SCRIPT), *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=plugin_root,
            timeout=120,
        )

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved with SmolLM2's tokenizer: the real CLI trains it in seconds."""
    from helpers import embedded_tokenizer, tiny_model

    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = embedded_tokenizer()
    tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
