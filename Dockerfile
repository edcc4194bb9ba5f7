# The one image of the pipeline: every component on Kubeflow Pipelines / Vertex
# AI and every TFJob training worker runs it. The project's code is installed
# in it (the pipeline names tfx_transfer.modules.trainer.run_fn and
# tfx_transfer.modules.transform.preprocessing_fn by import path), so nothing is built or
# uploaded at run time.
#
#   docker build -t REGISTRY/tfx-transfer:TAG .
#   docker push REGISTRY/tfx-transfer:TAG
#
# TFX 1.16.0 on Python 3.10, like the development environment. Where no
# registry can be reached, `make base-image image` builds on a local Debian +
# Python 3.10 base instead (k8s/image/), installing from a wheelhouse
# downloaded on the host:
#   --build-arg BASE_IMAGE=localhost/tfx-transfer-base:py3.10 \
#   --build-arg BEAM_IMAGE=localhost/tfx-transfer-beam-stub:none \
#   --build-arg PIP_ARGS="--no-index --find-links /context/build/wheelhouse"
ARG BASE_IMAGE=tensorflow/tfx:1.16.0
ARG BEAM_IMAGE=apache/beam_python3.10_sdk:2.74.0
FROM ${BEAM_IMAGE} AS beam
FROM ${BASE_IMAGE}
ARG PIP_ARGS=""

# Dataflow, Flink and Spark start this image as the Beam SDK harness: its boot
# program must come from the same Beam release as the SDK installed below.
COPY --from=beam /opt/apache/beam /opt/apache/beam

WORKDIR /opt/tfx-transfer
COPY setup.py constraints.txt ./
COPY pipeline/ pipeline/
COPY components/ components/
COPY modules/ modules/
COPY serving/ serving/
COPY tfx_transfer/ tfx_transfer/
# The same pins as `make venv`: what ran the tests is what runs on the cluster.
# setuptools first: setup.py needs it to say what to install.
RUN --mount=type=bind,target=/context \
    python -m pip install --no-cache-dir $PIP_ARGS -c constraints.txt setuptools wheel \
 && python -m pip install --no-cache-dir $PIP_ARGS -c constraints.txt . \
 && python -c "import tfx_transfer.pipeline.runners.kubeflow, tfx_transfer.components.tfjob_worker, tfx_transfer.components.tfjob_trainer, \
tfx_transfer.modules.trainer, tfx_transfer.modules.transform, tfx_transfer.components.image_example_gen"

# Unprivileged, as the TFJob pods require (runAsUser 1000, read-only root
# filesystem: HOME and /tmp are the writable places).
#
# Air-gapped clusters: WEIGHTS names a folder of the build context holding
# Keras' ImageNet weight files (`make image WEIGHTS=../shared/weights` copies
# them to build/weights). They go outside HOME, since a TFJob worker's HOME is
# an emptyDir that hides the image's, and HOME's .keras/models links to them,
# where tf_keras itself looks; TFX_TRANSFER_WEIGHTS_DIR tells the trainer.
ARG WEIGHTS=""
ENV TFX_TRANSFER_WEIGHTS_DIR=/opt/tfx-transfer/keras/models
RUN --mount=type=bind,target=/context \
    (getent passwd 1000 || useradd --uid 1000 --no-create-home --home-dir /home/tfx tfx) \
 && mkdir -p /home/tfx/.keras $TFX_TRANSFER_WEIGHTS_DIR \
 && if [ -n "$WEIGHTS" ]; then cp /context/$WEIGHTS/*.h5 $TFX_TRANSFER_WEIGHTS_DIR/; fi \
 && ln -s $TFX_TRANSFER_WEIGHTS_DIR /home/tfx/.keras/models \
 && chown -R 1000:0 /home/tfx $TFX_TRANSFER_WEIGHTS_DIR && chmod 0770 /home/tfx
ENV HOME=/home/tfx \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000
# A writable working directory: the root filesystem is read-only in the pods,
# and libraries (Beam staging, matplotlib caches) write relative to it.
WORKDIR /home/tfx
# The base image's entrypoint (Beam's boot) stays: Beam runners need it, and
# Kubeflow and the TFJob give their own command.
