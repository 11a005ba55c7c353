#!/usr/bin/env python3
"""Deploys the three Workers to a Cloudflare account from one small file, or checks that it would.

    python3 scripts/deploy.py [--file deploy.toml] [--out target/deploy] [--dry-run] [--force]

(`make deploy` and `make deploy DRY_RUN=1`; see README, Deploying to Cloudflare.)

The deploy file (deploy.example.toml shows every field) names the plan, the databases to back up
and optional vars and secrets. From it and the checked-in wrangler.toml files (which stay the
local-dev configuration) this writes one generated config per Worker under `--out`, never to be
edited by hand, and then:

- always (and nothing else with --dry-run, which needs no account and no network): bundles each
  Worker with `wrangler deploy --dry-run --outdir` from the already built */build/ output, checks
  that every binding the Rust code reads is declared in that Worker's generated config, that
  every queue a Worker sends to has one consumer, that VERIFY_DB is no database it must not
  empty (scripts/check-config.py), and that each bundle, gzip-compressed, is under the plan's
  size limit; prints the sizes. A failed check exits 1 naming it.
- for real: reads what the account holds (`wrangler d1 list --json`, `wrangler r2 bucket list`,
  `wrangler queues list`) and creates only what is missing (the metadata and scratch D1
  databases, the bucket, the queues and dead-letter queues), applies the metadata migrations,
  deploys the consumer and the archiver before the producer (the consumers of the queues exist
  before anything sends to them) unless a Worker's bundle and config are the ones deployed last
  from this checkout, and asks for each missing secret (`wrangler secret list`). A second run
  changes nothing.

Standard library only; wrangler is the one in node_modules.
"""

from __future__ import annotations

import argparse
import getpass
import gzip
import hashlib
import importlib.util
import json
import os
import re
import secrets as random_secrets
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRANGLER = ["node", str(ROOT / "node_modules/wrangler/bin/wrangler.js")]
PLANS = ROOT / "deploy/plans.toml"

# The Workers, in deploy order: the queues' consumers (consumer, archiver) before the producer.
WORKERS = ("consumer", "archiver", "producer")
TEMPLATES = {"producer": ROOT / "wrangler.toml", "consumer": ROOT / "consumer/wrangler.toml",
             "archiver": ROOT / "archiver/wrangler.toml"}
CRATES = {"producer": ROOT / "producer/src", "consumer": ROOT / "consumer/src", "archiver": ROOT / "archiver/src"}
PLATFORM = ROOT / "platform/src"
# Bindings the platform crate names once (platform/src/lib.rs, `pub mod bindings`).
BINDINGS_MODULE = ROOT / "platform/src/lib.rs"
# Bindings that are the user's own databases: the DATABASES var's entries.
DATABASES_VAR = "DATABASES"
SCRATCH_BINDING = "VERIFY_DB"
META_BINDING = "META"
SEND_EMAIL = "SEND_EMAIL"

DATABASE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DATABASE_OPTIONS = {"database_id", "database_name", "gzip", "verify", "recipients"}
DEPLOY_FIELDS = {"plan", "account_id", "secrets", "vars", "databases"}
# Every secret the Workers read, and which of them reads it (see README, Configuration).
SECRETS = {"ADMIN_TOKEN": ["producer"], "READ_TOKEN": ["producer"], "WEBHOOK_URL": list(WORKERS),
           "AGE_IDENTITY": ["consumer"], "OFFSITE_ACCESS_KEY_ID": ["consumer"], "OFFSITE_SECRET_ACCESS_KEY": ["consumer"]}


class DeployError(Exception):
    """A problem the user can fix, said in one message."""


# -- the deploy file ----------------------------------------------------------------------------

@dataclass
class Database:
    name: str
    database_id: str
    database_name: str
    gzip: bool = False
    verify: bool = True
    recipients: list[str] = field(default_factory=list)

    @property
    def binding(self) -> str:
        return "DB_" + self.name.upper().replace("-", "_")

    def entry(self):
        """Its `DATABASES` entry: the binding alone, or the binding with the options that differ
        from the defaults (no gzip, verified, not encrypted)."""
        options = {}
        if self.gzip:
            options["gzip"] = True
        if not self.verify:
            options["verify"] = False
        if self.recipients:
            options["recipients"] = self.recipients
        return {"binding": self.binding, **options} if options else self.binding


