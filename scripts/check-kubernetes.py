#!/usr/bin/env python3
"""Check deploy/kubernetes/ against the real tools, as scripts/test.sh runs it.

  scripts/check-kubernetes.py manifests
      every manifest against the Kubernetes API schemas (kubernetes-validate, --strict: an
      unknown field fails) for each version in KUBERNETES_VERSIONS; kustomization.yaml lists
      every manifest and nothing else, and what it renders validates too (when kubectl is
      installed); the NATS ConfigMap's nats.conf passes `nats-server -t` (when
      scripts/test-deps.sh installed nats-server). Needs no build.

  scripts/check-kubernetes.py flags NIMBUS
      every flag the nimbus Deployment passes to `nimbus up` is in `NIMBUS up --help`, and the app ConfigMap, laid out as the Deployment mounts it,
      deploys and serves with the Deployment's flags (those that need the NATS servers left
      out): /healthz and one of its routes answer 200.

kubernetes-validate (PyPI) bundles the schemas, so this runs offline; scripts/test-deps.sh
installs it into $NIMBUS_CACHE/kubernetes-validate, where PyYAML (its dependency) comes from too.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
CACHE = Path(os.environ.get("NIMBUS_CACHE", Path.home() / ".cache" / "nimbus"))
VALIDATE = CACHE / "kubernetes-validate"
NATS_SERVER = CACHE / "nats" / "bin" / "nats-server"

# The oldest Kubernetes the manifests support (pod user namespaces, `hostUsers: false`, are on
# by default from 1.33; nimbus's sandbox needs them) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]

# Flags that reach the NATS servers: left out when the app is served locally.
CLUSTER_FLAGS = {
    "--cluster",
    "--node-name",
    "--nats-creds",
    "--nats-tls-ca",
    "--nats-tls-cert",
    "--nats-tls-key",
    "--cluster-replicas",
    "--advertise-url",
}


sys.path.insert(0, str(VALIDATE))
try:
    import yaml  # noqa: E402  (PyYAML, installed with kubernetes-validate)
except ImportError:
    sys.exit(f"check-kubernetes: PyYAML not found in {VALIDATE}; run scripts/test-deps.sh")


def fail(problems):
    for p in problems:
        print(f"check-kubernetes: {p}", file=sys.stderr)
    sys.exit(1)


def manifest_files():
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def documents():
    """(file, document) for every resource in the manifests."""
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def find(kind, name):
    for _, doc in documents():
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    fail([f"no {kind} named {name} in {MANIFESTS}"])


def validate_schemas(files, what):
    env = dict(os.environ, PYTHONPATH=str(VALIDATE))
    for version in KUBERNETES_VERSIONS:
        cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", version, *files]
        if subprocess.run(cmd, env=env).returncode != 0:
            fail([f"{what} do not validate against Kubernetes {version} (above)"])
    print(f"kubernetes manifests: {what} valid (strict) for Kubernetes {', '.join(KUBERNETES_VERSIONS)}")


def check_kustomization():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    present = {p.name for p in manifest_files()}
    problems = [f"kustomization.yaml does not list {name}; add it to resources" for name in sorted(present - listed)]
    problems += [f"kustomization.yaml lists {name}, which does not exist" for name in sorted(listed - present)]
    if problems:
        fail(problems)


def check_kustomize_build():
    """Render the kustomization when kubectl is installed (it embeds kustomize) and validate
    what it renders: the namespace and image it sets are part of what gets applied."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("kubernetes manifests: kustomization not rendered (no kubectl on PATH)")
        return
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        fail([f"`kubectl kustomize {MANIFESTS}` failed: {out.stderr.strip()}"])
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rendered:
        rendered.write(out.stdout)
        rendered.flush()
        validate_schemas([rendered.name], "the output of `kubectl kustomize`")


