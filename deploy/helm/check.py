"""``make k8s-check``: the Helm chart checked offline, as the official Airflow chart checks itself.

1. helm and kubeconform, ``go install``-ed into the project cache when missing
   (``<cache_dir>/k8s/bin``, pinned versions below).
2. The Kubernetes JSON schemas that the PyPI package ``kubernetes-validate`` ships, prepared for
   kubeconform in ``<cache_dir>/k8s/schemas`` (``$ref``s made relative, ``$id`` dropped).
3. For every profile values file: ``helm lint --strict``, ``helm template``, then kubeconform
   ``-strict`` on the rendered manifests for the oldest and newest Kubernetes the chart supports.
   The custom resources (Strimzi, K8ssandra, Prometheus Operator) have no schema here: kubeconform
   skips exactly those kinds (never ``-ignore-missing-schemas``, so a typo in a built-in kind
   still fails), and their ``metadata`` is validated against Kubernetes' ObjectMeta schema.

Exits non-zero with what failed and what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "retail-platform"
PROFILES = ("test", "demo")
HELM = ("helm.sh/helm/v3/cmd/helm", "v3.22.0")
KUBECONFORM = ("github.com/yannh/kubeconform/cmd/kubeconform", "v0.8.0")
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
# Kinds whose schemas (CRDs) are not in the repository nor shipped by any package reachable here.
CUSTOM_KINDS = (
    "kafka.strimzi.io/v1/Kafka",
    "kafka.strimzi.io/v1/KafkaNodePool",
    "kafka.strimzi.io/v1/KafkaTopic",
    "kafka.strimzi.io/v1/KafkaUser",
    "k8ssandra.io/v1alpha1/K8ssandraCluster",
    "monitoring.coreos.com/v1/PrometheusRule",
    "monitoring.coreos.com/v1/PodMonitor",
)
GO = shutil.which("go") or "/usr/local/go/bin/go"
STRIMZI_VERSION = "1.2.0"
STRIMZI_POM = Path(__file__).resolve().parent / "strimzi" / "pom.xml"
STRIMZI_MODEL = "io.strimzi.api.kafka.model"
STRIMZI_CLASSES = {
    "Kafka": f"{STRIMZI_MODEL}.kafka.Kafka",
    "KafkaNodePool": f"{STRIMZI_MODEL}.nodepool.KafkaNodePool",
    "KafkaTopic": f"{STRIMZI_MODEL}.topic.KafkaTopic",
    "KafkaUser": f"{STRIMZI_MODEL}.user.KafkaUser",
}


class CheckError(Exception):
    """A check failed; the message says what to do."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("RETAIL_CACHE_DIR") or Path(base) / "retail-platform") / "k8s"


def tool(name: str) -> Path:
    """The cached binary of ``name`` (helm or kubeconform)."""
    version = {"helm": HELM[1], "kubeconform": KUBECONFORM[1]}[name]
    return cache_dir() / "bin" / version / name


def ensure_tool(name: str, module: str, version: str) -> Path:
    path = tool(name)
    if path.exists():
        return path
    if not Path(GO).exists():
        raise CheckError(f"no Go toolchain to install {name}: install Go 1.26 (/usr/local/go)")
    print(f"installing {name} {version} with go install ...", file=sys.stderr)
    env = {**os.environ, "GOBIN": str(path.parent), "CGO_ENABLED": "0"}
    subprocess.run([GO, "install", f"{module}@{version}"], check=True, env=env)
    return path


def schemas_dir() -> Path:
    """kubernetes-validate's schemas, rewritten once so kubeconform resolves their $refs."""
    import kubernetes_validate

    src = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    from kubernetes_validate.version import __version__

    out = cache_dir() / "schemas" / __version__
    for version in KUBERNETES_VERSIONS:
        name = f"v{version}-local-strict"
        done = out / name / ".prepared"
        if done.exists():
            continue
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for f in (src / name).glob("*.json"):
            text = f.read_text().replace('"/api/_definitions.json#', '"_definitions.json#')
            doc = json.loads(text)
            doc.pop("$id", None)
            (target / f.name).write_text(json.dumps(doc))
        done.touch()
    return out


