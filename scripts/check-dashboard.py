#!/usr/bin/env python3
"""Check what CloudFormation cannot check before a deploy: that the dashboard body in
infra/cloudformation.yaml is JSON once its ${...} names are filled in (with and without ElastiCache),
that every alarm and every widget reads a metric that exists, and that the server's own metrics are
spelled as SPEC.md §6 spells them. A dashboard body that does not parse fails the deploy halfway;
a misspelt metric makes an alarm or a graph that stays empty forever.

Usage: check-dashboard.py [TEMPLATE]   (run with the lint venv's python: it imports cfnlint)
"""
import json
import re
import sys

from cfnlint.decode import decode

# zayzoon's metrics (SPEC.md §6), namespace METRICS_NAMESPACE as the stack sets it.
ZAYZOON = {"Requests", "Status2xx", "Status3xx", "Status4xx", "Status5xx", "RateLimited", "LatencyP50",
           "LatencyP99", "LatencyMax", "Connections", "RedisChecks", "RedisRoundTrips", "RedisFallbacks",
           "RedisUp"}
KNOWN = {
    "zayzoon": ZAYZOON,
    "AWS/ApplicationELB": {"HealthyHostCount", "UnHealthyHostCount", "RequestCount", "HTTPCode_Target_5XX_Count",
                           "HTTPCode_ELB_5XX_Count", "TargetResponseTime"},
    "AWS/ECS": {"CPUUtilization", "MemoryUtilization"},
    "ECS/ContainerInsights": {"RunningTaskCount", "DesiredTaskCount"},
    "AWS/ElastiCache": {"EngineCPUUtilization", "DatabaseMemoryUsagePercentage", "CurrConnections"},
}


def resolve(node, conditions):
    """Fn::Join, Fn::Sub and Fn::If as CloudFormation resolves them; every other name becomes a
    placeholder without quotes or braces, as real names are."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return [resolve(x, conditions) for x in node]
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Fn::Join":
            return arg[0].join(resolve(x, conditions) for x in arg[1])
        if fn == "Fn::If":
            return resolve(arg[1] if conditions[arg[0]] else arg[2], conditions)
        if fn == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            return re.sub(r"\$\{([^}!]+)\}", lambda m: "name-of-" + m.group(1).replace(".", "-"), text)
        if fn in ("Ref", "Fn::GetAtt"):
            return "name-of-" + (arg if isinstance(arg, str) else "-".join(arg))
    raise SystemExit(f"check-dashboard: cannot resolve {node!r}")


def metric_errors(where, namespace, name):
    if namespace not in KNOWN:
        return [f"{where}: namespace {namespace} is not one this stack writes or reads"]
    if name not in KNOWN[namespace]:
        return [f"{where}: {namespace} has no metric {name}"]
    return []


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "infra/cloudformation.yaml"
    template, matches = decode(path)
    if matches:
        raise SystemExit(f"check-dashboard: cannot read {path}: {matches}")
    resources = template["Resources"]
    errors, widgets = [], 0

    for logical, res in resources.items():
        if res["Type"] == "AWS::CloudWatch::Alarm":
            props = res["Properties"]
            errors += metric_errors(f"alarm {logical}", props["Namespace"], props["MetricName"])

    # Also every METRICS_* the task sets must match what the alarms and widgets read.
    env = {}
    for container in resources["TaskDefinition"]["Properties"]["ContainerDefinitions"]:
        if isinstance(container, dict) and container.get("Name") == "app":
            env = {e["Name"]: e["Value"] for e in container["Environment"] if isinstance(e, dict) and "Name" in e}
    if env.get("METRICS") != "emf" or env.get("METRICS_NAMESPACE") != "zayzoon":
        errors.append(f"the app container must set METRICS=emf and METRICS_NAMESPACE=zayzoon, has {env}")

    boards = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    if not boards:
        errors.append("no AWS::CloudWatch::Dashboard in the template")
    for board in boards:
        for elasticache in (False, True):
            label = "with ElastiCache" if elasticache else "with the sidecar"
            body = resolve(board["Properties"]["DashboardBody"],
                           {"UseElastiCache": elasticache, "UseSidecar": not elasticache})
            try:
                parsed = json.loads(body)
            except json.JSONDecodeError as e:
                errors.append(f"dashboard body {label} is not JSON: {e}")
                continue
            for w in parsed["widgets"]:
                widgets += 1
                for m in w.get("properties", {}).get("metrics", []):
                    errors += metric_errors(f"dashboard widget {w['properties'].get('title')!r} ({label})", m[0], m[1])
    for e in errors:
        print("check-dashboard:", e)
    print(f"check-dashboard: {widgets} widgets in both variants, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
