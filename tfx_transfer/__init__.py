"""tfx-transfer's import package.

Its subpackages are the repository's folders pipeline/, components/, modules/
and serving/: an install puts them under tfx_transfer/ (setup.py,
package_dir). A source checkout keeps them where they are, and the path below
finds them there, so a second checkout runs its own code without installing.
"""
import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))
_CHECKOUT = _os.path.dirname(_HERE)
if not _os.path.isdir(_os.path.join(_HERE, "pipeline")) and \
        _os.path.isfile(_os.path.join(_CHECKOUT, "setup.py")) and \
        _os.path.isfile(_os.path.join(_CHECKOUT, "pipeline", "pipeline.py")):
    __path__.insert(0, _CHECKOUT)


def __getattr__(name):
    # A KFP schema title is `<namespace>.<Title>` (one dot: TFX's compiler
    # refuses others) and TFX's v2 container entrypoint imports a custom
    # artifact class by that title, so the projector's type must be importable
    # as tfx_transfer.EmbeddingProjection. On demand: importing any
    # tfx_transfer.* module must not load TFX.
    if name == "EmbeddingProjection":
        from tfx_transfer.components.embedding_projector import EmbeddingProjection

        return EmbeddingProjection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