def check_nats_conf():
    if not NATS_SERVER.exists():
        print(f"kubernetes manifests: nats.conf not checked ({NATS_SERVER} missing; scripts/test-deps.sh installs it)")
        return
    conf = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nats.conf"
        path.write_text(conf)
        env = dict(os.environ, SERVER_NAME="nats-0")
        out = subprocess.run([str(NATS_SERVER), "-t", "-c", str(path)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            fail([f"nats-config.yaml: nats.conf is not valid: {(out.stdout + out.stderr).strip()}"])
    print("kubernetes manifests: nats.conf valid (nats-server -t)")


def nimbus_container():
    deployment = find("Deployment", "nimbus")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, next(c for c in containers if c["name"] == "nimbus")


def flag_name(arg):
    return arg.split("=", 1)[0]


def check_flags(nimbus):
    _, container = nimbus_container()
    args = container["args"]
    if args[:1] != ["up"]:
        fail([f"nimbus-deployment.yaml: the nimbus container's args must start with `up`, not {args[:1]}"])
    help_text = subprocess.run([nimbus, "up", "--help"], capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", help_text, re.MULTILINE))
    problems = [
        f"nimbus-deployment.yaml passes {flag}, which `nimbus up --help` does not list"
        for flag in sorted({flag_name(a) for a in args if a.startswith("--")})
        if flag not in known
    ]
    if problems:
        fail(problems)
    print("kubernetes manifests: the Deployment's nimbus flags exist")


def lay_out_app(deployment, container, into):
    """Write the app ConfigMap's files where the Deployment mounts them, relative to the mount."""
    mount = next(m for m in container["volumeMounts"] if m["name"] == "app")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "app")
    config_map = find("ConfigMap", volume["configMap"]["name"])
    items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in config_map["data"]]
    for item in items:
        target = into / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(config_map["data"][item["key"]])
    return mount["mountPath"]


def local_args(args, mount, app_dir, data_dir):
    """The Deployment's args for a local run: the app and data dirs here, on loopback, no cluster."""
    out = []
    for arg in args[1:]:
        name = flag_name(arg)
        if name in CLUSTER_FLAGS or name in ("--listen", "--data-dir", "--aws-listen"):
            continue
        out.append(str(app_dir) if arg == mount else arg)
    return ["up", *out, "--listen=127.0.0.1:0", f"--data-dir={data_dir}", "--aws-listen=off"]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_healthy(data_dir, proc, deadline):
    url_file = data_dir / "server.url"
    while time.monotonic() < deadline and proc.poll() is None:
        if url_file.exists() and get(url_file.read_text().strip() + "/healthz") == 200:
            return url_file.read_text().strip()
        time.sleep(0.2)
    return None


def first_route(app_dir):
    manifest = (app_dir / "nimbus.toml").read_text()
    path = re.search(r'^path\s*=\s*"([^"]+)"', manifest, re.MULTILINE)
    return re.sub(r"\{[^}]+\}", "k8s", path.group(1)).rstrip("*") if path else None


def serve_and_get(cmd, data_dir, route, log):
    """Run `cmd` (a `nimbus up`) until it answers /healthz, GET `route`, stop it with SIGTERM;
    (the server URL or None, the route's status)."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = wait_healthy(data_dir, proc, time.monotonic() + 60)
        return url, get(url + route) if url else None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_app(nimbus):
    deployment, container = nimbus_container()
    with tempfile.TemporaryDirectory() as tmp:
        app_dir, data_dir = Path(tmp) / "app", Path(tmp) / "data"
        mount = lay_out_app(deployment, container, app_dir)
        route = first_route(app_dir)
        if route is None:
            fail(["the nimbus.toml of nimbus-app.yaml has no [[routes]] path to check it with"])
        cmd = [nimbus, *local_args(container["args"], mount, app_dir, data_dir)]
        with open(Path(tmp) / "nimbus.log", "w+") as log:
            url, status = serve_and_get(cmd, data_dir, route, log)
            if status != 200:
                log.seek(0)
                print(log.read(), file=sys.stderr)
                what = "did not answer /healthz" if url is None else f"answered {status} on {route}"
                fail([f"the app of nimbus-app.yaml, served as `{' '.join(cmd)}`, {what} (its log is above)"])
    print(f"kubernetes manifests: the app ConfigMap deploys and serves ({route} answered 200)")


def main():
    match sys.argv[1:]:
        case ["manifests"]:
            validate_schemas([str(p) for p in manifest_files()], f"the {len(manifest_files())} manifests")
            check_kustomization()
            check_kustomize_build()
            check_nats_conf()
        case ["flags", nimbus]:
            if not os.access(nimbus, os.X_OK):
                fail([f"{nimbus} is not an executable nimbus; build it first (cargo build -p nimbus)"])
            check_flags(nimbus)
            check_app(nimbus)
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
