"""infra/: manifests parse, their commands name real files, configs and flags, and the Flower certificates work.

Flags are checked against the real ``--help`` of each tool in this environment (the versions the image
installs), the RayJob's entrypoint is expanded with the ConfigMap's values and built into a Config, the
node-config string is parsed by Flower's own parser, and make_certs.sh output is checked with ``openssl verify``,
``cryptography`` and finally a real TLS SuperLink with node authentication on loopback.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from services import BIN, REPO, env, free_port, stop

INFRA = REPO / "infra"
MAKE_CERTS = INFRA / "flower" / "make_certs.sh"
HELP_COMMANDS = {
    "platform/pretrain.py": [sys.executable, "platform/pretrain.py", "--help"],
    "platform/evaluate.py": [sys.executable, "platform/evaluate.py", "--help"],
    "platform/predict.py": [sys.executable, "platform/predict.py", "--help"],
    "flower-superlink": [str(BIN / "flower-superlink"), "--help"],
    "flower-supernode": [str(BIN / "flower-supernode"), "--help"],
    "mlflow server": [str(BIN / "mlflow"), "server", "--help"],
}


@pytest.fixture(scope="module")
def helps():
    """Each entry command's --help output, run in parallel in the project's environment."""
    def run(cmd):
        return subprocess.run(cmd, cwd=REPO, env=env(FLWR_TELEMETRY_ENABLED="0"), capture_output=True, text=True,
                              timeout=120)

    with ThreadPoolExecutor(len(HELP_COMMANDS)) as pool:
        results = dict(zip(HELP_COMMANDS, pool.map(run, HELP_COMMANDS.values())))
    return results


def _yaml_files():
    return sorted(INFRA.rglob("*.yaml"))


def _load(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _compose(text: str, values: dict[str, str]) -> str:
    """Docker compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$ -> $."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in values:
            return values[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose variable {name} has no value and no default ({arg})")
    text = re.sub(r"(?<!\$)\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, text)
    return text.replace("$$", "$")


def _flags(tokens: list[str]) -> set[str]:
    return {t.split("=", 1)[0] for t in tokens if t.startswith("--")}


def _assert_flags_in_help(flags: set[str], help_text: str, tool: str) -> None:
    missing = [f for f in flags if not re.search(re.escape(f) + r"\b", help_text)]
    assert not missing, f"{tool} --help does not know {missing}"


# ---------------------------------------------------------------------------------------------------- parsing


def test_every_yaml_file_parses_and_has_the_expected_shape():
    files = _yaml_files()
    names = {p.relative_to(INFRA).as_posix() for p in files}
    assert {"mlflow/compose.yaml", "flower/compose.superlink.yaml", "flower/compose.supernode.yaml",
            "kuberay/rayjob.yaml", "kuberay/raycluster.yaml", "kuberay/config.yaml"} <= names
    for path in files:
        docs = _load(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), path
            assert "services" in doc or {"apiVersion", "kind"} <= doc.keys(), f"{path}: neither compose nor k8s"


def test_entry_commands_start(helps):
    for name, res in helps.items():
        assert res.returncode == 0, f"{name} --help: {res.stdout[-1000:]} {res.stderr[-2000:]}"
        assert "usage" in (res.stdout + res.stderr).lower(), name


# ---------------------------------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_python_env_install_and_named_files():
    instr = _dockerfile()
    base = [rest for word, rest in instr if word == "FROM"]
    assert len(base) == 1 and re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-", base[0]), base
    runs = " ".join(rest for word, rest in instr if word == "RUN")
    envs = " ".join(rest for word, rest in instr if word == "ENV")
    assert "OMP_WAIT_POLICY=PASSIVE" in envs and "FLWR_TELEMETRY_ENABLED=0" in envs
    assert "python3.11 -m venv" in runs and re.search(r"pip install [^&]*\.(\s|$)", runs)
    for word, rest in instr:
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    scripts = re.findall(r"\b(platform/\w+\.py)\b", runs + " ".join(r for w, r in instr if w == "CMD"))
    assert {"platform/pretrain.py", "platform/evaluate.py", "platform/predict.py"} <= set(scripts)
    for s in scripts:
        assert (REPO / s).is_file(), s
    for tool in ("flower-superlink --help", "flower-supernode --help", "mlflow server --help"):
        assert tool in runs  # the build fails if an entry point cannot start
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


# ---------------------------------------------------------------------------------------------------- KubeRay


def _kube(name: str) -> dict:
    (doc,) = _load(INFRA / "kuberay" / name)
    return doc


def _pods(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_rayjob_entrypoint_builds_the_paper_config_from_the_configmap(helps):
    from ovseg.config import available_configs, load_config

    job, config = _kube("rayjob.yaml"), _kube("config.yaml")
    assert job["kind"] == "RayJob" and config["kind"] == "ConfigMap"
    values = config["data"]
    assert "MLFLOW_TRACKING_URI" in values and "OVSEG_TRAIN_SHARDS" in values
    tokens = shlex.split(job["spec"]["entrypoint"])  # a shell on the head expands $VARS from the ConfigMap
    expanded = [re.sub(r"\$(\w+)", lambda m: values[m.group(1)], t) for t in tokens]
    assert expanded[:2] == ["python", "platform/pretrain.py"] and (REPO / expanded[1]).is_file()
    config_name = expanded[expanded.index("--config") + 1]
    assert config_name == "vit-b16-cc4m" and config_name in available_configs()
    _assert_flags_in_help(_flags(expanded), helps["platform/pretrain.py"].stdout, "pretrain.py")
    overrides = [t for t in expanded[2:] if "=" in t and not t.startswith("--")]
    cfg = load_config(config_name, overrides)  # every key exists and every value has the right type
    assert cfg.data.train == (values["OVSEG_TRAIN_SHARDS"],)
    assert cfg.eval.datasets == tuple(values["OVSEG_EVAL_SETS"].split(","))
    assert cfg.train.use_gpu and cfg.train.num_workers == 8 and cfg.train.output_dir == "/runs"
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert sum(g["replicas"] * g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
               for g in workers) == cfg.train.num_workers  # one GPU per Ray Train rank


def test_raycluster_and_rayjob_pods_share_image_parameters_and_volumes():
    config, volumes = _kube("config.yaml"), _load(INFRA / "kuberay" / "volumes.yaml")
    claims = {v["metadata"]["name"] for v in volumes}
    cluster, job = _kube("raycluster.yaml"), _kube("rayjob.yaml")
    assert cluster["kind"] == "RayCluster"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == "2.55.1"
        for pod in _pods(spec):
            (c,) = pod["containers"]
            assert c["image"] == "ovseg:0.1.0" and c["workingDir"] == "/opt/ovseg"
            refs = {e.get("configMapRef", {}).get("name") for e in c["envFrom"]}
            assert config["metadata"]["name"] in refs
            used = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
            assert used == claims
            assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/data", "/runs"}
    import ray

    assert ray.__version__ == "2.55.1"  # the image installs the same Ray as the manifests announce


# ---------------------------------------------------------------------------------------------------- compose


def _service_command(compose: str, service: str, values: dict[str, str]) -> list[str]:
    doc = yaml.safe_load(_compose((INFRA / compose).read_text(), values))
    cmd = doc["services"][service]["command"]
    if cmd[:2] == ["sh", "-c"]:
        cmd = shlex.split(cmd[2])
        assert cmd[0] == "exec"
        cmd = cmd[1:]
    return cmd


def test_mlflow_server_command(helps):
    cmd = _service_command("mlflow/compose.yaml", "mlflow", {})
    assert cmd[:2] == ["mlflow", "server"]
    _assert_flags_in_help(_flags(cmd), helps["mlflow server"].stdout, "mlflow server")
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth" and "--allowed-hosts" in cmd
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql://")
    doc = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    assert "postgres" in doc["services"] and doc["services"]["mlflow"]["env_file"] == "mlflow.env"
    example = (INFRA / "mlflow" / "mlflow.env.example").read_text()
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=" in example and "POSTGRES_PASSWORD=" in example
    ini = (INFRA / "mlflow" / "basic_auth.ini").read_text()
    assert not re.search(r"^\s*admin_password\s*=", ini, re.M)  # the password comes from the env file only


def test_flower_commands(helps):
    from flwr.common.config import parse_config_args

    link = _service_command("flower/compose.superlink.yaml", "superlink", {})
    assert link[0] == "flower-superlink"
    _assert_flags_in_help(_flags(link), helps["flower-superlink"].stdout, "flower-superlink")
    for flag, value in [("--ssl-ca-certfile", "/certs/ca.crt"), ("--ssl-certfile", "/certs/server.crt"),
                        ("--ssl-keyfile", "/certs/server.key"), ("--database", "/state/state.db")]:
        assert link[link.index(flag) + 1] == value
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation"} <= set(link)
    assert "--insecure" not in link
    doc = yaml.safe_load((INFRA / "flower" / "compose.superlink.yaml").read_text())
    mounts = " ".join(doc["services"]["superlink"]["volumes"])
    assert "ca.key" not in mounts  # the CA's private key never enters the container

    node = _service_command("flower/compose.supernode.yaml", "supernode",
                            {"SUPERLINK_ADDRESS": "flower.example.org:8000", "SITE": "a", "DATA_DIR": "/srv"})
    assert node[0] == "flower-supernode"
    _assert_flags_in_help(_flags(node), helps["flower-supernode"].stdout, "flower-supernode")
    assert node[node.index("--superlink") + 1] == "flower.example.org:8000"
    assert node[node.index("--root-certificates") + 1] == "/certs/ca.crt"
    assert node[node.index("--auth-supernode-private-key") + 1] == "/certs/site.key"
    parsed = parse_config_args([node[node.index("--node-config") + 1]])  # Flower's own parser
    assert parsed == {"data-path": "/data", "data-kind": "segmentation"}
    with pytest.raises(AssertionError, match="SUPERLINK_ADDRESS"):
        _service_command("flower/compose.supernode.yaml", "supernode", {"SITE": "a", "DATA_DIR": "/srv"})


# ---------------------------------------------------------------------------------------------------- certificates

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed here; "
                                   "make_certs.sh needs it")


def _make_certs(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MAKE_CERTS), str(out), *args], capture_output=True, text=True, timeout=60)


