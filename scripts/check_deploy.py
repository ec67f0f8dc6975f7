#!/usr/bin/env python3
"""Checks the deployment files against schemas and against each other.

    .venv-tools/bin/python scripts/check_deploy.py [ROOT]

- Kubernetes built-in kinds: kubernetes-validate (PyPI; bundles the API schemas, works offline),
  strict, so a misspelt field fails.
- KEDA's ScaledObject and TriggerAuthentication: a strict JSON Schema of the fields piivault
  uses, written from KEDA's documentation (KEDA's CRDs are not bundled by any offline validator).
- Cross-file rules: the grace period exceeds --shutdown-timeout-secs, probes hit /healthz and
  /readyz on the --metrics-addr port, the pods run as the Dockerfile's non-root user with a
  read-only root (the summary CronJob's too, which runs one `etl report refresh` at a time
  with a deadline), the set-up job has its own service account and stays out of the
  kustomization (a Job cannot be re-applied), KEDA scales the Deployment with the pods' identity
  and reads the queue URL the pod reads, and the compose services that run etl share one image
  built once, with a read-only root.

Prints one JSON object (the commands and environment the files give etl) for the integration
test, which runs them against the real stack. Exit 1 with one line per problem otherwise.
"""
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"

STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "value", "periodSeconds"],
                "properties": {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
            },
        },
    },
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": STR_MAP, "annotations": STR_MAP},
}
# keda.sh/v1alpha1, the fields piivault uses (https://keda.sh/docs/latest/reference/scaledobject-spec/
# and /scalers/aws-sqs/).
SQS_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["awsRegion"],
    "oneOf": [{"required": ["queueURL"]}, {"required": ["queueURLFromEnv"]}],
    "properties": {
        k: {"type": "string"}
        for k in ["queueURL", "queueURLFromEnv", "awsRegion", "awsEndpoint", "identityOwner"]
    }
    | {
        k: {"type": "string", "pattern": "^[0-9]+$"}
        for k in ["queueLength", "activationQueueLength"]
    }
    | {k: {"enum": ["true", "false"]} for k in ["scaleOnInFlight", "scaleOnDelayed"]},
}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    **{
                        k: {"type": "integer", "minimum": 0}
                        for k in [
                            "minReplicaCount",
                            "maxReplicaCount",
                            "idleReplicaCount",
                            "pollingInterval",
                            "cooldownPeriod",
                            "initialCooldownPeriod",
                        ]
                    },
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "behavior": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {"scaleUp": HPA_RULES, "scaleDown": HPA_RULES},
                                    },
                                },
                            },
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"const": "aws-sqs-queue"},
                                "name": {"type": "string"},
                                "metadata": SQS_METADATA,
                                "authenticationRef": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "kind": {
                                            "enum": [
                                                "TriggerAuthentication",
                                                "ClusterTriggerAuthentication",
                                            ]
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["podIdentity"],
                "properties": {
                    "podIdentity": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["provider"],
                        "properties": {
                            "provider": {"enum": ["aws", "aws-eks", "none"]},
                            "roleArn": {"type": "string"},
                            "identityOwner": {"enum": ["keda", "workload"]},
                        },
                    }
                },
            },
        },
    },
}


