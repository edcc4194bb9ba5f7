"""Runners of the pipeline of create_pipeline(config): local (LocalDagRunner,
BeamDagRunner) with its summary and compare, and Kubeflow (compile, submit)."""
