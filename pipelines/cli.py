"""The ``genie`` command line.

Exit codes: 0 success, 1 the work failed, 2 bad usage or input (a missing file, a bad option).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("genie")


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _quiet_prefect() -> None:
    # An in-process run starts a temporary Prefect server; keep it offline and out of the way.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _need_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} not found: {path}")
    return p


def _need_data(path: str) -> Path:
    p = Path(path)
    if not (p / "audit").is_dir():
        raise UsageError(f"no audit log under {path}: is it a build-dataset output folder?")
    return p


def _need_data_url(path: str) -> str | Path:
    """A local data root (checked as :func:`_need_data`) or a URL such as s3://bucket/genie."""
    from pipelines.store import Store, is_url

    if not is_url(path) or path.startswith("file://"):
        return _need_data(path.removeprefix("file://"))
    try:
        found = Store.at(path).walk("audit", ".parquet")
    except Exception as exc:  # a missing driver, bad credentials, an unreachable endpoint
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not found:
        raise UsageError(f"no audit log under {path}: is it a build-dataset output?")
    return path


# ---------------------------------------------------------------------------------------------


def cmd_dataset_build(a: argparse.Namespace) -> int:
    _need_file(a.sources, "sources file")
    if a.runner.partition("://")[0] not in ("threads", "processes", "dask", "tcp", "ray"):
        raise UsageError(
            f"unknown --runner {a.runner!r}: threads, processes, dask, dask://HOST:PORT, ray, "
            "ray://HOST:PORT"
        )
    _quiet_prefect()
    from pipelines.flows.build_dataset import build_dataset

    summary = build_dataset(
        sources=a.sources,
        out=a.out,
        enable_file_urls=a.enable_file_urls,
        threshold=a.threshold,
        model=a.model,
        use_model=not a.no_model,
        shard_max_mb=a.shard_max_mb,
        dataset=a.dataset,
        retry_failed=a.retry_failed,
        runner=a.runner,
        workers=a.workers,
        scratch=a.scratch,
    )
    print(
        f"dataset {summary['version']}: kept {summary['n_kept']} of {summary['n_clips']} clips "
        f"from {summary['n_videos']} videos in {summary['n_shards']} shards"
    )
    print(f"manifest: {summary['manifest']}")
    print(f"audit:    genie audit summary --data {a.out}")
    return 0


def cmd_audit_summary(a: argparse.Namespace) -> int:
    from filters import audit

    data = _need_data_url(a.data)
    rows = audit.summary(data)
    if a.json:
        print(
            json.dumps(
                [dict(zip(("step", "decision", "reason", "count"), r, strict=True)) for r in rows],
                indent=2,
            )
        )
        return 0
    print(f"{'step':<10} {'decision':<8} {'reason':<24} {'count':>7}")
    for step, decision, reason, n in rows:
        print(f"{step:<10} {decision:<8} {reason:<24} {n:>7}")
    return 0


def cmd_audit_explain(a: argparse.Namespace) -> int:
    from filters import audit

    data = _need_data_url(a.data)
    rows = audit.explain(data, a.id)
    if not rows:
        print(f"no audit rows for {a.id!r}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        what = r["clip_id"] or r["video_id"] or r["source_url"]
        line = f"{r['ts']}  {r['step']:<8} {r['decision']:<5} {r['reason']:<20} {what}"
        if r["score"] is not None:
            thr = "" if r["threshold"] is None else f" threshold={r['threshold']:.3f}"
            line += f"  score={r['score']:.3f}{thr} model={r['model_version']}"
        if r["shard"]:
            line += f"  shard={r['shard']}"
        print(line)
        if r["message"]:
            print(f"    message: {r['message']}")
        if r["features"] and r["step"] in ("score", "clip") and r["clip_id"]:
            feats = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["features"].items()))
            print(f"    features: {feats}")
        if r["step"] == "score" and r["features"] and r["model_version"]:
            model = _model_for(r["model_version"], a.model)
            if model is None:
                print(
                    f"    (model {r['model_version']} not found: pass --model to see what weighed most)"
                )
            else:
                weights = ", ".join(f"{k} {v:+.2f}" for k, v in model.explain(r["features"], k=5))
                print(f"    weighed most (change in log-odds of 'good'): {weights}")
    clip = next((r for r in rows if r["clip_id"] == a.id), None)
    if clip is not None:
        from pipelines.build import Layout
        from pipelines.store import Store

        store = Store.at(data)
        key = Layout.clip(clip["video_id"], a.id)
        print(f"clip file: {store.url(key)}{'' if store.exists(key) else ' (missing)'}")
    return 0


def _model_for(version: str, path: str | None) -> Any:
    """The clip filter with this version: the one given, else the shipped default, else None."""
    from filters.classifier import ClipClassifier, load_default

    for m in (ClipClassifier.load(path) if path else None, load_default()):
        if m is not None and m.version == version:
            return m
    return None


def cmd_audit_report(a: argparse.Namespace) -> int:
    from filters.report import write_report

    data = _need_data_url(a.data)
    out = write_report(data, Path(a.out), per_section=a.per_section)
    print(f"report: {out}")
    return 0


def cmd_filter_train(a: argparse.Namespace) -> int:
    _need_data_url(a.data)
    _need_file(a.labels, "labels file")
    _quiet_prefect()
    from pipelines.flows.train_clip_filter import train_clip_filter

    res = train_clip_filter(
        data=a.data, labels=a.labels, out=a.out, target_precision=a.target_precision, seed=a.seed
    )
    m = res["metrics"]
    print(
        f"clip filter {res['version']} ({res['family']}): threshold {res['threshold']:.3f}"
        f"{'' if res['threshold_met'] else ' (target precision NOT met)'}"
    )
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    for kind, r in sorted(res["bad_kind_recall"].items()):
        print(f"  dropped {kind}: {r:.0%}")
    print(f"model:  {res['model']}")
    print(f"report: {res['report']}")
    return 0


