"""Python packages each feature of the module needs, checked at first use and installed after one confirmation.

Slicer ships numpy, SimpleITK and vtk built for itself: they are never installed or upgraded here
(a pip constraints file pins the versions Slicer has). PyTorch is installed through the PyTorch
extension's utilities when that extension is present (it picks the CUDA build that fits the
machine); the rest through ``slicer.packaging.pip_ensure`` where Slicer has it (it asks once and
shows progress), else ``slicer.util.pip_install`` after one confirmation dialog. In testing mode
nothing asks. The requirement strings follow pyproject.toml's extras (a test keeps them in step).

Usage::

    installer = DependencyInstaller()
    if not installer.ensure(["analysis", "segmentation"]):
        return  # the user declined
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import tempfile

FEATURES = {
    "core": ("scipy>=1.11", "nibabel>=5.0", "pyyaml>=6.0"),
    "analysis": ("scipy>=1.11", "nibabel>=5.0", "pyyaml>=6.0", "torch>=2.2", "monai>=1.3", "tqdm", "scikit-learn>=1.5"),
    "segmentation": ("nnunetv2>=2.5",),
    "report": ("transformers>=4.44,<4.48", "tokenizers", "peft>=0.10", "accelerate", "llm2vec==0.2.3",
               "huggingface-hub<1.0"),
}
FEATURE_TITLES = {"core": "registration and the lesion centre", "analysis": "the RenalCLIP analysis", "segmentation": "nnU-Net segmentation",
                  "report": "report generation"}
# Distributions Slicer builds itself: never replaced.
PROTECTED = ("numpy", "SimpleITK", "vtk")
IMPORT_NAMES = {"pyyaml": "yaml", "scikit-learn": "sklearn", "huggingface-hub": "huggingface_hub"}
TORCH = "torch"


def distribution_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0]


def import_name(spec: str) -> str:
    name = distribution_name(spec)
    return IMPORT_NAMES.get(name.lower(), name.replace("-", "_"))


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfied(spec: str, version: str | None) -> bool:
    try:
        from packaging.requirements import Requirement
        from packaging.version import InvalidVersion
    except ImportError:
        return True
    try:
        return Requirement(spec).specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return True


def missing(specs, find_spec=importlib.util.find_spec, version_of=_installed_version) -> list[str]:
    """The requirement strings among ``specs`` that are not importable or whose version does not fit."""
    out = []
    for spec in specs:
        if find_spec(import_name(spec)) is None:
            out.append(spec)
            continue
        version = version_of(distribution_name(spec))
        if version is not None and not _satisfied(spec, version):
            out.append(spec)
    return out


def feature_specs(features) -> list[str]:
    specs: list[str] = []
    for f in features:
        if f not in FEATURES:
            raise ValueError(f"unknown feature {f!r} (known: {', '.join(FEATURES)})")
        specs += [s for s in FEATURES[f] if s not in specs]
    return specs


def constraints_text(version_of=_installed_version) -> str:
    """pip constraints pinning Slicer's own packages at the versions installed now."""
    lines = []
    for name in PROTECTED:
        version = version_of(name)
        if version:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + ("\n" if lines else "")


class DependencyInstaller:
    """Checks and installs what a feature needs; ``slicer`` is injectable for tests."""

    def __init__(self, slicer_module=None, find_spec=importlib.util.find_spec, version_of=_installed_version,
                 pytorch_utils=None):
        if slicer_module is None:
            import slicer as slicer_module
        self.slicer = slicer_module
        self.find_spec = find_spec
        self.version_of = version_of
        self._pytorch_utils = pytorch_utils
        self.log: list[str] = []

    def testing(self) -> bool:
        app = getattr(self.slicer, "app", None)
        return bool(app is not None and app.testingEnabled())

    def pytorch_utils(self):
        """The PyTorch extension's PyTorchUtils module, or None if that extension is not installed."""
        if self._pytorch_utils is not None:
            return self._pytorch_utils
        try:
            import PyTorchUtils  # noqa: F401 - provided by the PyTorch extension
        except ImportError:
            return None
        return PyTorchUtils

    def ensure(self, features) -> bool:
        """True when everything ``features`` need is importable (after installing); False if declined."""
        needed = missing(feature_specs(features), self.find_spec, self.version_of)
        if not needed:
            return True
        titles = ", ".join(FEATURE_TITLES.get(f, f) for f in features)
        testing = self.testing()
        torch_spec = next((s for s in needed if distribution_name(s) == TORCH), None)
        utils = self.pytorch_utils() if torch_spec else None
        if utils is not None:
            needed.remove(torch_spec)
            requirement = torch_spec[len(TORCH):] or None
            self.log.append(f"installing PyTorch {requirement or ''} with the PyTorch extension".replace("  ", " "))
            if utils.PyTorchUtilsLogic().installTorch(askConfirmation=not testing,
                                                        torchVersionRequirement=requirement) is None:
                return False
            if not needed:
                return True
        packaging = getattr(self.slicer, "packaging", None)
        constraints = self._constraints_file()
        try:
            if not self._install(needed, titles, testing, packaging, constraints):
                return False
        finally:
            if constraints:
                try:
                    os.remove(constraints)
                except OSError:
                    pass
        importlib.invalidate_caches()
        still = missing(needed, self.find_spec, self.version_of)
        if still:
            raise RuntimeError(f"these packages are still missing after installation: {', '.join(still)}")
        return True

    def _install(self, needed, titles, testing, packaging, constraints) -> bool:
        """One pip run (Slicer's ``pip_ensure`` or ``pip_install``); False if the user declined."""
        if packaging is not None and hasattr(packaging, "pip_ensure") and not testing:
            self.log.append(f"pip_ensure {' '.join(needed)}")
            packaging.pip_ensure(needed, requester=f"RenalCLIP ({titles})", constraints=constraints)
        else:
            if not testing:
                question = (f"{titles.capitalize()} needs these Python packages, not installed yet:\n\n"
                            + "\n".join(needed)
                            + "\n\nInstall them now? This can take several minutes; Slicer's own numpy, "
                              "SimpleITK and vtk are left as they are.")
                if not self.slicer.util.confirmOkCancelDisplay(question, windowTitle="RenalCLIP: install packages"):
                    return False
            args = list(needed) + (["-c", constraints] if constraints else [])
            self.log.append("pip install " + " ".join(args))
            self.slicer.util.pip_install(args)
        return True

    def _constraints_file(self) -> str | None:
        text = constraints_text(self.version_of)
        if not text:
            return None
        fd, path = tempfile.mkstemp(prefix="renalclip-constraints-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path
