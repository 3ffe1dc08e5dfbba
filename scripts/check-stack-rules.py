#!/usr/bin/env python3
"""Evaluate the Rules section of infra/cloudformation.yaml the way CloudFormation does before a
create or update, for every TaskCpu x TaskMemory and MinCapacity x MaxCapacity pair the parameters
themselves allow, and compare the verdict with Fargate's table and with min <= max.

A wrong rule either lets a deploy start that fails halfway (RegisterTaskDefinition or
RegisterScalableTarget refusing the pair) or refuses a good pair; both are reported. The Fargate
table is typed here from the ECS guide ("Troubleshoot Amazon ECS task definition invalid CPU or
memory errors"), apart from the template, so a slip in either shows as a disagreement.

Usage: check-stack-rules.py [TEMPLATE]   (run with the lint venv's python: it imports cfnlint)
"""
import itertools
import sys

from cfnlint.decode import decode

FARGATE = {
    "256": {512, 1024, 2048},
    "512": {1024, 2048, 3072, 4096},
    "1024": set(range(2048, 8192 + 1, 1024)),
    "2048": set(range(4096, 16384 + 1, 1024)),
    "4096": set(range(8192, 30720 + 1, 1024)),
}


def evaluate(node, params):
    """The rule functions the template uses; anything else is an error, not a guess."""
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            return params[arg]
        if fn == "Fn::Equals":
            return evaluate(arg[0], params) == evaluate(arg[1], params)
        if fn == "Fn::Contains":
            return evaluate(arg[1], params) in [evaluate(x, params) for x in arg[0]]
        if fn == "Fn::And":
            return all(evaluate(x, params) for x in arg)
        if fn == "Fn::Or":
            return any(evaluate(x, params) for x in arg)
        if fn == "Fn::Not":
            return not evaluate(arg[0], params)
        raise SystemExit(f"check-stack-rules: rule function {fn} is not handled here")
    if isinstance(node, (str, int, float, bool)):
        return str(node) if not isinstance(node, bool) else node
    raise SystemExit(f"check-stack-rules: cannot evaluate {node!r}")


def passes(rules, params):
    """CloudFormation: a rule applies when its RuleCondition holds (or it has none); every
    assertion of an applying rule must hold. Returns the failing rules' names."""
    failed = []
    for name, rule in rules.items():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], params):
            continue
        if not all(evaluate(a["Assert"], params) for a in rule["Assertions"]):
            failed.append(name)
    return failed


def numbers(param):
    return [str(n) for n in range(int(param["MinValue"]), int(param["MaxValue"]) + 1)]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "infra/cloudformation.yaml"
    template, matches = decode(path)
    if matches:
        raise SystemExit(f"check-stack-rules: cannot read {path}: {matches}")
    rules = template.get("Rules", {})
    p = template["Parameters"]
    defaults = {k: str(v.get("Default", "")) for k, v in p.items()}
    errors = []
    checked = 0
    for cpu, mem in itertools.product(p["TaskCpu"]["AllowedValues"], p["TaskMemory"]["AllowedValues"]):
        want = int(mem) in FARGATE.get(str(cpu), set())
        got = not passes(rules, {**defaults, "TaskCpu": str(cpu), "TaskMemory": str(mem)})
        checked += 1
        if want != got:
            errors.append(f"TaskCpu={cpu} TaskMemory={mem}: Fargate {'accepts' if want else 'refuses'} it, "
                          f"the rules {'accept' if got else 'refuse'} it")
    for mn, mx in itertools.product(numbers(p["MinCapacity"]), numbers(p["MaxCapacity"])):
        want = int(mn) <= int(mx)
        got = not passes(rules, {**defaults, "MinCapacity": mn, "MaxCapacity": mx})
        checked += 1
        if want != got:
            errors.append(f"MinCapacity={mn} MaxCapacity={mx}: should be {'accepted' if want else 'refused'}, "
                          f"the rules {'accept' if got else 'refuse'} it")
    if passes(rules, defaults):
        errors.append(f"the parameter defaults break rules {passes(rules, defaults)}")
    for e in errors:
        print("check-stack-rules:", e)
    print(f"check-stack-rules: {checked} parameter pairs, {len(errors)} wrong verdicts")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
