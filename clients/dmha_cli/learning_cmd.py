"""``dmha feedback`` and ``dmha model``: teach the model, manage its versions."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from dmha_cli.chat_cmd import client_from_args
from dmha_client._base import FINAL_STATES

__all__ = ["add_parsers"]


def _show_job(job) -> None:
    metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(job.metrics.items()))
    print(f"{job.job_id}  {job.state}" + (f"  version {job.version}" if job.version else ""))
    if job.message:
        print(f"  {job.message}")
    if metrics:
        print(f"  {metrics}")


def submit(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        resp = client.submit_feedback(args.input, args.target)
        print(f"job {resp.job_id}: {resp.status}", file=sys.stderr)
        if resp.status == "candidate":
            print("(stored as a candidate: a trainer must promote it before it is learned)", file=sys.stderr)
        if not args.wait or resp.status in FINAL_STATES:
            print(resp.job_id)
            return 0
        bar = tqdm(total=1, desc="queued", unit="step", file=sys.stderr)
        for event in client.watch_job(resp.job_id):
            if event.total_steps and bar.total != event.total_steps:
                bar.reset(total=event.total_steps)
            bar.set_description(event.state)
            if event.state == "training":
                bar.n = event.step
                bar.set_postfix(loss=f"{event.loss:.3f}")
            bar.refresh()
        bar.close()
        job = client.get_job(resp.job_id)
    _show_job(job)
    if job.state == "deployed":
        return 0
    # Exit 4: the correction did not reach users; say why on stderr too.
    print(f"not deployed ({job.state}): {job.message or 'see dmha jobs show ' + job.job_id}", file=sys.stderr)
    return 4


def job(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        _show_job(client.get_job(args.job_id))
    return 0


def candidates(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for c in client.list_candidates():
            print(f"{c.job_id}  {c.input_text!r} -> {c.target_text!r}")
    return 0


def promote_candidate(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        resp = client.promote_candidate(args.job_id)
    print(f"job {resp.job_id}: {resp.status}")
    return 0


def versions(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for v in client.list_versions():
            mark = "*" if v.live else " "
            print(f"{mark} {v.id:8} parent={v.parent or '-':8} feedback={len(v.feedback_ids)}  {v.status}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        v = client.rollback(args.to or "")
    print(f"live version is now {v.id}")
    return 0


def promote(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        v = client.promote_version(args.version)
    print(f"live version is now {v.id}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, client_flags) -> None:
    """Register ``dmha feedback``, ``dmha jobs`` and ``dmha model``."""
    fb = sub.add_parser("feedback", help='teach the model: dmha feedback "input" "target" --wait')
    client_flags(fb)
    fb.add_argument("input", help="the prompt")
    fb.add_argument("target", help="the answer it should give")
    fb.add_argument("--wait", action="store_true", help="follow training with a progress bar until deployed/rejected")
    fb.set_defaults(func=submit)

    jobs = sub.add_parser("jobs", help="training jobs: show, candidates, promote")
    fbsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    p = fbsub.add_parser("show", help="show a job")
    client_flags(p)
    p.add_argument("job_id")
    p.set_defaults(func=job)
    p = fbsub.add_parser("candidates", help="user feedback awaiting review (trainer/admin)")
    client_flags(p)
    p.set_defaults(func=candidates)
    p = fbsub.add_parser("promote", help="train a candidate (trainer/admin)")
    client_flags(p)
    p.add_argument("job_id")
    p.set_defaults(func=promote_candidate)

    model = sub.add_parser("model", help="model versions: list, rollback, promote")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    p = msub.add_parser("versions", help="list versions (* = live)")
    client_flags(p)
    p.set_defaults(func=versions)
    p = msub.add_parser("rollback", help="serve the live version's parent again (admin)")
    client_flags(p)
    p.add_argument("--to", help="a specific version instead of the parent")
    p.set_defaults(func=rollback)
    p = msub.add_parser("promote", help="serve a version (admin)")
    client_flags(p)
    p.add_argument("version")
    p.set_defaults(func=promote)
