"""tfx-transfer compile / submit (pipeline/runners/kubeflow.py does the work)."""
from __future__ import annotations

import sys

from tfx_transfer.pipeline.cli.options import add_run_flags, config_from_args
from tfx_transfer.pipeline.runners.kfp_local import ENGINES
from tfx_transfer.pipeline.runners.kubeflow import PLATFORMS

# compile's own flags that are run config fields
COMPILE_FIELDS = ("image", "data_layout", "beam_args", "tfjob_workers", "tfjob_gpus_per_worker",
                  "tfjob_service_account", "namespace")


def cmd_compile(args) -> int:
    from tfx_transfer.pipeline.runners.kubeflow import declared_parameters, parameter_default, compile_pipeline

    config = config_from_args(args, **{k: getattr(args, k) for k in COMPILE_FIELDS})
    job = compile_pipeline(config, args.package, image=args.image,
                           pipeline_root=args.pipeline_root, platform=args.platform)
    spec = job.get("pipelineSpec", job)
    tasks = sorted(spec["root"]["dag"]["tasks"])
    print(f"wrote {args.package}: {len(tasks)} tasks ({', '.join(tasks)})")
    for name, definition in sorted(declared_parameters(spec).items()):
        print(f"  runtime parameter {name} (default {str(parameter_default(definition))[:120]})")
    if args.platform in ("kubeflow", "local"):
        print("  no latest_blessed_model_resolver: the KFP backend cannot run Resolver tasks "
              "(compile with --platform vertex to keep it)")
    return 0


def cmd_submit(args) -> int:
    from tfx_transfer.pipeline.runners.kubeflow import SubmitError, submit

    if args.local:
        return cmd_submit_local(args)
    if not args.host:
        print("tfx-transfer: error: submit needs --host URL (or --local)", file=sys.stderr)
        return 2
    try:
        result = submit(args.host, args.package, args.param or [], namespace=args.namespace,
                        experiment=args.experiment, run_name=args.run_name,
                        pipeline_root=args.pipeline_root, service_account=args.service_account,
                        token=args.token)
    except SubmitError as e:
        print(f"tfx-transfer: error: {e}", file=sys.stderr)
        return 2
    print(f"run {result.run_id} created")
    return 0


def cmd_submit_local(args) -> int:
    from tfx_transfer.pipeline.runners.kfp_local import LocalRunError, run
    from tfx_transfer.pipeline.runners.kubeflow import SubmitError

    try:
        result = run(args.package, args.param or [], engine=args.engine)
    except (LocalRunError, SubmitError) as e:
        print(f"tfx-transfer: error: {e}", file=sys.stderr)
        return 1
    seconds = sum(t["seconds"] for t in result["tasks"].values())
    print(f"finished {result['run_dir']} ({seconds:.1f}s in tasks)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compile", conflict_handler="resolve",
        help="compile the pipeline for Kubeflow Pipelines / Vertex AI (KubeflowV2DagRunner)")
    add_run_flags(p)
    # Replaces run's --output (a run folder): here it is the compiled file.
    p.add_argument("--output", dest="package", required=True,
                   help="compiled file: .json (PipelineJob) or .yaml (PipelineSpec)")
    p.add_argument("--image", help="container image built from this repository (Dockerfile)")
    p.add_argument("--pipeline-root", dest="pipeline_root", required=True,
                   help="artefact root, e.g. gs://BUCKET/tfx-transfer")
    p.add_argument("--platform", choices=PLATFORMS, default="kubeflow",
                   help="kubeflow: KFP 2.x backend (no Resolver); vertex: Vertex AI Pipelines; "
                        "local: the kubeflow spec with a local root, for submit --local")
    p.add_argument("--data-layout", dest="data_layout", choices=["auto", "folders", "hash"],
                   help="folders (train/ + test/) or hash; auto lists the data folder now")
    p.add_argument("--beam-arg", dest="beam_args", action="append",
                   help="Beam pipeline argument (repeat), e.g. --beam-arg=--runner=DataflowRunner")
    p.add_argument("--tfjob-workers", dest="tfjob_workers", type=int,
                   help="train on a TFJob of N workers (Kubeflow Training Operator)")
    p.add_argument("--tfjob-gpus-per-worker", dest="tfjob_gpus_per_worker", type=int)
    p.add_argument("--tfjob-service-account", dest="tfjob_service_account")
    p.add_argument("--namespace", help="namespace of the TFJobs (default kubeflow)")
    p.set_defaults(func=cmd_compile)

    p = subparsers.add_parser("submit", help="start a run of a compiled pipeline on Kubeflow")
    p.add_argument("package", help="file written by tfx-transfer compile")
    p.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--local", action="store_true",
                   help="run it here, task by task, as the KFP v2 backend would (compile with "
                        "--platform local)")
    p.add_argument("--engine", default="process", choices=ENGINES,
                   help="with --local: run each task in the image (podman, docker) or with "
                        "this environment's Python (process)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument("--experiment", help="experiment name (created when missing)")
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--pipeline-root", dest="pipeline_root",
                   help="override the compiled pipeline root")
    p.add_argument("--service-account", dest="service_account",
                   help="service account of the run's pods")
    p.add_argument("--token", help="bearer token for an authenticated endpoint "
                                   "(e.g. `kubectl create token` of a profile's service account)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="data_root, trainer_config, or a trainer_config field "
                        "(backbone, mode, epochs, image_size, ..., tfjob.workers)")
    p.set_defaults(func=cmd_submit)
