"""tfx-transfer compare: one pipeline run per (backbone, mode, unfreeze depth,
image size), a leaderboard of the results (pipeline/runners/compare.py)."""
from __future__ import annotations

from tfx_transfer.pipeline.cli.options import add_output_flags, add_run_flags, config_from_args


def _split(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _given_size(args, base):
    """[the size] when --image-size, --set image_size= or the config file set one:
    it applies to every combination. [] otherwise: each backbone at its own size
    (the config has filled in the default backbone's, which must not spread)."""
    import yaml

    given = args.image_size is not None or any(
        f.partition("=")[0].strip() == "image_size" for f in args.set_fields or [])
    if not given and args.config:
        with open(args.config) as f:
            raw = yaml.safe_load(f) or {}
        given = "image_size" in raw or "image_size" in (raw.get("model") or {})
    return [base.model.image_size] if given else []


def cmd_compare(args) -> int:
    from tfx_transfer.pipeline import preflight
    from tfx_transfer.pipeline.cli import progress
    from tfx_transfer.pipeline.cli.report import leaderboard_table

    base = config_from_args(args)
    preflight.check_run(base)
    unfreeze = [int(v) for v in _split(args.unfreeze)]
    sizes = [int(v) for v in _split(args.image_sizes)] or _given_size(args, base)
    output, verbosity = base.deploy.output, progress.verbosity(args)
    if verbosity != progress.QUIET:
        print(f"tfx-transfer compare: {base.data.data} -> {output} "
              f"(full log: {output}/{progress.LOG_DIR}/{progress.RUN_LOG})", flush=True)
    # As `run`: one line per component, progress, the TFX log in logs/run.log.
    with progress.run_view(output, verbosity,
                           totals=preflight.expected_examples(base.data.data,
                                                              base.data.eval_fraction)):
        from tfx_transfer.pipeline import data_sources
        from tfx_transfer.pipeline.runners.compare import compare, write_leaderboard

        base = data_sources.prepare(base)
        with progress.component_hooks():
            rows = compare(base, _split(args.backbones), _split(args.modes), unfreeze, sizes)
        paths = write_leaderboard(rows, output)
    print(leaderboard_table(rows))
    print("leaderboard: " + ", ".join(paths.values()))
    return 0


def register(sub):
    p = sub.add_parser("compare", help="run the pipeline per combination and rank the results")
    add_run_flags(p)
    p.add_argument("--backbones", help="comma-separated backbone names")
    p.add_argument("--modes", help="comma-separated modes (linear_probe,fine_tune,lp_ft)")
    p.add_argument("--unfreeze", help="comma-separated unfreeze depths (layer groups) for fine-tuning")
    p.add_argument("--image-sizes", dest="image_sizes", help="comma-separated input sizes")
    add_output_flags(p)
    p.set_defaults(func=cmd_compare)