@dataclass
class DeployFile:
    plan: str
    databases: list[Database]
    vars: dict[str, str]
    secrets: list[str]
    account_id: str | None


def read_deploy_file(path: Path, plans: dict) -> DeployFile:
    if not path.exists():
        raise DeployError(f"{path} does not exist: copy deploy.example.toml to {path.name} and list your databases")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise DeployError(f"{path}: not valid TOML: {e}") from e
    unknown = set(data) - DEPLOY_FIELDS
    if unknown:
        raise DeployError(f"{path}: unknown field(s) {sorted(unknown)}; use {sorted(DEPLOY_FIELDS)}")
    plan = data.get("plan", "paid")
    if plan not in plans:
        raise DeployError(f"{path}: plan must be one of {sorted(plans)}, not {plan!r}")
    databases = []
    for name, options in (data.get("databases") or {}).items():
        if not DATABASE_NAME.match(name):
            raise DeployError(f"{path}: database name {name!r} must be 1-64 characters of a-z, 0-9, '-' or '_'")
        if not isinstance(options, dict) or set(options) - DATABASE_OPTIONS:
            raise DeployError(f"{path}: [databases.{name}] takes {sorted(DATABASE_OPTIONS)}")
        database_id = str(options.get("database_id", ""))
        if not UUID.match(database_id):
            raise DeployError(f"{path}: [databases.{name}] needs database_id, the UUID `npx wrangler d1 list` shows")
        recipients = options.get("recipients", [])
        if not isinstance(recipients, list) or not all(isinstance(r, str) and r.startswith("age1") for r in recipients):
            raise DeployError(f"{path}: [databases.{name}] recipients must be a list of age public keys (age1...)")
        for flag in ("gzip", "verify"):
            if not isinstance(options.get(flag, True), bool):
                raise DeployError(f"{path}: [databases.{name}] {flag} must be true or false")
        databases.append(Database(name, database_id, str(options.get("database_name", name)),
                                  options.get("gzip", False), options.get("verify", True), recipients))
    if not databases:
        raise DeployError(f"{path}: list at least one database to back up ([databases.<name>] with its database_id)")
    bindings = [d.binding for d in databases]
    if len(set(bindings)) != len(bindings):
        raise DeployError(f"{path}: two database names give the same binding ({bindings}); rename one")
    variables = data.get("vars") or {}
    if not all(isinstance(v, str) for v in variables.values()):
        raise DeployError(f"{path}: [vars] values must be strings, as in wrangler.toml")
    if DATABASES_VAR in variables:
        raise DeployError(f"{path}: list databases as [databases.<name>] tables, not in [vars]")
    optional = data.get("secrets", [])
    if not isinstance(optional, list) or not all(isinstance(s, str) and s in SECRETS for s in optional):
        raise DeployError(f"{path}: secrets must be a list of some of {sorted(SECRETS)}")
    account = data.get("account_id")
    if account is not None and not re.match(r"^[0-9a-f]{32}$", str(account)):
        raise DeployError(f"{path}: account_id must be the 32 hex digits the dashboard shows")
    return DeployFile(plan, databases, variables, optional, account)


# -- the generated configs ----------------------------------------------------------------------

@dataclass
class Resources:
    """The account's ids of the resources the Workers bind (placeholders in a dry run)."""
    meta_id: str
    scratch_id: str


def resource_names() -> dict:
    """The names of the resources, from the checked-in configs: the code knows them too (the
    queues it consumes, the bucket its restore guide names), so they are not the user's to pick."""
    consumer = tomllib.loads(TEMPLATES["consumer"].read_text())
    d1 = {d["binding"]: d["database_name"] for d in consumer["d1_databases"]}
    queues = set()
    for worker in WORKERS:
        config = tomllib.loads(TEMPLATES[worker].read_text())
        q = config.get("queues", {})
        queues |= {p["queue"] for p in q.get("producers", [])} | {c["queue"] for c in q.get("consumers", [])}
        queues |= {c["dead_letter_queue"] for c in q.get("consumers", []) if "dead_letter_queue" in c}
    return {"meta": d1[META_BINDING], "scratch": d1[SCRATCH_BINDING],
            "bucket": consumer["r2_buckets"][0]["bucket_name"], "queues": sorted(queues)}