def java21() -> Path | None:
    """A java of version 21 or newer (Strimzi's CRD generator needs it): JAVA_HOME's, then the
    JDKs under /usr/lib/jvm; None when there is none."""
    homes = [os.environ.get("JAVA_HOME", ""), *sorted(map(str, Path("/usr/lib/jvm").glob("*")))]
    for home in filter(None, homes):
        java = Path(home) / "bin" / "java"
        if not java.exists():
            continue
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if major >= 21:
            return java
    return None


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties
    and does not keep unknown fields: an unknown field then fails, as the API server prunes or
    refuses it."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def strimzi_schemas() -> Path | None:
    """JSON schemas of the Strimzi kinds the chart uses, generated from Strimzi's own API model
    with its CRD generator (Maven Central) into the cache; None (and why, on stderr) when no
    Java 21+ is found. Nothing generated is committed."""
    root = cache_dir() / f"strimzi-{STRIMZI_VERSION}"
    out = root / "schemas"
    if (out / ".prepared").exists():
        return out
    java = java21()
    if java is None:
        print(
            "k8s-check: no Java 21+ (JAVA_HOME or /usr/lib/jvm): the Strimzi resources are not "
            "schema-checked; install a JDK 21 to check them",
            file=sys.stderr,
        )
        return None
    lib = root / "lib"
    if not (lib / ".complete").exists():
        shutil.rmtree(lib, ignore_errors=True)
        lib.mkdir(parents=True)
        run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                STRIMZI_POM,
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            f"fetching Strimzi {STRIMZI_VERSION}'s API and CRD generator from Maven Central",
        )
        (lib / ".complete").touch()
    crds = root / "crds"
    crds.mkdir(parents=True, exist_ok=True)
    cmd: list[str | Path] = [java, "-cp", f"{lib}/*", "io.strimzi.crdgenerator.CrdGenerator"]
    cmd += ["--yaml", "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1"]
    cmd += [f"{cls}={crds / kind.lower()}.yaml" for kind, cls in STRIMZI_CLASSES.items()]
    run(cmd, "Strimzi's CRD generator")
    for kind in STRIMZI_CLASSES:
        crd = yaml.safe_load((crds / f"{kind.lower()}.yaml").read_text())
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            target = out / group / f"{kind.lower()}_{version['name']}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(_strict(version["schema"]["openAPIV3Schema"])))
    (out / ".prepared").touch()
    return out


