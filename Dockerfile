# The one image of the pipeline: every component on Kubeflow Pipelines / Vertex
# AI and every TFJob training worker runs it. The project's code is installed
# in it (the pipeline names modules.trainer.run_fn and
# modules.transform.preprocessing_fn by import path), so nothing is built or
# uploaded at run time.
#
#   docker build -t REGISTRY/tfx-transfer:TAG .
#   docker push REGISTRY/tfx-transfer:TAG
#
# TFX 1.16.0 on Python 3.10, like the development environment.
FROM tensorflow/tfx:1.16.0

# Dataflow, Flink and Spark start this image as the Beam SDK harness: its boot
# program must come from the same Beam release as the SDK installed below.
COPY --from=apache/beam_python3.10_sdk:2.74.0 /opt/apache/beam /opt/apache/beam

WORKDIR /opt/tfx-transfer
COPY setup.py constraints.txt ./
COPY pipeline/ pipeline/
COPY components/ components/
COPY modules/ modules/
COPY serving/ serving/
# The same pins as `make venv`: what ran the tests is what runs on the cluster.
RUN python -m pip install --no-cache-dir -c constraints.txt . \
 && python -c "import pipeline.runners.kubeflow, components.tfjob_worker, components.tfjob_trainer, \
modules.trainer, modules.transform, components.image_example_gen"

# Unprivileged, as the TFJob pods require (runAsUser 1000, read-only root
# filesystem: HOME and /tmp are the writable places).
RUN (getent passwd 1000 || useradd --uid 1000 --no-create-home --home-dir /home/tfx tfx) \
 && mkdir -p /home/tfx && chown 1000:0 /home/tfx && chmod 0770 /home/tfx
ENV HOME=/home/tfx \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000
# A writable working directory: the root filesystem is read-only in the pods,
# and libraries (Beam staging, matplotlib caches) write relative to it.
WORKDIR /home/tfx
# The base image's entrypoint (Beam's boot) stays: Beam runners need it, and
# Kubeflow and the TFJob give their own command.