def generate(worker: str, deploy: DeployFile, plan_vars: dict, resources: Resources, out: Path) -> dict:
    """One Worker's deploy config: its checked-in config with the user's databases, the account's
    ids, the plan's and the user's vars; paths made relative to where it is written."""
    template_path = TEMPLATES[worker]
    config = tomllib.loads(template_path.read_text())
    here = out / worker

    def relative(path: str) -> str:
        return os.path.relpath((template_path.parent / path).resolve(), here.resolve())

    config["main"] = relative(config["main"])
    local_databases = set()
    variables = dict(config.get("vars", {}))
    if DATABASES_VAR in variables:
        local_databases = {e if isinstance(e, str) else e["binding"] for e in variables[DATABASES_VAR].values()}
    d1 = []
    for binding in config.get("d1_databases", []):
        if binding["binding"] in local_databases:
            continue  # the local stack's seeded databases: replaced by the user's below
        binding = dict(binding)
        if binding["binding"] == META_BINDING:
            binding["database_id"] = resources.meta_id
        elif binding["binding"] == SCRATCH_BINDING:
            binding["database_id"] = resources.scratch_id
        if "migrations_dir" in binding:
            binding["migrations_dir"] = relative(binding["migrations_dir"])
        d1.append(binding)
    if DATABASES_VAR in variables:
        variables[DATABASES_VAR] = {d.name: d.entry() for d in deploy.databases}
        d1 += [{"binding": d.binding, "database_name": d.database_name, "database_id": d.database_id}
               for d in deploy.databases]
    variables.update(plan_vars)
    variables.update(deploy.vars)
    config["vars"] = variables
    config["d1_databases"] = d1
    if "ALERT_EMAIL" in variables:
        config["send_email"] = [{"name": SEND_EMAIL}]
    if deploy.account_id:
        config["account_id"] = deploy.account_id
    config["workers_dev"] = True
    return config


def write_configs(deploy: DeployFile, plans: dict, resources: Resources, out: Path) -> dict[str, Path]:
    paths = {}
    for worker in WORKERS:
        config = generate(worker, deploy, plans[deploy.plan].get(worker, {}), resources, out)
        path = out / worker / "wrangler.jsonc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("// Generated by scripts/deploy.py from " + TEMPLATES[worker].relative_to(ROOT).as_posix()
                        + " and the deploy file: do not edit.\n" + json.dumps(config, indent=2) + "\n")
        paths[worker] = path
    return paths


def read_generated(path: Path) -> dict:
    return json.loads("\n".join(line for line in path.read_text().splitlines() if not line.startswith("//")))


# -- what the code reads ------------------------------------------------------------------------

