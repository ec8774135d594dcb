#!/usr/bin/env python3
"""Checks deploy/docker/compose.yaml and the k8s example against the built
images (scripts/image-test.sh runs it with the images' root file systems
mounted): every path, user, port, volume, secret and environment variable
they name exists in the image or in the other services, and the security
layout holds (no shared PID namespace, separate uids, no password in the
environment, no superuser login, memory limits).

usage: check_deploy_layout.py REPO BOXMETER_ROOT BOXMETER_INSPECT.json
                              SING_BOX_ROOT SING_BOX_INSPECT.json
Prints one line per check; exits 1 if any failed."""
import json
import os
import re
import stat
import sys

import yaml

repo, bm_root, bm_inspect, sb_root, sb_inspect = sys.argv[1:6]
failures = []


def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what)
    if not ok:
        failures.append(what)


def image(root, inspect_path):
    with open(inspect_path) as f:
        config = json.load(f)["OCIv1"]["config"]
    env = dict(e.split("=", 1) for e in config.get("Env", []))
    return {"root": root, "user": config.get("User", ""), "env": env,
            "entrypoint": config.get("Entrypoint") or []}


def lstat(img, path):
    try:
        return os.lstat(img["root"] + path)
    except FileNotFoundError:
        return None


def on_path(img, name):
    if name.startswith("/"):
        return lstat(img, name) is not None
    path = img["env"].get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return any(lstat(img, d + "/" + name) for d in path.split(":"))


def dir_is(img, path, uid, gid, mode):
    st = lstat(img, path)
    return (st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == uid
            and st.st_gid == gid and stat.S_IMODE(st.st_mode) == mode)


boxmeter = image(bm_root, bm_inspect)
sing_box = image(sb_root, sb_inspect)
docker_dir = os.path.join(repo, "deploy/docker")
with open(os.path.join(docker_dir, "compose.yaml")) as f:
    compose = yaml.safe_load(f)
with open(os.path.join(repo, "deploy/k8s/sing-box-with-boxmeter.yaml")) as f:
    k8s = [d for d in yaml.safe_load_all(f) if d]
with open(os.path.join(docker_dir, "make-secrets.sh")) as f:
    make_secrets = f.read()
made_logins = set(re.findall(r"\w+:(boxmeter_\w+)", make_secrets))
made_files = set(re.findall(r"\$dir/([\w-]+)\"", make_secrets))
made_files |= {f + ".pgpass"
               for f in re.findall(r"(\w+):boxmeter_\w+", make_secrets)}
superusers = {"postgres"}

print("image-test: the images")
check(boxmeter["user"] == "10001:10001", "boxmeter image runs as 10001:10001")
check(sing_box["user"] == "10002:10002", "sing-box image runs as 10002:10002")
check(dir_is(boxmeter, "/etc/sing-box", 10001, 10002, 0o2750),
      "boxmeter image: /etc/sing-box 10001:10002 2750 (set-group-ID)")
check(dir_is(boxmeter, "/run/sing-box-reload", 10001, 10002, 0o2770),
      "boxmeter image: /run/sing-box-reload 10001:10002 2770")
check(dir_is(boxmeter, "/run/boxmeter", 10001, 10001, 0o700),
      "boxmeter image: /run/boxmeter (control socket) 10001:10001 0700")
check(dir_is(sing_box, "/run/sing-box-reload", 0, 10002, 0o2770),
      "sing-box image: /run/sing-box-reload root:10002 2770")
for tool in ["boxmeter-regenerate", "boxmeter-healthcheck", "boxmeter-gen",
             "boxmeter-collector"]:
    check(on_path(boxmeter, tool), f"boxmeter image has {tool} on PATH")
check(on_path(sing_box, "inotifywait"), "sing-box image has inotifywait")
check(sing_box["entrypoint"][:1] == ["/usr/local/bin/sing-box-reloader"] and
      on_path(sing_box, "/usr/local/bin/sing-box-reloader"),
      "sing-box image's entrypoint is sing-box-reloader, which exists")

print("image-test: compose.yaml against the images")
services = compose["services"]
named_volumes = set(compose.get("volumes") or {})
secrets = compose.get("secrets") or {}
for name, secret in secrets.items():
    base = os.path.basename(secret["file"])
    check(secret["file"].startswith("./secrets/") and base in made_files,
          f"secret {name}: {secret['file']} is made by make-secrets.sh")
