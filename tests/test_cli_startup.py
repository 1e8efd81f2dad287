"""The command line starts light: ``--help`` and ``list-plugins`` never import torch or transformers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rqa

RQA_SCRIPT = Path(sys.executable).parent / "rqa"

HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "faiss")

# Runs the real entry point (rqa.cli.main reading sys.argv) in a fresh interpreter, then reports which
# heavy modules got imported, on a last line of its own.
STARTUP_PROBE = textwrap.dedent(
    """
    import json
    import sys

    from rqa.cli import main

    codes = []
    for argv in {argvs!r}:
        sys.argv = ["rqa", *argv]
        try:
            codes.append(main())
        except SystemExit as done:
            codes.append(done.code)
    heavy = sorted(name for name in {heavy!r} if name in sys.modules)
    print("\\nPROBE " + json.dumps({{"codes": codes, "heavy": heavy}}))
    """
)


def probe(*argvs: list[str]) -> dict:
    source = STARTUP_PROBE.format(argvs=[list(a) for a in argvs], heavy=HEAVY_MODULES)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith("PROBE "), result.stdout[-2000:]
    return json.loads(last.removeprefix("PROBE "))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RQA_LOAD_PLUGINS"}


def test_help_and_list_plugins_do_not_import_heavy_libraries():
    report = probe(["--help"], ["list-plugins"], ["list-plugins", "--json"], ["--version"])

    assert report["heavy"] == []
    assert all(code in (None, 0) for code in report["codes"]), report["codes"]


def test_importing_the_cli_and_plugins_is_light():
    source = (
        "import sys, json\n"
        "import rqa.cli, rqa.plugins\n"
        "rqa.plugins.get_plugins()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=_env())

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_help_lists_the_commands():
    result = subprocess.run([str(RQA_SCRIPT), "--help"], capture_output=True, text=True, timeout=60, env=_env())

    assert result.returncode == 0, result.stderr
    for command in ("train", "evaluate", "index", "list-plugins"):
        assert command in result.stdout


def test_version():
    result = subprocess.run([str(RQA_SCRIPT), "--version"], capture_output=True, text=True, timeout=60, env=_env())

    assert result.returncode == 0, result.stderr
    assert rqa.__version__ in result.stdout


@pytest.fixture(scope="module")
def train_help() -> str:
    result = subprocess.run(
        [str(RQA_SCRIPT), "train", "--help"], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "flag",
    [
        # LocalRQA's
        "--model_name_or_path",
        "--sep_sys",
        "--full_dataset_index_path",
        # Hugging Face TrainingArguments
        "--per_device_train_batch_size",
        "--gradient_accumulation_steps",
        # rqa's own
        "--formatter",
        "--loss",
        "--retriever",
        "--metrics",
        "--top_k",
        "--config",
    ],
)
def test_train_help_lists_every_family_of_flags(train_help, flag):
    assert re.search(rf"(?<![\w-]){flag}(?![\w-])", train_help), f"{flag} missing from `rqa train --help`"