FUNCTION = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?fn\s+(\w+)", re.M)
CONST = re.compile(r'(?:pub\s+)?const\s+(\w+)\s*:\s*&str\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*;')
BINDING_USE = re.compile(r"bindings::([A-Z_][A-Z0-9_]*)")
ENV_CALL = re.compile(r"env\.(d1|bucket|queue|send_email|secret|var|object_var)\(\s*([^)]*?)\s*\)")
CALL = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\(")


@dataclass
class Reads:
    """The bindings a Worker's code can reach: resources by name, whether it reads the user's
    databases through the DATABASES var, and the secrets it reads by name."""
    resources: set[str] = field(default_factory=set)
    databases: bool = False
    secrets: set[str] = field(default_factory=set)


def functions(paths) -> dict[str, list[str]]:
    """Every function's text by name, over the given Rust files (a name defined twice keeps
    both texts: whoever calls it may reach either)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        text = path.read_text()
        starts = [(m.start(), m.group(1)) for m in FUNCTION.finditer(text)]
        for i, (start, name) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            found.setdefault(name, []).append(text[start:end])
    return found


def binding_constants() -> dict[str, str]:
    """`bindings::NAME` -> the binding's name, from platform/src/lib.rs (and the one constant it
    takes from shared)."""
    text = BINDINGS_MODULE.read_text()
    constants = dict(CONST.findall(text))
    for name, source in re.findall(r"pub const (\w+): &str = shared::(\w+(?:::\w+)*);", text):
        module, constant = source.rsplit("::", 1)
        shared_text = (ROOT / "shared/src" / (module.replace("::", "/") + ".rs")).read_text()
        constants[name] = dict(CONST.findall(shared_text))[constant]
    return constants


def code_reads(worker: str) -> Reads:
    """What `worker` reads: its own crate's functions, and every platform function they call,
    transitively (by name: an over-approximation, never an under-approximation)."""
    constants = binding_constants()
    own_files = sorted(CRATES[worker].rglob("*.rs"))
    local_constants = {k: v for path in own_files for k, v in CONST.findall(path.read_text())}
    platform = functions(sorted(PLATFORM.rglob("*.rs")))
    reads = Reads()
    seen: set[str] = set()
    pending = ["\n".join(path.read_text() for path in own_files)]
    while pending:
        text = pending.pop()
        for name in BINDING_USE.findall(text):
            if name not in constants:
                raise DeployError(f"the code uses bindings::{name}, which platform/src/lib.rs does not define")
            reads.resources.add(constants[name])
        for method, argument in ENV_CALL.findall(text):
            literal = re.fullmatch(r'"([A-Za-z_][A-Za-z0-9_]*)"', argument)
            if method == "secret" and literal:
                reads.secrets.add(literal.group(1))
            elif method in ("var", "object_var", "secret"):
                continue  # vars: read by Settings, each with its default; checked at run time
            elif literal:
                reads.resources.add(literal.group(1))
            elif argument in local_constants:
                reads.resources.add(local_constants[argument])
            elif argument.startswith("crate::bindings::") or argument.startswith("bindings::"):
                continue  # counted by BINDING_USE
            elif method == "d1":
                reads.databases = True  # a configured database's binding, from DATABASES
            else:
                raise DeployError(f"cannot tell which binding env.{method}({argument}) reads in {worker}'s code")
        for called in set(CALL.findall(text)) - seen:
            if called in platform:
                seen.add(called)
                pending += platform[called]
    return reads


def declared(config: dict) -> set[str]:
    names = {d["binding"] for d in config.get("d1_databases", [])}
    names |= {b["binding"] for b in config.get("r2_buckets", [])}
    names |= {q["binding"] for q in config.get("queues", {}).get("producers", [])}
    names |= {s["name"] for s in config.get("send_email", [])}
    return names


def check_bindings(configs: dict[str, dict]) -> list[str]:
    """Every binding each Worker's code reads is declared in its generated config; every queue
    sent to has exactly one consumer."""
    problems = []
    for worker, config in configs.items():
        reads = code_reads(worker)
        has = declared(config)
        for name in sorted(reads.resources - has):
            if name == SEND_EMAIL and "ALERT_EMAIL" not in config.get("vars", {}):
                continue  # asked for only with ALERT_EMAIL (Settings::check_bindings)
            problems.append(f"{worker}: the code reads the binding {name}, which its generated config does not declare")
        if reads.databases:
            entries = config.get("vars", {}).get(DATABASES_VAR)
            if not entries:
                problems.append(f"{worker}: the code reads the databases of the DATABASES var, which its config lacks")
            for name, entry in (entries or {}).items():
                binding = entry if isinstance(entry, str) else entry["binding"]
                if binding not in {d["binding"] for d in config.get("d1_databases", [])}:
                    problems.append(f"{worker}: database {name!r} is bound as {binding}, which is no D1 binding of its config")
    consumers: dict[str, list[str]] = {}
    for worker, config in configs.items():
        for c in config.get("queues", {}).get("consumers", []):
            consumers.setdefault(c["queue"], []).append(worker)
    for worker, config in configs.items():
        for p in config.get("queues", {}).get("producers", []):
            if len(consumers.get(p["queue"], [])) != 1:
                problems.append(f"{worker} sends to queue {p['queue']}, which has {len(consumers.get(p['queue'], []))} "
                                f"consumers (it needs exactly one)")
    return problems


def check_scratch(consumer_config: dict) -> list[str]:
    """scripts/check-config.py's check of VERIFY_DB, on the generated consumer config."""
    spec = importlib.util.spec_from_file_location("check_config", ROOT / "scripts/check-config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.clashes(consumer_config)


# -- bundles ------------------------------------------------------------------------------------

def wrangler(*args: str, capture: bool = True, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*WRANGLER, *args], cwd=ROOT, text=True, input=input,
                            capture_output=capture, env={**os.environ, "WRANGLER_SEND_METRICS": "false"})
    if check and result.returncode != 0:
        output = (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:]
        raise DeployError(f"wrangler {' '.join(args)} failed (exit {result.returncode}):\n{output}")
    return result


def bundle(worker: str, config_path: Path) -> Path:
    """`wrangler deploy --dry-run`: the exact upload, bundled from the built */build/ output."""
    outdir = config_path.parent / "bundle"
    wrangler("deploy", "--dry-run", "--outdir", str(outdir), "-c", str(config_path))
    if not any(outdir.iterdir()):
        raise DeployError(f"{worker}: wrangler deploy --dry-run wrote nothing to {outdir}")
    return outdir


