"""The layering rules, checked on the code itself (and shown to fail on planted violations).

1. ``master`` never imports ``worker``, nor the reverse; ``common`` imports neither.
2. Only a format's own modules know the format: nothing else imports a format module
   (``*.formats.deb…``) or python-debian, or runs a format's tools (Debian's are ``dpkg-*``,
   ``apt-*`` and ``mmdebstrap``; ``gpg`` is shared signing, not a format). The rest of the code
   goes through the seams ``common.formats``, ``master.formats`` and ``worker.formats``, whose
   registries are the only other places that import the format modules.

A tool is found where the code names it: a string that is the tool's name or starts with it
(``"dpkg-deb --info"``, ``"/usr/bin/rpmbuild"``), and an argument list whose first element
names it (``["rpm", "-qp", …]``; there the formats' own names count too: ``rpm``, ``pacman``).

Build environments are Debian systems whatever format a build makes (build dependencies are
Debian packages), so the modules of ``worker/environment`` that make and run them (bases,
clean roots, host builds, the apt configuration) belong to the Debian family too; its process
trees (``processes.py``) and its interface (``__init__.py``) are checked like any other module.
"""

from __future__ import annotations

import ast
import posixpath
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
                    "worker/environment/bases.py", "worker/environment/clean.py",
                    "worker/environment/host.py", "worker/environment/aptconfig.py"),
        "imports": re.compile(
            r"^(?:(?:common|master|worker)\.formats\.deb(?:\.|$)|debian(?:\.|$))"),
        "tools": re.compile(r"^(?:dpkg(?:-[a-z-]+)?|apt(?:-[a-z-]+)?|mmdebstrap)$"),
        "argv": frozenset(),
    },
    "rpm": {
        "modules": ("common/formats/rpm", "master/formats/rpm", "worker/formats/rpm"),
        "imports": re.compile(
            r"^(?:(?:common|master|worker)\.formats\.rpm(?:\.|$)|rpm(?:\.|$)|createrepo_c(?:\.|$))"),
        # (not bare "rpm": that is also the format's name, which the rest of the code says)
        "tools": re.compile(r"^(?:rpm(?:build|keys|sign|spec|2cpio|db)|createrepo_c|"
                            r"mergerepo_c|modifyrepo_c|dnf|yum)$"),
        # as the first element of an argument list, rpm itself too
        "argv": frozenset({"rpm"}),
    },
    "pacman": {
        "modules": ("common/formats/pacman", "master/formats/pacman", "worker/formats/pacman"),
        "imports": re.compile(r"^(?:common|master|worker)\.formats\.pacman(?:\.|$)"),
        # pacman itself is left out: its name is also the format's name, which the rest of
        # the code may well write; nothing outside the format runs pacman's other tools.
        "tools": re.compile(r"^(?:pacman-[a-z]+|repo-(?:add|remove)|vercmp|makepkg|testpkg)$"),
        # as the first element of an argument list: pacman itself, and bsdtar, which makes
        # and reads its archives
        "argv": frozenset({"pacman", "bsdtar"}),
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


def _tool(text: str) -> str:
    """The program a string names, if it were run: its first word, without a folder."""
    words = text.split(maxsplit=1)
    return posixpath.basename(words[0]) if words else ""


def _format_names(node: ast.List | ast.Tuple) -> bool:
    """Whether a list holds only formats' names (``["rpm", "deb"]``), which no program is."""
    return all(isinstance(e, ast.Constant) and e.value in FORMATS for e in node.elts)


def _named_tools(tree: ast.AST, rule: dict[str, object]) -> list[tuple[int, str]]:
    """(line, tool) for every string that names one of the format's tools, and every argument
    list whose first element names one (or a program only an argument list is taken for)."""
    tools = rule["tools"]
    argv = rule["argv"]
    assert isinstance(tools, re.Pattern) and isinstance(argv, frozenset)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = _tool(node.value)
            if tools.match(name):
                found.append((node.lineno, name))
        elif isinstance(node, ast.List | ast.Tuple) and node.elts and not _format_names(node):
            first = node.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = _tool(first.value)
                if name in argv:
                    found.append((node.lineno, name))
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
                for line, tool in _named_tools(tree, rule):
                    found.append(f"{module}:{line}: runs {tool!r}, a tool of the {fmt} format")
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
    # A tool as the first word of a string, or as the first element of an argument list
    # (there the formats' own names count too); in the environment's process trees, which
    # are checked like any module.
    "common/cli.py": ("INFO = 'dpkg-deb --info'\n", "runs 'dpkg-deb', a tool of the deb format"),
    "master/storage.py": ("SRCINFO = '/usr/bin/makepkg --printsrcinfo'\n",
                          "runs 'makepkg', a tool of the pacman format"),
    "worker/environment/processes.py": (
        "import subprocess\nsubprocess.run(['apt-get', 'update'])\n",
        "runs 'apt-get', a tool of the deb format"),
    "master/metrics.py": ("import subprocess\nsubprocess.run(['rpm', '-qa'])\n",
                          "runs 'rpm', a tool of the rpm format"),
    "master/webhooks.py": ("ARGV = ('pacman', '-Sy')\n",
                           "runs 'pacman', a tool of the pacman format"),
    "worker/build.py": ("ARGV = ['/usr/bin/bsdtar', '-xf', 'x.pkg.tar.zst']\n",
                        "runs 'bsdtar', a tool of the pacman format"),
    "master/buildlogs.py": ("ARGV = ['repo-add', 'x.db.tar.gz']\n",
                            "runs 'repo-add', a tool of the pacman format"),
    "master/migrate.py": ("ARGV = ['createrepo_c', '--update', '.']\n",
                          "runs 'createrepo_c', a tool of the rpm format"),
}
#: Code that names formats or other programs, planted too: none of it is reported.
HARMLESS = {
    "master/usercli.py": "SERVED = ['rpm', 'deb', 'pacman']\nBY_NAME = ('pacman',)\n"
                         "TEXT = 'rpm and pacman repositories'\nARGV = ['tar', '-xf', 'rpm']\n",
}


def test_the_check_finds_planted_violations(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    for module, code in [*((m, c) for m, (c, _) in PLANTED.items()), *HARMLESS.items()]:
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
