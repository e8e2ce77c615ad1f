"""``dmha feedback`` and ``dmha model``: teach the model, manage its versions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dmha_cli.chat_cmd import client_from_args
from dmha_client._base import FINAL_STATES
from dmha_client.errors import ResourceExhausted

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


def _print_insights(doc: dict[str, Any]) -> None:
    versions = doc.get("learner_versions") or []
    learner = f"learner {versions[-1]['version']} ({len(versions)} versions)" if versions else "learner untrained"
    print(
        f"meta-learner: {doc.get('updates', 0)} updates ({doc.get('deployed', 0)} deployed, "
        f"{doc.get('repairs', 0)} repairs); {learner}"
    )
    mechanisms = doc.get("mechanisms") or []
    if not mechanisms:
        print("no edit mechanisms recorded yet: they appear once an update has run")
        return
    print(f"{'layer':>5}  {'module':32} {'edits':>5} {'strength':>8} {'effectiveness':>13} {'confidence':>10}")
    for m in mechanisms:
        print(
            f"{m['layer']:>5}  {m['module']:32} {m['edits']:>5} {m['strength']:>8.3f} "
            f"{m['effectiveness']:>13.3f} {m['confidence']:>10.3f}"
        )


def _write_json(doc: dict[str, Any], target: str) -> None:
    text = json.dumps(doc, indent=1) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    # Written beside the target and renamed: an interrupted export leaves no half file.
    path = Path(target)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(source: str) -> Any:
    """The parsed file; raises ValueError with a message naming the file and the problem."""
    name = "stdin" if source == "-" else source
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {name}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError(f"{name} nests too deeply to be an insights document") from None


def insights(args: argparse.Namespace) -> int:
    if args.import_file is not None:
        try:
            doc = _read_json(args.import_file)
        except ValueError as exc:
            print(f"dmha model insights: {exc}", file=sys.stderr)
            return 2
        if not isinstance(doc, dict):
            print("dmha model insights: the file must hold one JSON object (as --export writes)", file=sys.stderr)
            return 2
        with client_from_args(args) as client:
            try:
                added = client.import_insights(doc)
            except ResourceExhausted as exc:
                print(f"RESOURCE_EXHAUSTED: {exc}", file=sys.stderr)
                print(
                    "the file is larger than the server accepts; an admin may raise learning.max_insights_bytes",
                    file=sys.stderr,
                )
                return 1
        records = doc.get("records")
        total = len(records) if isinstance(records, list) else 0
        print(f"added {added} of {total} records ({total - added} already present)")
        return 0
    with client_from_args(args) as client:
        doc = client.get_insights()
    if args.export_file is not None:
        _write_json(doc, args.export_file)
        if args.export_file != "-":
            n = len(doc.get("records") or [])
            print(f"exported {n} records and {len(doc.get('mechanisms') or [])} mechanisms to {args.export_file}")
        return 0
    _print_insights(doc)
    return 0


_INSIGHTS_HELP = """\
What the causal meta-learner knows (trainer/admin).

Without flags: its counts and, per edit layer, the mechanism table:
  edits          updates whose change went through the layer
  strength       mean share of an edit's effect the layer carried (0-1)
  effectiveness  share of those edits that were deployed (0-1)
  confidence     grows with the number of edits (0-1)

--export FILE saves the whole document (update records included) as JSON.
--import FILE adds such a file's records to this server's meta-learner (admin);
records already present are skipped, so importing a file twice adds nothing.

examples:
  dmha model insights
  dmha model insights --export insights.json
  dmha model insights --import insights.json

exit status: 0 done; 1 the server refused (e.g. INVALID_ARGUMENT naming the bad
field, PERMISSION_DENIED); 2 the file is unreadable or not JSON.
"""


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

    model = sub.add_parser("model", help="model versions: list, rollback, promote; meta-learner insights")
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
    p = msub.add_parser(
        "insights",
        help="what the meta-learner knows: mechanisms, learner versions; export/import (trainer/admin)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_INSIGHTS_HELP,
    )
    client_flags(p)
    io = p.add_mutually_exclusive_group()
    io.add_argument("--export", dest="export_file", metavar="FILE", help="write the document as JSON ('-' = stdout)")
    io.add_argument(
        "--import", dest="import_file", metavar="FILE", help="add the records of an exported file (admin; '-' = stdin)"
    )
    p.set_defaults(func=insights)