def _cel_failures(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """The CEL rules (``x-kubernetes-validations``) of ``schema`` and its sub-schemas that
    ``value`` breaks, evaluated as the API server would, with ``self`` the value at each rule."""
    import celpy

    out = []
    for rule in schema.get("x-kubernetes-validations", []):
        env = celpy.Environment()
        program = env.program(env.compile(rule["rule"]))
        try:
            ok = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:
            ok = exc
        if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            out.append(f"{path}: {rule.get('message') or rule['rule']}")
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                out += _cel_failures(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += _cel_failures(schema["items"], item, f"{path}[{i}]")
    return out


def check_strimzi_cel(manifests: str, strimzi: Path) -> None:
    """The Strimzi resources against their CRDs' CEL rules, which kubeconform does not run."""
    crds = strimzi.parent / "crds"
    for doc in yaml.safe_load_all(manifests):
        if not doc or doc.get("kind") not in STRIMZI_CLASSES:
            continue
        crd = yaml.safe_load((crds / f"{doc['kind'].lower()}.yaml").read_text())
        version = doc["apiVersion"].split("/")[1]
        (schema,) = [
            v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version
        ]
        failures = _cel_failures(schema, doc, "")
        if failures:
            raise CheckError(
                f"{doc['kind']} {doc['metadata']['name']} breaks its CRD's CEL rules: "
                + "; ".join(failures)
            )


def run(cmd: list[str | Path], what: str) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def check_custom_metadata(manifests: str, schemas: Path, version: str) -> None:
    """The custom resources' metadata against Kubernetes' strict ObjectMeta schema."""
    import jsonschema

    base = schemas / f"v{version}-local-strict"
    meta = json.loads((base / "objectmeta-meta-v1.json").read_text())
    defs = json.loads((base / "_definitions.json").read_text())
    meta["$defs"] = defs["$defs"]
    text = json.dumps(meta).replace('"_definitions.json#/$defs/', '"#/$defs/')
    validator = jsonschema.Draft202012Validator(json.loads(text))
    kinds = {k.rsplit("/", 1)[1] for k in CUSTOM_KINDS}
    for doc in yaml.safe_load_all(manifests):
        if not doc or doc.get("kind") not in kinds:
            continue
        errors = sorted(validator.iter_errors(doc.get("metadata", {})), key=str)
        if errors:
            raise CheckError(
                f"{doc['kind']} {doc.get('metadata', {}).get('name')}: metadata invalid for "
                f"Kubernetes {version}: {errors[0].message}"
            )


def render(helm: Path, values: Path, version: str = KUBERNETES_VERSIONS[-1]) -> str:
    """``helm template`` of the chart with ``values`` for Kubernetes ``version``."""
    return run(
        [helm, "template", "retail", CHART, "-f", values, "--kube-version", version],
        f"helm template -f {values.name} --kube-version {version}",
    )


def kubeconform_cmd(
    kubeconform: Path, schemas: Path, version: str, strimzi: Path | None
) -> list[str]:
    """kubeconform -strict on stdin with the Kubernetes schemas (and Strimzi's when generated),
    skipping by name only the custom kinds that have no schema."""
    location = str(schemas / "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}")
    location += "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    cmd = [str(kubeconform), "-strict", "-summary", "-kubernetes-version", version]
    cmd += ["-schema-location", location]
    skip = list(CUSTOM_KINDS)
    if strimzi is not None:
        crd = (
            f"{strimzi}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json"
        )
        cmd += ["-schema-location", crd]
        skip = [k for k in skip if not k.startswith("kafka.strimzi.io/")]
    return [*cmd, "-skip", ",".join(skip), "-"]


def check_values(
    helm: Path, kubeconform: Path, schemas: Path, values: Path, strimzi: Path | None = None
) -> None:
    run([helm, "lint", "--strict", CHART, "-f", values], f"helm lint --strict -f {values.name}")
    for version in KUBERNETES_VERSIONS:
        manifests = render(helm, values, version)
        cmd = kubeconform_cmd(kubeconform, schemas, version, strimzi)
        proc = subprocess.run(cmd, input=manifests, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CheckError(
                f"kubeconform -strict (Kubernetes {version}) refused the chart rendered with "
                f"{values.name}:\n{proc.stdout}{proc.stderr}"
            )
        check_custom_metadata(manifests, schemas, version)
        if strimzi is not None:
            check_strimzi_cel(manifests, strimzi)
        print(f"{values.name} on Kubernetes {version}: {proc.stdout.strip()}")


def main() -> int:
    start = time.monotonic()
    try:
        helm = ensure_tool("helm", *HELM)
        kubeconform = ensure_tool("kubeconform", *KUBECONFORM)
        schemas = schemas_dir()
        strimzi = strimzi_schemas()
        for profile in PROFILES:
            check_values(helm, kubeconform, schemas, CHART / f"values-{profile}.yaml", strimzi)
    except (CheckError, subprocess.CalledProcessError) as exc:
        print(f"k8s-check: {exc}", file=sys.stderr)
        return 1
    print(f"k8s-check: chart valid for {', '.join(PROFILES)} in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
