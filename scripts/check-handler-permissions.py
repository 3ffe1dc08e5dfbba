#!/usr/bin/env python3
"""Does CloudFormation's role (infra/bootstrap.yaml, CloudFormationExecutionRole) hold every
permission that the handlers of every resource type in infra/cloudformation.yaml call?

CloudFormation acts through that role for the service stacks, and a resource type's handlers call
the APIs listed in its registry schema under handlers.<create|read|update|delete>.permissions. A
missing one fails a deploy halfway (often only on an update or a delete, long after review). The
schemas are the ones cfn-lint ships, at the version pinned in scripts/lint-infra.sh:
cfnlint/data/schemas/providers/<region>.json maps each type to resources/<hash>.json.

What is compared: action names only. An action counts as granted when an Allow statement of the
role names it, wildcards included (ec2:* grants ec2:CreateVpc). Resource and Condition are not
evaluated: they are where the role is narrowed on purpose (roles under /PREFIX/, the zayzoon key
through Secrets Manager only), and reading them right would take IAM's evaluator. A policy under
Fn::If (the DNS one) counts as granted: the resource that needs it exists only in the same case.

Which handler permissions are optional (the rule): a permission of the services below that a
handler lists for an integration the template does not use. For each resource type the template
declares, a permission of lambda, firehose, cognito-idp, kms or s3 is required only when a
resource of that type sets one of the properties listed for it in TRIGGERS (a customer KMS key,
log delivery, a Cognito action, a Lambda scalable target...); otherwise it is reported as optional
and not required. The same holds for the few named permissions in NAMED_OPTIONAL (iam:PutRolePolicy
is needed only by a role with inline Policies). Anything else a handler lists is required.

Some permissions a handler does not list are needed all the same because of how the template uses
the type (Secrets Manager asks KMS on the caller's behalf when a secret has KmsKeyId); those are in
EXTRA and required when their property is set.

Usage: check-handler-permissions.py [--template T] [--bootstrap B] [--region R] [--without ACTION]...
--without removes an action from the role before the comparison: the negative control that shows
the check fails when the role lacks something (scripts/lint-infra.sh runs it).
(Run with the lint venv's python: it imports cfnlint.)
"""
import argparse
import fnmatch
import json
import os
import sys

import cfnlint
from cfnlint.decode import decode

HANDLERS = ("create", "read", "update", "delete")
OPTIONAL_SERVICES = {"lambda", "firehose", "cognito-idp", "kms", "s3"}
# (resource type, service) -> properties whose presence (anywhere in the resource's Properties, or
# the given value) makes that service's handler permissions required.
TRIGGERS = {
    ("AWS::ElastiCache::ReplicationGroup", "kms"): ["KmsKeyId"],
    ("AWS::ElastiCache::ReplicationGroup", "firehose"): ["LogDeliveryConfigurations"],
    ("AWS::ElastiCache::ReplicationGroup", "s3"): ["SnapshotArns"],
    ("AWS::ECS::Cluster", "kms"): ["KmsKeyId"],
    ("AWS::Logs::LogGroup", "kms"): ["KmsKeyId"],
    ("AWS::ElasticLoadBalancingV2::Listener", "cognito-idp"): ["AuthenticateCognitoConfig"],
    ("AWS::ApplicationAutoScaling::ScalableTarget", "lambda"): [("ServiceNamespace", "lambda")],
}
NAMED_OPTIONAL = {
    ("AWS::IAM::Role", "iam:PutRolePolicy"): ["Policies"],
}
EXTRA = {
    # Secrets Manager: "To create a secret with a customer managed key you need kms:GenerateDataKey
    # and kms:Decrypt on the key"; reading it back (the handler's read, the dynamic reference) needs
    # kms:Decrypt.
    "AWS::SecretsManager::Secret": [("KmsKeyId", ["kms:GenerateDataKey", "kms:Decrypt"])],
}


def walk(node):
    """Every (key, value) pair anywhere inside a template value."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def uses(resources, trigger):
    for props in resources:
        for k, v in walk(props):
            if isinstance(trigger, tuple):
                if k == trigger[0] and v == trigger[1]:
                    return True
            elif k == trigger:
                return True
    return False


def role_actions(bootstrap):
    template, matches = decode(bootstrap)
    if matches:
        raise SystemExit(f"cannot read {bootstrap}: {matches}")
    role = template["Resources"]["CloudFormationExecutionRole"]["Properties"]
    actions = []
    for policy in role.get("Policies", []):
        if isinstance(policy, dict) and "Fn::If" in policy:
            policy = policy["Fn::If"][1]
        for st in policy["PolicyDocument"]["Statement"]:
            if st.get("Effect") != "Allow":
                continue
            a = st.get("Action", [])
            actions += [a] if isinstance(a, str) else a
    return actions


def granted(permission, actions):
    return any(fnmatch.fnmatchcase(permission.lower(), a.lower()) for a in actions)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", default="infra/cloudformation.yaml")
    ap.add_argument("--bootstrap", default="infra/bootstrap.yaml")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--without", action="append", default=[], help="drop this action from the role")
    ap.add_argument("--show-optional", action="store_true", help="list the permissions the rule left out")
    args = ap.parse_args()

    schemas = os.path.join(os.path.dirname(cfnlint.__file__), "data", "schemas")
    with open(os.path.join(schemas, "providers", f"{args.region}.json")) as f:
        provider = json.load(f)

    template, matches = decode(args.template)
    if matches:
        raise SystemExit(f"cannot read {args.template}: {matches}")
    by_type = {}
    for res in template["Resources"].values():
        by_type.setdefault(res["Type"], []).append(res.get("Properties", {}))

    actions = [a for a in role_actions(args.bootstrap) if a not in args.without]
    missing, optional, required_count = [], [], 0
    for rtype in sorted(by_type):
        with open(os.path.join(schemas, "resources", f"{provider[rtype]}.json")) as f:
            handlers = json.load(f).get("handlers", {})
        needed, extra = {}, set()
        for h in HANDLERS:
            for perm in handlers.get(h, {}).get("permissions", []):
                needed.setdefault(perm, []).append(h)
        for prop, perms in EXTRA.get(rtype, []):
            if uses(by_type[rtype], prop):
                for perm in perms:
                    needed.setdefault(perm, []).append(f"{prop} (not in the schema)")
                    extra.add(perm)
        for perm, hs in sorted(needed.items()):
            service = perm.split(":", 1)[0]
            if service in OPTIONAL_SERVICES and perm not in extra:
                triggers = TRIGGERS.get((rtype, service), [])
                if not any(uses(by_type[rtype], t) for t in triggers):
                    optional.append(f"{rtype}: {perm}")
                    continue
            if (rtype, perm) in NAMED_OPTIONAL and not any(
                    uses(by_type[rtype], t) for t in NAMED_OPTIONAL[(rtype, perm)]):
                optional.append(f"{rtype}: {perm}")
                continue
            required_count += 1
            if not granted(perm, actions):
                missing.append(f"{rtype}: {perm} (handlers: {', '.join(sorted(set(hs)))})")

    print(f"check-handler-permissions: {len(by_type)} resource types, {required_count} handler permissions "
          f"required, {len(optional)} optional ones not required (integrations the template does not use)")
    if args.show_optional:
        for o in optional:
            print("check-handler-permissions: optional, not required:", o)
    for m in missing:
        print("check-handler-permissions: MISSING", m)
    if missing:
        print(f"check-handler-permissions: CloudFormationExecutionRole lacks {len(missing)} of them")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
