#!/usr/bin/env python3
"""Checks examples/grafana-aigw.json and examples/prometheus-alerts.yml against
what a live aigw exports, so that they stay true as metrics change.

usage: check-dashboards.py METRICS_SCRAPE DASHBOARD_JSON ALERTS_YML [--pending NAME ...]

METRICS_SCRAPE is the text of a /metrics scrape. Every aigw_* name written in the
dashboard or the rules (queries, descriptions, annotations) must be a family of
that scrape (histograms: NAME, NAME_bucket, NAME_sum, NAME_count); the label names
a query matches on or aggregates by must be labels the scrape shows on that
metric. --pending names a metric announced but not exported yet: it may be absent,
and once the scrape has it the check fails so that the exemption goes.
Structure: the dashboard's schemaVersion, its `datasource` variable, every
panel querying through it; each alert rule's for:, severity and annotations.
Prints each problem on a line; exit status 1 if any. Standard library only.
"""
import json
import re
import sys

NAME = re.compile(r"\baigw_[a-zA-Z0-9_]*[a-zA-Z0-9]")
SELECTOR = re.compile(r"\b(aigw_[a-zA-Z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
# labels Prometheus adds at scrape time, and histogram_quantile's
IMPLICIT_LABELS = {"instance", "job", "le"}


def parse_scrape(text):
    """families: name -> set of label names seen on its samples (histograms under
    each of their series names)."""
    families = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names = [name] + ([name + s for s in ("_bucket", "_sum", "_count")] if kind == "histogram" else [])
            for n in names:
                families.setdefault(n, set())
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
            families.setdefault(m.group(1), set()).update(labels)
    return families



def check_names(where, text, families, pending, problems, used):
    for name in sorted(set(NAME.findall(text))):
        used.add(name)
        if name not in families and name not in pending:
            problems.append(f"{where}: {name} is not a metric aigw exports")


def check_labels(where, expr, families, problems):
    metrics = set(NAME.findall(expr))
    for name, matchers in SELECTOR.findall(expr):
        have = families.get(name)
        if not have:
            continue   # no sample in the scrape to compare with (or pending)
        for label in MATCHER.findall(matchers):
            if label not in have and label not in IMPLICIT_LABELS:
                problems.append(f"{where}: {name} has no label {label!r} (it has: {', '.join(sorted(have)) or 'none'})")
    # by (...): each label must be on some metric the expression reads
    seen = set()
    for name in metrics:
        seen |= families.get(name, set())
        if name.endswith("_bucket"):
            seen.add("le")
    if not any(families.get(n) for n in metrics):
        return
    for group in GROUPING.findall(expr):
        for label in (l.strip() for l in group.split(",")):
            if label and label not in seen and label not in IMPLICIT_LABELS:
                problems.append(f"{where}: grouping label {label!r} is on none of {', '.join(sorted(metrics))}")


def check_dashboard(path, families, pending, problems, used):
    text = open(path, encoding="utf-8").read()
    try:
        dash = json.loads(text)
    except ValueError as e:
        problems.append(f"{path}: not JSON: {e}")
        return
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"{path}: schemaVersion {dash.get('schemaVersion')!r}, want >= 36")
    variables = dash.get("templating", {}).get("list", [])
    if not any(v.get("name") == "datasource" and v.get("type") == "datasource" and v.get("query") == "prometheus"
               for v in variables):
        problems.append(f"{path}: no template variable `datasource` of type datasource, query prometheus")
    check_names(path, text, families, pending, problems, used)
    ids = set()
    rows = set()
    npanels = 0
    for p in dash.get("panels", []):
        where = f"{path}: panel {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"{where}: gridPos wider than 24 columns")
        if p.get("type") == "row":
            rows.add(p.get("title"))
            continue
        npanels += 1
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{where}: query {t.get('refId')} datasource is not ${{datasource}}")
            expr = t.get("expr", "")
            if not NAME.search(expr):
                problems.append(f"{where}: query {t.get('refId')} reads no aigw_* metric")
            check_labels(where, expr, families, problems)
    for v in variables:
        q = v.get("definition") or ""
        if q:
            check_labels(f"{path}: variable {v.get('name')}", q, families, problems)
    if npanels == 0:
        problems.append(f"{path}: no panels")
    return rows


def alert_exprs(lines):
    """(alert name, expression) of each rule; a plain line-based reader of the
    rules file's `expr: TEXT` and `expr: |` blocks (no YAML library needed)."""
    out = []
    alert = None
    i = 0
    while i < len(lines):
        m = re.match(r"\s*- alert:\s*(\S+)", lines[i])
        if m:
            alert = m.group(1)
        m = re.match(r"(\s*)expr:\s*(.*)$", lines[i])
        if m:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in ("|", ">", "|-", ">-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                out.append((alert, " ".join(body)))
                continue
            out.append((alert, rest))
        i += 1
    return out


def check_alerts(path, families, pending, problems, used):
    text = open(path, encoding="utf-8").read()
    check_names(path, text, families, pending, problems, used)
    lines = text.splitlines()
    exprs = alert_exprs(lines)
    if not exprs:
        problems.append(f"{path}: no rule expressions")
    for alert, expr in exprs:
        check_labels(f"{path}: {alert}", expr, families, problems)
    # each rule's block, from its `- alert:` to the next
    starts = [i for i, l in enumerate(lines) if re.match(r"\s*- alert:", l)] + [len(lines)]
    for a, b in zip(starts, starts[1:]):
        block = "\n".join(lines[a:b])
        name = lines[a].split(":", 1)[1].strip()
        for need in ("expr:", "for:", "severity:", "summary:", "description:"):
            if not re.search(r"^\s*" + need, block, re.M):
                problems.append(f"{path}: alert {name} has no {need[:-1]}")


def main(argv):
    pending = set()
    args = []
    it = iter(argv[1:])
    for a in it:
        if a == "--pending":
            pending.add(next(it, ""))
        else:
            args.append(a)
    if len(args) != 3:
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    families = parse_scrape(open(args[0], encoding="utf-8").read())
    if not any(n.startswith("aigw_") for n in families):
        print(f"{args[0]}: no aigw_* family in the scrape", file=sys.stderr)
        return 1
    problems = []
    used = set()
    check_dashboard(args[1], families, pending, problems, used)
    check_alerts(args[2], families, pending, problems, used)
    for name in sorted(pending):
        if name in families:
            problems.append(f"--pending {name}: aigw exports it now; drop the exemption")
    for p in problems:
        print(p)
    print(f"checked {len(used)} aigw_* names against {sum(n.startswith('aigw_') for n in families)} exported; "
          f"{len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