def gzip_size(outdir: Path) -> tuple[int, int]:
    """The upload's size and its gzip-compressed size (what the Workers size limit counts)."""
    files = [p for p in sorted(outdir.rglob("*")) if p.is_file() and p.suffix not in (".map", ".md")]
    raw = sum(p.stat().st_size for p in files)
    return raw, sum(len(gzip.compress(p.read_bytes(), compresslevel=9, mtime=0)) for p in files)


def bundle_digest(config_path: Path, outdir: Path) -> str:
    h = hashlib.sha256(config_path.read_bytes())
    for p in sorted(outdir.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(outdir).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def check_all(paths: dict[str, Path], plan: dict) -> dict[str, Path]:
    """Bundles and checks every Worker; exits naming every failed check. Returns the bundles."""
    configs = {worker: read_generated(path) for worker, path in paths.items()}
    problems = check_bindings(configs) + [f"consumer: {p}" for p in check_scratch(configs["consumer"])]
    limit = plan["limits"]["bundle_gzip_mib"] * 1024 * 1024
    bundles = {}
    for worker, path in paths.items():
        bundles[worker] = bundle(worker, path)
        raw, packed = gzip_size(bundles[worker])
        print(f"  {worker:<9} {raw / 1024:9.1f} KiB, gzip {packed / 1024:8.1f} KiB "
              f"(limit {plan['limits']['bundle_gzip_mib']} MiB: {100 * packed / limit:4.1f}%)")
        if packed > limit:
            problems.append(f"{worker}: the bundle is {packed} bytes gzip-compressed, over the plan's "
                            f"{plan['limits']['bundle_gzip_mib']} MiB")
    if problems:
        raise DeployError("the generated configuration fails its checks:\n  " + "\n  ".join(problems))
    print(f"  every binding the code reads is declared; every queue has one consumer; bundles within the limit")
    return bundles


# -- the account --------------------------------------------------------------------------------

QUEUE_TABLE_HEADER = {"id", "name", "jurisdiction", "created_on", "modified_on", "producers", "consumers"}


def ensure_resources(names: dict) -> Resources:
    """Creates what the account lacks, nothing else; returns the D1 ids."""
    def d1_ids():
        return {d["name"]: d["uuid"] for d in json.loads(wrangler("d1", "list", "--json").stdout)}

    ids = d1_ids()
    for name in (names["meta"], names["scratch"]):
        if name in ids:
            print(f"  D1 {name}: exists ({ids[name]})")
        else:
            print(f"  D1 {name}: creating")
            wrangler("d1", "create", name, capture=False)
    ids = d1_ids() if not {names["meta"], names["scratch"]} <= set(ids) else ids
    buckets = set(re.findall(r"^name:\s+(\S+)", wrangler("r2", "bucket", "list").stdout, flags=re.M))
    if names["bucket"] in buckets:
        print(f"  R2 {names['bucket']}: exists")
    else:
        print(f"  R2 {names['bucket']}: creating")
        wrangler("r2", "bucket", "create", names["bucket"], capture=False)
    # `queues list` prints a table a page at a time: its cells' words, page after page, until
    # a page adds none (past the last page) or every queue was seen.
    queues: set[str] = set()
    for page in range(1, 1000):
        listed = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9_-]*", wrangler("queues", "list", "--page", str(page)).stdout))
        new_words = listed - queues - QUEUE_TABLE_HEADER
        queues |= listed
        if not new_words or set(names["queues"]) <= queues:
            break
    for queue in names["queues"]:
        if queue in queues:
            print(f"  queue {queue}: exists")
        else:
            print(f"  queue {queue}: creating")
            wrangler("queues", "create", queue, capture=False)
    return Resources(meta_id=ids[names["meta"]], scratch_id=ids[names["scratch"]])


def check_databases_exist(deploy: DeployFile) -> None:
    listed = {d["uuid"]: d["name"] for d in json.loads(wrangler("d1", "list", "--json").stdout)}
    for d in deploy.databases:
        if d.database_id not in listed:
            raise DeployError(f"database {d.name}: no D1 database {d.database_id} in this account (`npx wrangler d1 list`)")
        if listed[d.database_id] != d.database_name:
            d.database_name = listed[d.database_id]  # the account's name for it, for wrangler's output