def flag(args, name):
    """The value of --name=V or --name V in a container's args, or None."""
    for i, a in enumerate(args):
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def check(root: Path):
    problems = []
    kube = root / "deploy" / "kubernetes"
    docs = {}
    for path in sorted(kube.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            kind = doc.get("kind")
            where = f"{path.name}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
            if kind == "Kustomization":
                listed = set(doc.get("resources", []))
                # The set-up Job is applied on its own, per release, before the rollout.
                present = {p.name for p in kube.glob("*.yaml")} - {path.name, "setup-job.yaml"}
                if listed != present:
                    problems.append(f"{path.name}: resources {sorted(listed)} != files {sorted(present)}")
                continue
            if kind in KEDA_SCHEMAS:
                validator = jsonschema.Draft7Validator(KEDA_SCHEMAS[kind])
                for e in validator.iter_errors(doc):
                    at = "/".join(str(p) for p in e.absolute_path)
                    problems.append(f"{where}: {at}: {e.message}")
            else:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    problems.append(f"{where}: no schema for this kind")
                except kubernetes_validate.ValidationError as e:
                    at = "/".join(str(p) for p in e.absolute_path)
                    problems.append(f"{where}: {at}: {e.message}")
            docs[(kind, doc["metadata"]["name"])] = doc

    def one(kind):
        found = [d for (k, _), d in docs.items() if k == kind]
        if len(found) != 1:
            problems.append(f"expected one {kind}, found {len(found)}")
            return {}
        return found[0]

    deployment, scaled, config, job, cron = (
        one("Deployment"),
        one("ScaledObject"),
        one("ConfigMap"),
        one("Job"),
        one("CronJob"),
    )
    dockerfile = (root / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.M)
    image_uid = int(users[-1][0]) if users else None
    if image_uid in (None, 0):
        problems.append("Dockerfile: the runtime stage must end with a numeric non-root USER")

    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    containers = pod.get("containers", [])
    etl = containers[0] if containers else {}
    args = etl.get("args", [])
    if "replicas" in deployment.get("spec", {}):
        problems.append("deployment: `replicas` fights the autoscaler KEDA creates; leave it out")
    if not args or args[0] != "run":
        problems.append(f"deployment: the container must run `etl run`, not {args}")
    shutdown = flag(args, "shutdown-timeout-secs")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if shutdown is None:
        problems.append("deployment: set --shutdown-timeout-secs explicitly")
    elif grace <= int(shutdown):
        problems.append(
            f"deployment: terminationGracePeriodSeconds {grace} must exceed --shutdown-timeout-secs {shutdown}"
        )
    addr = flag(args, "metrics-addr")
    port = int(addr.rsplit(":", 1)[1]) if addr else None
    ports = {p.get("name"): p.get("containerPort") for p in etl.get("ports", [])}
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = etl.get(probe, {}).get("httpGet", {})
        target = ports.get(get.get("port"), get.get("port"))
        if get.get("path") != path or target != port:
            problems.append(f"deployment: {probe} must GET {path} on the --metrics-addr port {port}")
    readiness_timeout = etl.get("readinessProbe", {}).get("timeoutSeconds", 1)
    if readiness_timeout <= 2:
        problems.append("deployment: readinessProbe timeoutSeconds must exceed /readyz's own 2 s checks")
    job_pod = job.get("spec", {}).get("template", {}).get("spec", {})
    if job_pod.get("serviceAccountName") in (None, pod.get("serviceAccountName")):
        problems.append("setup job: needs its own service account (keys init needs kms:Encrypt; consumers must not)")
    cron_job = cron.get("spec", {}).get("jobTemplate", {}).get("spec", {})
    cron_pod = cron_job.get("template", {}).get("spec", {})
    cron_args = [c.get("args", []) for c in cron_pod.get("containers", [])]
    if cron_args != [["report", "refresh"]]:
        problems.append(f"summary cronjob: one container running `etl report refresh`, not {cron_args}")
    if cron.get("spec", {}).get("concurrencyPolicy") != "Forbid":
        problems.append("summary cronjob: concurrencyPolicy Forbid (two rebuilds only wait on each other)")
    if not cron_job.get("activeDeadlineSeconds"):
        problems.append("summary cronjob: set activeDeadlineSeconds, so a stuck rebuild is stopped")
    for name, spec in [("deployment", pod), ("setup job", job.get("spec", {}).get("template", {}).get("spec", {})),
                       ("summary cronjob", cron_pod)]:
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != image_uid:
            problems.append(f"{name}: runAsNonRoot with runAsUser {image_uid} (the Dockerfile's USER)")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: container {c.get('name')} needs a read-only root and no privilege escalation")

    target = scaled.get("spec", {}).get("scaleTargetRef", {}).get("name")
    if target != deployment.get("metadata", {}).get("name"):
        problems.append(f"keda: scaleTargetRef {target} is not the Deployment")
    for trigger in scaled.get("spec", {}).get("triggers", []):
        meta = trigger.get("metadata", {})
        ref = trigger.get("authenticationRef", {}).get("name")
        auth = docs.get(("TriggerAuthentication", ref))
        if ref and auth is None:
            problems.append(f"keda: authenticationRef {ref} does not exist")
        identity = (auth or {}).get("spec", {}).get("podIdentity", {})
        if identity.get("provider") == "aws" and identity.get("identityOwner") != "workload":
            problems.append("keda: podIdentity aws without identityOwner: workload uses the operator's role, not the pods'")
        env_name = meta.get("queueURLFromEnv")
        pod_env = {e["name"] for e in etl.get("env", [])} | set(config.get("data", {}))
        if env_name and env_name not in pod_env:
            problems.append(f"keda: queueURLFromEnv {env_name} is not set in the pod")
        region = config.get("data", {}).get("AWS_REGION")
        if meta.get("awsRegion") != region:
            problems.append(f"keda: awsRegion {meta.get('awsRegion')} differs from the pod's AWS_REGION {region}")

    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose.get("services", {})
    builders = [name for name, svc in services.items() if svc.get("build") == "."]
    if len(builders) != 1:
        problems.append(f"docker-compose.yml: exactly one service should build the Dockerfile, not {builders}")
    image = services.get(builders[0], {}).get("image") if builders else None
    compose_etl = {name: svc for name, svc in services.items() if image and svc.get("image") == image}
    for name, svc in compose_etl.items():
        if svc.get("read_only") is not True:
            problems.append(f"docker-compose.yml: {name} should run with a read-only root like the pod")

    job_spec = job.get("spec", {}).get("template", {}).get("spec", {})
    setup = [c.get("args", []) for c in job_spec.get("initContainers", []) + job_spec.get("containers", [])]
    env_names = sorted(
        set(config.get("data", {}))
        | {e["name"] for c in containers for e in c.get("env", [])}
        | {k for svc in compose_etl.values() for k in svc.get("environment", {})}
    )
    return problems, {
        "deployment_args": args,
        "setup_args": setup,
        "cron_args": cron_args,
        "compose_commands": {n: s.get("command") for n, s in compose_etl.items()},
        "env_names": env_names,
        "grace_seconds": grace,
        "config": config.get("data", {}),
    }


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    problems, facts = check(root)
    if problems:
        for p in problems:
            print(f"check_deploy: {p}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
