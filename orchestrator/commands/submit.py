"""`natsbench submit CONFIG`: run a sweep as a Ray Job; `--status JOB` / `--logs JOB` of a job.

The job id is deterministic (`natsbench-<sweep>-<spec hash>`, `-rN` for a resubmission after
the previous job finished). RAY_AUTH_MODE must be the same here and for `ray start`
(`disabled` unless set). A relative SQLite URL is made absolute, because the job runs in an
uploaded copy of the repository: that only reaches the same file on a single machine; use
PostgreSQL for a real cluster.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.commands.common import add_db_argument, checked_db_url

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", nargs="?", help="sweep file inside the repo, e.g. configs/demo.yaml")
    parser.add_argument("--address", default=None, metavar="URL",
                        help=f"Ray dashboard / job API address (default: $RAY_ADDRESS if http, else {DEFAULT_ADDRESS})")
    add_db_argument(parser)
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="override resources.workers")
    parser.add_argument("--python", default=None, metavar="PATH",
                        help="python on the cluster that has natsbench's dependencies (default: this "
                        "interpreter for a loopback address, else `python`)")
    parser.add_argument("--status", metavar="JOB", default=None, help="print the status of job JOB and exit")
    parser.add_argument("--logs", metavar="JOB", default=None, help="print the driver logs of job JOB and exit")
    parser.add_argument("--wait", action="store_true",
                        help="after submitting (or with --status), wait for the job to end; print its logs; "
                        "exit 0 only if it succeeded")


def _address(value: str | None) -> str:
    import os

    env = os.environ.get("RAY_ADDRESS", "")
    return value or (env if env.startswith("http") else DEFAULT_ADDRESS)


def run(args: argparse.Namespace) -> int:
    from orchestrator import submit
    from orchestrator.preflight import check_jobs_address

    address = _address(args.address)
    problem = check_jobs_address(address)
    if problem:  # before any Ray import: a wrong form or a dead address is one line, exit 2
        print(f"natsbench submit: {problem}", file=sys.stderr)
        return 2
    try:
        if args.logs:
            print(submit.job_logs(address, args.logs), end="")
            return 0
        if args.status:
            status = submit.wait(address, args.status) if args.wait else submit.job_status(address, args.status)
            if status is None:
                print(f"natsbench submit: no job {args.status!r} at {address}", file=sys.stderr)
                return 1
            print(status)
            return 0 if status in ("SUCCEEDED", "RUNNING", "PENDING") else 1
        if not args.config:
            print("natsbench submit: give CONFIG, or --status JOB / --logs JOB", file=sys.stderr)
            return 2
        db_url = checked_db_url(args.db, "submit")
        if db_url is None:
            return 2
        from orchestrator.spec import SpecError, load_spec

        try:
            spec = load_spec(args.config)
            submit.config_in_repo(args.config)
        except (SpecError, ValueError) as exc:
            print(f"natsbench submit: {exc}", file=sys.stderr)
            return 2
        job_id, new = submit.submit(args.config, spec, address, db_url,
                                    python=args.python, workers=args.workers)
        if not new:
            print(f"job {job_id} for sweep {spec.name} is already pending/running; not submitting twice",
                  file=sys.stderr)
        print(job_id)
        if args.wait:
            status = submit.wait(address, job_id)
            print(submit.job_logs(address, job_id), end="", file=sys.stderr)
            print(status)
            return 0 if status == "SUCCEEDED" else 1
        return 0
    except ConnectionError as exc:
        print(f"natsbench submit: cannot reach the Ray job API at {address}: {exc}", file=sys.stderr)
        return 1
