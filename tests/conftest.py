import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tests never touch the user's model cache and never show progress bars.
os.environ.setdefault("RLHF_SYCO_CACHE", tempfile.mkdtemp(prefix="rlhf-syco-test-cache-"))
os.environ.setdefault("RLHF_SYCO_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DeepSpeed's C++ ops compile once per test session into a private folder: a build killed mid-way elsewhere
# leaves a lock in the shared cache that would hang every later DeepSpeed start.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="rlhf-syco-test-torch-ext-"))

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """`install_plugin("syco_plugin_rm")`: pip-install a package of tests/plugins/ into a fresh folder on
    sys.path, as a third party would ship it."""
    def install(name: str) -> Path:
        source, site = tmp_path / name, tmp_path / f"{name}-site"
        shutil.copytree(PLUGINS / name, source)  # the build writes metadata next to the sources: keep the repo clean
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--disable-pip-version-check", "--target", str(site), str(source)],
                       check=True, capture_output=True)
        monkeypatch.syspath_prepend(str(site))  # also invalidates importlib's caches
        return site
    return install
