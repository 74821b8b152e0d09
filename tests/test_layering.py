"""The layering rules, checked on the code itself (and shown to fail on planted violations).

1. ``master`` never imports ``worker``, nor the reverse; ``common`` imports neither.
2. Only a format's own modules know the format: nothing else imports a format module
   (``*.formats.deb…``) or python-debian, or runs a format's tools (Debian's are ``dpkg-*``,
   ``apt-*`` and ``mmdebstrap``; ``gpg`` is shared signing, not a format). The rest of the code
   goes through the seams ``common.formats``, ``master.formats`` and ``worker.formats``, whose
   registries are the only other places that import the format modules.

Build environments are Debian systems whatever format a build makes (build dependencies are
Debian packages), so ``worker/environment`` belongs to the Debian family too.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "master", "worker")
FORBIDDEN_IMPORTS = {"common": ("master", "worker"), "master": ("worker",),
                     "worker": ("master",)}
#: Each format: the modules that may know it (folders, or files), and its tools and libraries.
FORMATS = {
    "deb": {
        "modules": ("common/formats/deb", "master/formats/deb", "worker/formats/deb",
                    "worker/environment"),
        "imports": re.compile(
            r"^(?:(?:common|master|worker)\.formats\.deb(?:\.|$)|debian(?:\.|$))"),
        "tools": re.compile(r"^(?:dpkg(?:-[a-z-]+)?|apt(?:-[a-z-]+)?|mmdebstrap)$"),
    },
    "rpm": {
        "modules": ("common/formats/rpm", "master/formats/rpm", "worker/formats/rpm"),
        "imports": re.compile(
            r"^(?:(?:common|master|worker)\.formats\.rpm(?:\.|$)|rpm(?:\.|$)|createrepo_c(?:\.|$))"),
        # (not bare "rpm": that is also the format's name, which the rest of the code says)
        "tools": re.compile(r"^(?:rpm(?:build|keys|sign|spec|2cpio|db)|createrepo_c|"
                            r"mergerepo_c|modifyrepo_c|dnf|yum)$"),
    },
    "pacman": {
        "modules": ("common/formats/pacman", "master/formats/pacman", "worker/formats/pacman"),
        "imports": re.compile(r"^(?:common|master|worker)\.formats\.pacman(?:\.|$)"),
        # pacman itself is left out: its name is also the format's name, which the rest of
        # the code may well write; nothing outside the format runs pacman's other tools.
        "tools": re.compile(r"^(?:pacman-[a-z]+|repo-(?:add|remove)|vercmp|makepkg|testpkg)$"),
    },
}
#: The seams' registries, which import each format's modules to list them.
REGISTRIES = ("common/formats/__init__.py", "master/formats/__init__.py",
              "worker/formats/__init__.py")


def _module_of(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import, relative ones resolved."""
    package = module.rsplit("/", 1)[0].replace("/", ".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
    return found


def violations(root: Path) -> list[str]:
    """Every break of the rules in the tree under ``root``, as ``path:line: what``."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_of(path, root)
            tree = ast.parse(path.read_text(), filename=module)
            imports = _imports(tree, module)
            for line, name in imports:
                top = name.split(".")[0]
                if top in FORBIDDEN_IMPORTS[package]:
                    found.append(f"{module}:{line}: {package} imports {name}")
            for fmt, rule in FORMATS.items():
                inside = any(module == m or module.startswith(m + "/")
                             for m in rule["modules"])  # type: ignore[union-attr]
                if inside:
                    continue
                if module not in REGISTRIES:
                    for line, name in imports:
                        if rule["imports"].match(name):  # type: ignore[union-attr]
                            found.append(f"{module}:{line}: imports {name}, a module of the "
                                         f"{fmt} format, not through its seam")
                for node in ast.walk(tree):
                    if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                            and rule["tools"].match(node.value)):  # type: ignore[union-attr]
                        found.append(f"{module}:{node.lineno}: runs {node.value!r}, a tool "
                                     f"of the {fmt} format")
    return found


def test_the_code_keeps_its_layers() -> None:
    assert violations(ROOT) == []


PLANTED = {
    "master/scheduler.py": ("from worker.tasks import run_job\n",
                            "master imports worker.tasks"),
    "worker/tasks.py": ("import master.store\n", "worker imports master.store"),
    "common/config.py": ("from master import app\n", "common imports master"),
    "master/api/builds.py": ("from common.formats.deb import policy\n",
                             "imports common.formats.deb.policy, a module of the deb format"),
    "master/repository.py": ("import subprocess\nsubprocess.run(['dpkg-deb', '--info'])\n",
                             "runs 'dpkg-deb', a tool of the deb format"),
    "worker/cli.py": ("from debian.deb822 import Deb822\n",
                      "imports debian.deb822, a module of the deb format"),
    "common/arch.py": ("ARCH_TOOL = 'dpkg-architecture'\n",
                       "runs 'dpkg-architecture', a tool of the deb format"),
    "master/api/packages.py": ("import createrepo_c\n",
                               "imports createrepo_c, a module of the rpm format"),
    "worker/client.py": ("import subprocess\nsubprocess.run(['rpmbuild', '-bb'])\n",
                         "runs 'rpmbuild', a tool of the rpm format"),
    "master/store/index.py": ("from master.formats.rpm.index import GRACE\n",
                              "imports master.formats.rpm.index, a module of the rpm format"),
}


def test_the_check_finds_planted_violations(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    for module, (code, _) in PLANTED.items():
        path = tmp_path / module
        path.write_text(path.read_text() + "\n" + code)
    found = violations(tmp_path)
    for module, (_, what) in PLANTED.items():
        assert any(v.startswith(f"{module}:") and what in v for v in found), (module, found)
    # Nothing is reported but the plants.
    assert {v.split(":", 1)[0] for v in found} == set(PLANTED)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_checked(package: str) -> None:
    assert list((ROOT / package).rglob("*.py"))
