"""tfx-transfer: transfer learning of image classifiers as a TFX pipeline."""
from setuptools import find_packages, setup

_PACKAGES = find_packages(include=["pipeline", "pipeline.*", "components", "components.*",
                                   "modules", "modules.*", "serving", "serving.*"])

setup(
    name="tfx-transfer",
    version="0.1.0",
    description="TFX pipeline for transfer learning of Keras image classifiers, "
                "runnable locally and on Kubeflow Pipelines",
    python_requires=">=3.10,<3.11",
    # The design's folders (pipeline/, components/, modules/, serving/) install
    # under one `tfx_transfer` package instead of claiming four generic
    # top-level import names in site-packages.
    packages=["tfx_transfer"] + ["tfx_transfer." + p for p in _PACKAGES],
    package_dir={"tfx_transfer": "tfx_transfer",
                 **{"tfx_transfer." + p: p.replace(".", "/") for p in _PACKAGES}},
    # Layer counts the weights-file check compares against (pipeline/preflight.py).
    package_data={"tfx_transfer.pipeline": ["backbone_weight_layers.json"]},
    # Versions live in constraints.txt (pip install -c constraints.txt ...).
    install_requires=[
        "tfx==1.16.0",
        "tf-keras",
        "dill",  # tensorflow_transform imports it without declaring it
        "kfp",
        "pyyaml",
        "pillow",
        "matplotlib",
        "scikit-learn",
        "scipy",  # the probe's L-BFGS (modules/probe_solver.py)
        "threadpoolctl",
        "umap-learn",
        "openTSNE",
        "tensorflow-serving-api",
        "grpcio",
        "grpcio-health-checking",
        "kubernetes",
        "tensorflow-datasets",  # tfds:NAME inputs
        "h5py",  # weights-file check before TensorFlow loads (already pulled in by it)
        "tqdm",  # progress meters (already pulled in by tfx's dependencies)
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "kubernetes-validate"]},
    entry_points={"console_scripts": ["tfx-transfer=tfx_transfer.pipeline.cli:main"]},
)
