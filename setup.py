"""Packaging glue, nothing else (the project is described in pyproject.toml).

`systemd/` at the top of the checkout is the one home of the unit, its environment file and the config example.
A wheel must carry them too (`edge install-service` from a wheel, no checkout), so the build copies that folder
into the package as `edge/service/systemd/`; there is no second copy in the source tree to keep in step.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SYSTEMD_DIR = Path(__file__).resolve().parent / "systemd"
PACKAGED_AS = ("edge", "service", "systemd")  # edge.service.install reads it there in an installed wheel


class BuildPyWithSystemd(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib, *PACKAGED_AS)
        self.mkpath(str(target))
        for src in sorted(SYSTEMD_DIR.iterdir()):
            if src.is_file():
                self.copy_file(str(src), str(target / src.name))


setup(cmdclass={"build_py": BuildPyWithSystemd})
