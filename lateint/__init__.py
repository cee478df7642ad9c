"""lateint: precomputed late-interaction image-text retrieval in JAX.

One namespace: the role folders train/, index/, serve/ and evaluation/ sit next to lateint/ in
the checkout and are the subpackages lateint.train, lateint.index, lateint.serve and
lateint.evaluation. An installed wheel holds them inside lateint/ (pyproject.toml's package-dir);
in a source tree (a checkout, with or without the editable install, or Bazel's runfiles) the
finder below maps the same names onto the sibling folders of this tree, so what is imported is
always this tree's copy. Each role folder's __init__ refuses its bare name (`import serve` from
the repository root), so no module loads under two names.
"""

import importlib.util
import os
import sys

ROLE_PACKAGES = ("train", "index", "serve", "evaluation")
_HERE = os.path.dirname(os.path.abspath(__file__))
_TREE = os.path.dirname(_HERE)


class _RoleFolders:
    """sys.meta_path finder: lateint.<role> -> <tree>/<role>/ (a source tree only)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        package, _, role = fullname.rpartition(".")
        if package != __name__ or role not in ROLE_PACKAGES:
            return None
        folder = os.path.join(_TREE, role)
        init = os.path.join(folder, "__init__.py")
        if not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[folder]
        )


# Installed from a wheel, lateint/train exists and the ordinary import system finds it. First in
# sys.meta_path: under Bazel the virtualenv's editable finder would map to the source checkout
# instead of the runfiles tree this package was imported from.
if not os.path.isdir(os.path.join(_HERE, ROLE_PACKAGES[0])) and not any(
    finder is _RoleFolders for finder in sys.meta_path
):
    sys.meta_path.insert(0, _RoleFolders)