@needs_openssl
def test_make_certs_outputs_verify_and_load_and_reruns_keep_them(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    out = tmp_path / "certs"
    res = _make_certs(out, "--host", "flower.example.org", "hospital-a", "lab_b")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "hospital-a.key", "hospital-a.pub",
                                                     "lab_b.key", "lab_b.pub", "server.crt", "server.key"]
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr
    san = subprocess.run(["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in san and "DNS:localhost" in san and "DNS:flower.example.org" in san
    for site in ("hospital-a", "lab_b"):
        key = load_ssh_private_key((out / f"{site}.key").read_bytes(), None)  # what flower-supernode calls
        pub = load_ssh_public_key((out / f"{site}.pub").read_bytes())  # what flwr supernode register calls
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(pub, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp384r1" and key.public_key().public_numbers() == pub.public_numbers()
        assert (out / f"{site}.key").stat().st_mode & 0o077 == 0  # private keys readable by the owner only
        if shutil.which("ssh-keygen"):  # an independent reader of the OpenSSH format
            derived = subprocess.run(["ssh-keygen", "-y", "-f", str(out / f"{site}.key")], capture_output=True,
                                     text=True)
            assert derived.stdout.split()[:2] == (out / f"{site}.pub").read_text().split()[:2], derived.stderr

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = _make_certs(out, "--host", "flower.example.org", "hospital-a", "new-site")
    assert again.returncode == 0, again.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert all(after[name] == data for name, data in before.items())  # CA, server cert, site keys kept
    assert set(after) - set(before) == {"new-site.key", "new-site.pub"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    renamed = _make_certs(out, "--host", "10.0.0.7")  # another address: the server certificate is reissued
    assert renamed.returncode == 0 and (out / "server.crt").read_bytes() != before["server.crt"]
    assert (out / "ca.crt").read_bytes() == before["ca.crt"]
    san = subprocess.run(["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout
    assert "IP Address:10.0.0.7" in san

    for bad in (["ca"], ["../x"], ["--host"]):
        res = _make_certs(tmp_path / "bad", *bad)
        assert res.returncode != 0 and res.stderr, bad


def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], env=env(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0"),
                          capture_output=True, text=True, timeout=60)


def _nodes(home: Path) -> list[dict]:
    res = _flwr(home, "supernode", "list", "local-tls", "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)["nodes"]


@needs_openssl
@pytest.mark.slow
def test_a_registered_site_joins_a_tls_superlink_and_an_unregistered_one_is_refused(tmp_path):
    certs, home = tmp_path / "certs", tmp_path / "flwr"
    assert _make_certs(certs, "site-a", "rogue").returncode == 0
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local-tls"\n\n[superlink.local-tls]\n'
                                      f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n')
    flower_env = env(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0")
    link = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
         str(certs / "server.crt"), "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth",
         "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", str(port)],
        env=flower_env, start_new_session=True, stdout=open(tmp_path / "superlink.log", "w"), stderr=subprocess.STDOUT)
    procs = [link]
    try:
        deadline = time.time() + 60
        while True:  # registration doubles as the readiness probe (TLS handshake with our CA included)
            reg = _flwr(home, "supernode", "register", str(certs / "site-a.pub"), "local-tls")
            if reg.returncode == 0:
                break
            assert link.poll() is None, (tmp_path / "superlink.log").read_text()[-3000:]
            assert time.time() < deadline, reg.stdout + reg.stderr
            time.sleep(1)
        assert "registered" in reg.stdout

        def supernode(site: str, *extra: str) -> subprocess.Popen:
            proc = subprocess.Popen(
                [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                 str(certs / "ca.crt"), "--auth-supernode-private-key", str(certs / f"{site}.key"),
                 "--node-config", f'data-path="{tmp_path}" data-kind="segmentation"', "--port", str(free_port()),
                 *extra],
                env=flower_env, start_new_session=True, stdout=open(tmp_path / f"{site}.log", "w"),
                stderr=subprocess.STDOUT)
            procs.append(proc)
            return proc

        supernode("site-a")
        rogue = supernode("rogue", "--max-retries", "1")
        deadline = time.time() + 60
        while not any(n["status"] == "online" for n in _nodes(home)):
            assert time.time() < deadline, (tmp_path / "site-a.log").read_text()[-3000:]
            time.sleep(1)
        assert rogue.wait(60) != 0  # an unregistered key cannot join
        assert "Failed to activate SuperNode" in (tmp_path / "rogue.log").read_text()
        nodes = _nodes(home)
        assert len(nodes) == 1 and nodes[0]["status"] == "online"
    finally:
        for proc in reversed(procs):
            stop(proc)