def cmd_filter_label(a: argparse.Namespace) -> int:
    from filters.classifier import ClipClassifier, load_default
    from filters.label import make_server

    data = _need_data(a.data)
    model = ClipClassifier.load(a.model) if a.model else load_default()
    srv = make_server(data, Path(a.out), model, host=a.host, port=a.port, limit=a.limit)
    port = srv.server_address[1]
    print(f"labelling page: http://{a.host}:{port}/  (ratings go to {a.out}; Ctrl-C to stop)")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def cmd_sample_make(a: argparse.Namespace) -> int:
    from pipelines.sample import make_sample_corpus

    out = make_sample_corpus(Path(a.out), size=a.size)
    print(f"sample corpus: {out}")
    print(f"sources:       {Path(out) / 'sources.yaml'}")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genie", description="Platformer videos to a playable world model (Genie)."
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    ds = sub.add_parser("dataset", help="build the clip dataset").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND"
    )
    b = ds.add_parser("build", help="run the build-dataset flow in this process (no server needed)")
    b.add_argument("--sources", required=True, help="YAML or text file of source URLs")
    b.add_argument(
        "--out",
        required=True,
        help="data root: manifest.json, shards/, audit/; a folder or a URL such as s3://bucket/genie",
    )
    b.add_argument("--enable-file-urls", action="store_true", help="accept file:// URLs")
    b.add_argument(
        "--threshold", type=float, default=None, help="override the classifier threshold"
    )
    b.add_argument(
        "--model", default=None, help="clip-filter model (.skops); default: the shipped one"
    )
    b.add_argument(
        "--no-model", action="store_true", help="score nothing; keep every clip that passes"
    )
    b.add_argument(
        "--shard-max-mb", type=int, default=256, help="shard size limit in MiB (default 256)"
    )
    b.add_argument(
        "--dataset", default="genie", help="dataset name, the shard prefix (default genie)"
    )
    b.add_argument(
        "--retry-failed", action="store_true", help="retry videos that failed permanently before"
    )
    b.add_argument(
        "--runner",
        default="threads",
        help="where the per-video pass runs: threads (default), processes, dask, "
        "dask://HOST:PORT, ray, ray://HOST:PORT",
    )
    b.add_argument(
        "--workers", type=int, default=4, help="threads or processes on this machine (default 4)"
    )
    b.add_argument(
        "--scratch",
        default=None,
        help="local folder for downloads and clips being cut when --out is a URL",
    )
    b.set_defaults(fn=cmd_dataset_build)

    au = sub.add_parser("audit", help="why clips were kept or dropped").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND"
    )
    s = au.add_parser("summary", help="counts per step, decision and reason")
    s.add_argument("--data", required=True, help="a build-dataset output folder or URL")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_audit_summary)
    e = au.add_parser("explain", help="every audit row for a video or clip ID")
    e.add_argument("id", help="a video ID or clip ID")
    e.add_argument("--data", required=True, help="a build-dataset output folder or URL")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument(
        "--model", default=None, help="the clip filter the build used, if not the shipped one"
    )
    e.set_defaults(fn=cmd_audit_explain)
    r = au.add_parser("report", help="an HTML page: counts, score histogram, contact sheets")
    r.add_argument("--data", required=True, help="a build-dataset output folder or URL")
    r.add_argument("--out", required=True, help="the HTML file to write")
    r.add_argument(
        "--per-section", type=int, default=24, help="clips shown per section (default 24)"
    )
    r.set_defaults(fn=cmd_audit_report)

    fi = sub.add_parser("filter", help="the clip-quality classifier").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND"
    )
    t = fi.add_parser(
        "train", help="train, evaluate and version the classifier (train-clip-filter flow)"
    )
    t.add_argument(
        "--data", required=True, help="a build-dataset output folder (its clips' features)"
    )
    t.add_argument("--labels", required=True, help="CSV id,rating[,kind][,note]")
    t.add_argument(
        "--out",
        default="data/models/clip-filter",
        help="models folder (default data/models/clip-filter)",
    )
    t.add_argument(
        "--target-precision", type=float, default=0.9, help="precision of kept clips (default 0.9)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_filter_train)
    lb = fi.add_parser(
        "label", help="a local page to rate clips, least certain first; writes a labels CSV"
    )
    lb.add_argument("--data", required=True, help="a build-dataset output folder")
    lb.add_argument(
        "--out", required=True, help="the labels CSV to write (existing ratings are kept)"
    )
    lb.add_argument(
        "--model", default=None, help="model to rank clips by uncertainty (default: shipped)"
    )
    lb.add_argument("--limit", type=int, default=60, help="clips per page (default 60)")
    lb.add_argument("--host", default="127.0.0.1")
    lb.add_argument("--port", type=int, default=8765)
    lb.set_defaults(fn=cmd_filter_label)

    sm = sub.add_parser("sample", help="the offline sample corpus").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND"
    )
    m = sm.add_parser("make", help="render platformer gameplay and bad examples (cached)")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--size", choices=("tiny", "small"), default="small")
    m.set_defaults(fn=cmd_sample_make)
    from pipelines.cli_genie import register as register_genie
    from pipelines.cli_play import register as register_play

    register_genie(sub)
    register_play(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _setup_logging(a.verbose)
    try:
        return int(a.fn(a))
    except UsageError as exc:
        print(f"genie: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genie: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI's last word: a clear line, the traceback with -v
        if a.verbose:
            raise
        print(f"genie: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