def required_secrets(deploy: DeployFile) -> dict[str, list[str]]:
    """The secrets each Worker should have, by what the deploy file configures."""
    names = ["ADMIN_TOKEN", *deploy.secrets]
    if any(d.recipients for d in deploy.databases):
        names.append("AGE_IDENTITY")
    if "OFFSITE" in deploy.vars:
        names += ["OFFSITE_ACCESS_KEY_ID", "OFFSITE_SECRET_ACCESS_KEY"]
    wanted: dict[str, list[str]] = {worker: [] for worker in WORKERS}
    for name in names:
        for worker in SECRETS[name]:
            if name not in wanted[worker]:
                wanted[worker].append(name)
    return wanted


def shown(path: Path) -> str:
    """A path as the user would type it from the checkout."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ensure_secrets(worker: str, config_path: Path, wanted: list[str], values: dict[str, str]) -> None:
    existing = {s["name"] for s in json.loads(wrangler("secret", "list", "--format", "json", "-c", str(config_path)).stdout)}
    for name in wanted:
        if name in existing:
            print(f"  {worker}: secret {name} is set")
            continue
        if name not in values:
            if not sys.stdin.isatty():
                raise DeployError(f"{worker} has no secret {name}: run `make deploy` in a terminal to be asked, or "
                                  f"`npx wrangler secret put {name} -c {shown(config_path)}`")
            hint = " (empty: generate one)" if name in ("ADMIN_TOKEN", "READ_TOKEN") else " (empty: skip)"
            value = getpass.getpass(f"  {name} for {worker}{hint}: ").strip()
            if not value and name in ("ADMIN_TOKEN", "READ_TOKEN"):
                value = random_secrets.token_urlsafe(32)
                print(f"  generated {name}: {value}   (keep it: it is not shown again)")
            values[name] = value
        if values[name]:
            wrangler("secret", "put", name, "-c", str(config_path), input=values[name] + "\n")
            print(f"  {worker}: secret {name} set")
        else:
            print(f"  {worker}: secret {name} skipped")


def deploy_workers(paths: dict[str, Path], bundles: dict[str, Path], out: Path, force: bool) -> None:
    state_path = out / "deployed.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    for worker in WORKERS:
        digest = bundle_digest(paths[worker], bundles[worker])
        if state.get(worker) == digest and not force:
            print(f"  {worker}: unchanged since its last deploy from here (FORCE=1 deploys it again)")
            continue
        print(f"  {worker}: deploying")
        wrangler("deploy", "-c", str(paths[worker]), capture=False)
        state[worker] = digest
        state_path.write_text(json.dumps(state, indent=2) + "\n")


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=ROOT / "deploy.toml")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--force", action="store_true", help="deploy every Worker even when unchanged")
    args = parser.parse_args(argv)
    out = (args.out or ROOT / "target" / ("deploy-dry-run" if args.dry_run else "deploy")).resolve()
    try:
        plans = tomllib.loads(PLANS.read_text())
        deploy = read_deploy_file(args.file, plans)
        names = resource_names()
        print(f"{'Checking' if args.dry_run else 'Deploying'} {len(deploy.databases)} database(s) on the "
              f"{deploy.plan} plan from {args.file}; generated configs in {out}")
        if deploy.account_id:
            os.environ["CLOUDFLARE_ACCOUNT_ID"] = deploy.account_id
        if args.dry_run:
            # Placeholders: a dry run reads nothing from an account.
            resources = Resources(meta_id="00000000-0000-4000-8000-00000000000a",
                                  scratch_id="00000000-0000-4000-8000-00000000000b")
        else:
            print("Resources:")
            check_databases_exist(deploy)
            resources = ensure_resources(names)
        paths = write_configs(deploy, plans, resources, out)
        print("Bundles (wrangler deploy --dry-run):")
        bundles = check_all(paths, plans[deploy.plan])
        if args.dry_run:
            print("Dry run: nothing was created or deployed.")
            return 0
        print("Migrations:")
        wrangler("d1", "migrations", "apply", names["meta"], "--remote", "-c", str(paths["producer"]), capture=False)
        print("Workers:")
        deploy_workers(paths, bundles, out, args.force)
        print("Secrets:")
        values: dict[str, str] = {}
        for worker, wanted in required_secrets(deploy).items():
            ensure_secrets(worker, paths[worker], wanted, values)
        print("Done.")
        return 0
    except DeployError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