for name, svc in services.items():
    check("pid" not in svc and "ipc" not in svc,
          f"{name}: shares no PID or IPC namespace")
    img = None
    if svc.get("image", "").startswith("boxmeter:"):
        img = boxmeter
    elif svc.get("image", "").startswith("sing-box"):
        img = sing_box
    env = svc.get("environment") or {}
    for key, value in env.items():
        check(not re.search(r"PASSWORD$", key) or key.endswith("_FILE"),
              f"{name}: no password in the environment ({key})")
    if img is None:
        continue
    check(str(svc.get("user")) == img["user"],
          f"{name}: user {svc.get('user')} is the image's {img['user']}")
    for volume in svc.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            check(os.path.exists(os.path.join(docker_dir, source)),
                  f"{name}: bind source {source} exists in the repository")
            check(lstat(img, os.path.dirname(target)) is not None,
                  f"{name}: {os.path.dirname(target)} exists in the image")
        else:
            check(source in named_volumes, f"{name}: volume {source} declared")
            check(lstat(img, target) is not None,
                  f"{name}: mount point {target} exists in the image")
    for tmpfs in svc.get("tmpfs") or []:
        target = tmpfs.split(":")[0]
        check(lstat(img, target) is not None,
              f"{name}: tmpfs {target} exists in the image")
    svc_secrets = set(svc.get("secrets") or [])
    for secret in svc_secrets:
        check(secret in secrets, f"{name}: secret {secret} declared")
    if img is sing_box:
        check(not svc_secrets, f"{name}: mounts no secret")
        check("network_mode" not in svc, f"{name}: has its own network")
    for key in ["PGPASSFILE", "BOXMETER_GENERATOR_PGPASSFILE"]:
        if key in env:
            check(env[key].startswith("/run/secrets/") and
                  os.path.basename(env[key]) in svc_secrets,
                  f"{name}: {key}={env[key]} is one of its secrets")
    for key in ["BOXMETER_DATABASE_URL", "BOXMETER_GENERATOR_DATABASE_URL"]:
        if key in env:
            m = re.match(r"postgresql://(\w+)@([\w.-]+):(\d+)/(\w+)$",
                         env[key])
            check(bool(m) and m.group(1) in made_logins and
                  m.group(1) not in superusers and m.group(2) in services,
                  f"{name}: {key} logs in as a made, non-superuser login "
                  f"to a compose service ({env[key]})")
    command = svc.get("entrypoint") or svc.get("command") or []
    if isinstance(command, list) and command and command[0].startswith("/"):
        check(on_path(img, command[0]), f"{name}: {command[0]} is in the image")
check(services["collector"].get("network_mode") == "service:sing-box",
      "collector: in sing-box's network namespace (stats API on loopback)")
check(services["collector"]["environment"].get("BOXMETER_DATABASE_URL") !=
      services["collector"]["environment"].get(
          "BOXMETER_GENERATOR_DATABASE_URL"),
      "collector and its hook's generator use different logins")
ports = services["sing-box"].get("ports") or []
pg_env = services["postgres"]["environment"]
check("POSTGRES_USER" not in pg_env and "POSTGRES_PASSWORD" not in pg_env,
      "postgres: its superuser's password only from a secret file")

print("image-test: the k8s example against the images")
deployment = next(d for d in k8s if d["kind"] == "Deployment")
config_map = next(d for d in k8s if d["kind"] == "ConfigMap")
pod = deployment["spec"]["template"]["spec"]
check(not pod.get("shareProcessNamespace"), "pod: no shared PID namespace")
pod_volumes = {v["name"] for v in pod["volumes"]}
secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
for c in pod.get("initContainers", []) + pod["containers"]:
    img = sing_box if "sing-box" in c["image"] else boxmeter
    ctx = c.get("securityContext") or {}
    user = f"{ctx.get('runAsUser')}:{ctx.get('runAsGroup')}"
    check(user == img["user"], f"{c['name']}: runs as {user}, the image's user")
    for m in c.get("volumeMounts", []):
        check(m["name"] in pod_volumes, f"{c['name']}: volume {m['name']} exists")
        check(lstat(img, m["mountPath"]) is not None,
              f"{c['name']}: mount point {m['mountPath']} exists in the image")
    command = c.get("command") or []
    if command:
        check(on_path(img, command[0]), f"{c['name']}: {command[0]} in the image")
    for e in c.get("env", []):
        if e["name"] == "BOXMETER_HEALTH_FILE":
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            check(os.path.dirname(e["value"]) in mounts,
                  f"{c['name']}: the health file's directory is a volume")
        check("PASSWORD" not in e["name"] and "valueFrom" not in e,
              f"{c['name']}: {e['name']} is no secret")
        if e["name"].endswith("DATABASE_URL_FILE"):
            secret_mounts = [m["mountPath"] for m in c.get("volumeMounts", [])
                             if m["name"] in secret_volumes]
            check(os.path.dirname(e["value"]) in secret_mounts,
                  f"{c['name']}: {e['name']} is in a mounted secret")
        elif "DATABASE_URL" in e["name"]:
            user = re.match(r"postgresql://(\w+)@", e["value"]).group(1)
            check(user not in superusers, f"{c['name']}: {e['name']} no superuser")
    if img is sing_box:
        check(not any("secret" in str(e) for e in c.get("env", [])) and
              not c.get("envFrom") and
              not any(m["name"] in secret_volumes
                      for m in c.get("volumeMounts", [])),
              f"{c['name']}: no secret")
        for p in c.get("ports", []):
            check(f"{p['containerPort']}:{p['containerPort']}/"
                  f"{p['protocol'].lower()}" in ports,
                  f"{c['name']}: port {p['containerPort']}/{p['protocol']} "
                  "as in compose")
    if c in pod["containers"]:
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        check(bool(limit), f"{c['name']}: a memory limit ({limit})")
mounts = {m["mountPath"] for c in pod["containers"]
          if c["name"] == "boxmeter-collector" for m in c["volumeMounts"]}
for key in ["template", "output"]:
    path = yaml.safe_load(config_map["data"]["boxmeter.yaml"])["generator"][key]
    check(os.path.dirname(path) in mounts,
          f"configmap: generator.{key} {path} is on a mounted volume")

if failures:
    print(f"image-test: {len(failures)} layout check(s) failed", file=sys.stderr)
    sys.exit(1)
