"""Custom TFX components."""
from tfx_transfer.modules import keras_compat  # noqa: F401  (Keras 2 before TensorFlow loads)


def __getattr__(name):
    # The KFP v2 entrypoint imports the projector's artifact class by its type
    # name, components.EmbeddingProjection; imported on demand so that other
    # `components.*` imports do not load TFX.
    if name == "EmbeddingProjection":
        from tfx_transfer.components.embedding_projector import EmbeddingProjection

        return EmbeddingProjection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
