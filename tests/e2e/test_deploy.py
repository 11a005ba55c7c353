"""`make deploy` (scripts/deploy.py) without an account: the configs it generates from a deploy
file, the checks that must fail on a config the code cannot run with, and the account steps
against a simulated wrangler (what exists is read, only what is missing is created, a second
run changes nothing). `make test` also runs `make deploy DRY_RUN=1` itself, the real bundles."""

import copy
import importlib.util
import io
import json
import re
import sys
import tomllib
import uuid

import pytest

from stack import ROOT

spec = importlib.util.spec_from_file_location("deploy", ROOT / "scripts/deploy.py")
deploy = sys.modules["deploy"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deploy)

PLANS = tomllib.loads((ROOT / "deploy/plans.toml").read_text())
EXAMPLE = ROOT / "deploy.example.toml"
PLACEHOLDERS = deploy.Resources(meta_id="00000000-0000-4000-8000-00000000000a", scratch_id="00000000-0000-4000-8000-00000000000b")


def generated(tmp_path, deploy_file=EXAMPLE, resources=PLACEHOLDERS):
    parsed = deploy.read_deploy_file(deploy_file, PLANS)
    paths = deploy.write_configs(parsed, PLANS, resources, tmp_path)
    return parsed, {worker: deploy.read_generated(path) for worker, path in paths.items()}


def test_the_example_generates_configs_that_pass_every_check(tmp_path):
    parsed, configs = generated(tmp_path)
    assert deploy.check_bindings(configs) == [] and deploy.check_scratch(configs["consumer"]) == []
    producer, consumer, archiver = configs["producer"], configs["consumer"], configs["archiver"]
    # The user's databases, the same in both Workers that read them, and none of the local seeds.
    entries = {d.name: d.entry() for d in parsed.databases}
    assert producer["vars"]["DATABASES"] == consumer["vars"]["DATABASES"] == entries
    assert entries == {"chinook": "DB_CHINOOK", "shop": {"binding": "DB_SHOP", "gzip": True},
                       "audit-log": {"binding": "DB_AUDIT_LOG", "gzip": True, "verify": False,
                                     "recipients": ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]}}
    for config in (producer, consumer):
        d1 = {d["binding"]: d["database_id"] for d in config["d1_databases"]}
        assert {d.binding: d.database_id for d in parsed.databases}.items() <= d1.items()
        assert "DB_HOSTILE" not in d1 and "DB_BULK" not in d1
    assert {d["binding"]: d["database_id"] for d in consumer["d1_databases"]}["VERIFY_DB"] == PLACEHOLDERS.scratch_id
    assert all(d["database_id"] == PLACEHOLDERS.meta_id for c in configs.values() for d in c["d1_databases"] if d["binding"] == "META")
    # The plan's vars (the example is on the free plan), then the file's own vars on all three.
    assert parsed.plan == "free"
    for worker in deploy.WORKERS:
        assert PLANS["free"][worker].items() <= configs[worker]["vars"].items(), worker
        assert parsed.vars.items() <= configs[worker]["vars"].items(), worker
    # Paths still lead to the built Workers and the migrations, from where the configs are.
    for worker, config in configs.items():
        template = deploy.TEMPLATES[worker]
        assert (tmp_path / worker / config["main"]).resolve() == (template.parent / tomllib.loads(template.read_text())["main"]).resolve()
    (meta,) = [d for d in producer["d1_databases"] if d["binding"] == "META"]
    assert (tmp_path / "producer" / meta["migrations_dir"]).resolve() == ROOT / "migrations"


def test_the_binding_check_finds_what_each_worker_reads():
    reads = {worker: deploy.code_reads(worker) for worker in deploy.WORKERS}
    assert reads["archiver"].resources >= {"META", "BACKUPS", "ARCHIVE_QUEUE", "OFFSITE_QUEUE"}
    assert not reads["archiver"].databases and "RESTORE_QUEUE" not in reads["archiver"].resources
    assert reads["consumer"].resources >= {"META", "BACKUPS", "BACKUP_QUEUE", "RESTORE_QUEUE", "OFFSITE_QUEUE",
                                           "DEAD_LETTERS", "VERIFY_DB"}
    assert reads["producer"].resources >= {"META", "BACKUPS", "BACKUP_QUEUE", "RESTORE_QUEUE", "ARCHIVE_QUEUE", "OFFSITE_QUEUE"}
    assert reads["consumer"].databases and reads["producer"].databases
    assert {"ADMIN_TOKEN", "READ_TOKEN"} <= reads["producer"].secrets
    # Every secret the code reads by name is one make deploy knows where to put.
    assert set().union(*(r.secrets for r in reads.values())) <= set(deploy.SECRETS)


def without(configs, worker, section, predicate):
    changed = copy.deepcopy(configs)
    holder = changed[worker]
    *path, last = section
    for key in path:
        holder = holder[key]
    holder[last] = [item for item in holder[last] if not predicate(item)]
    return changed


def test_a_config_the_code_cannot_run_with_fails_the_check(tmp_path):
    _, configs = generated(tmp_path)
    cases = [
        (without(configs, "producer", ["queues", "producers"], lambda q: q["binding"] == "RESTORE_QUEUE"),
         "producer: the code reads the binding RESTORE_QUEUE"),
        (without(configs, "archiver", ["r2_buckets"], lambda b: True), "archiver: the code reads the binding BACKUPS"),
        (without(configs, "consumer", ["d1_databases"], lambda d: d["binding"] == "VERIFY_DB"),
         "consumer: the code reads the binding VERIFY_DB"),
        (without(configs, "consumer", ["d1_databases"], lambda d: d["binding"] == "DB_SHOP"),
         "consumer: database 'shop' is bound as DB_SHOP"),
        (without(configs, "consumer", ["queues", "consumers"], lambda q: q["queue"] == "offsite-jobs"),
         "sends to queue offsite-jobs, which has 0 consumers"),
    ]
    for broken, message in cases:
        problems = deploy.check_bindings(broken)
        assert any(message in p for p in problems), (message, problems)
    twice = copy.deepcopy(configs)
    twice["archiver"]["queues"]["consumers"].append({"queue": "restore-jobs"})
    assert any("restore-jobs, which has 2 consumers" in p for p in deploy.check_bindings(twice))
    # Email: the binding is asked for only with ALERT_EMAIL, and the generator adds it then.
    emailing = copy.deepcopy(configs)
    for config in emailing.values():
        config["vars"]["ALERT_EMAIL"] = '{"from": "b@example.com", "to": "o@example.com"}'
    assert any("the code reads the binding SEND_EMAIL" in p for p in deploy.check_bindings(emailing))
    file = tmp_path / "email.toml"
    file.write_text(EXAMPLE.read_text().replace("[vars]\n", "[vars]\nALERT_EMAIL = '{\"from\": \"b@example.com\", \"to\": \"o@example.com\"}'\n"))
    _, with_email = generated(tmp_path / "email", file)
    assert all(c["send_email"] == [{"name": "SEND_EMAIL"}] for c in with_email.values())
    assert deploy.check_bindings(with_email) == []


def test_a_scratch_database_that_is_a_source_is_refused(tmp_path):
    parsed = deploy.read_deploy_file(EXAMPLE, PLANS)
    clash = deploy.Resources(meta_id=PLACEHOLDERS.meta_id, scratch_id=parsed.databases[0].database_id)
    _, configs = generated(tmp_path, resources=clash)
    (problem,) = deploy.check_scratch(configs["consumer"])
    assert "VERIFY_DB has the same database_id" in problem


@pytest.mark.parametrize("text,message", [
    ('plan = "enterprise"\n[databases.a]\ndatabase_id = "%s"\n' % uuid.uuid4(), "plan must be one of"),
    ('plan = "free"\n', "list at least one database"),
    ('[databases.a]\ndatabase_id = "not-a-uuid"\n', "needs database_id"),
    ('[databases.A]\ndatabase_id = "%s"\n' % uuid.uuid4(), "database name 'A'"),
    ('[databases.a]\ndatabase_id = "%s"\ngzp = true\n' % uuid.uuid4(), "[databases.a] takes"),
    ('[databases.a]\ndatabase_id = "%s"\nrecipients = ["ssh-ed25519 AAAA"]\n' % uuid.uuid4(), "age public keys"),
    ('[databases.a-b]\ndatabase_id = "%s"\n[databases.a_b]\ndatabase_id = "%s"\n' % (uuid.uuid4(), uuid.uuid4()), "same binding"),
    ('secrets = ["PASSWORD"]\n[databases.a]\ndatabase_id = "%s"\n' % uuid.uuid4(), "secrets must be a list of some of"),
    ('[vars]\nEXPORT_MAX_QUERIES = 50\n[databases.a]\ndatabase_id = "%s"\n' % uuid.uuid4(), "values must be strings"),
    ('databases = 3\nplan = \n', "not valid TOML"),
    ('region = "eu"\n[databases.a]\ndatabase_id = "%s"\n' % uuid.uuid4(), "unknown field(s) ['region']"),
])
def test_a_bad_deploy_file_is_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    with pytest.raises(deploy.DeployError, match=re.escape(message)):
        deploy.read_deploy_file(path, PLANS)
    assert deploy.main(["--file", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 1
    with pytest.raises(deploy.DeployError, match="does not exist"):
        deploy.read_deploy_file(tmp_path / "missing.toml", PLANS)


class FakeAccount:
    """wrangler against an account, as far as make deploy asks it: D1 databases, buckets, queues
    (listed two to a page, as a table), secrets and deployments; every call recorded."""

    def __init__(self, databases=(), queues=(), buckets=()):
        self.d1 = {name: str(uuid.uuid4()) for name in databases}
        self.queues = list(queues)
        self.buckets = set(buckets)
        self.secrets: dict[str, set] = {}
        self.calls: list[tuple] = []

    def __call__(self, *args, capture=True, input=None, check=True):
        self.calls.append(args)
        out = ""
        match args:
            case ("d1", "list", "--json"):
                out = json.dumps([{"uuid": i, "name": n, "created_at": "2026-01-01"} for n, i in self.d1.items()])
            case ("d1", "create", name):
                self.d1[name] = str(uuid.uuid4())
            case ("r2", "bucket", "list"):
                out = "Listing buckets...\n" + "\n\n".join(f"name:           {b}\ncreation_date:  2026-01-01T00:00:00.000Z"
                                                            for b in sorted(self.buckets))
            case ("r2", "bucket", "create", name):
                self.buckets.add(name)
            case ("queues", "list", "--page", page):
                rows = self.queues[(int(page) - 1) * 2:int(page) * 2]
                out = "┌────┬──────┬────────────┐\n│ id │ name │ created_on │\n" + "".join(
                    f"│ {uuid.uuid4().hex} │ {q} │ 2026-01-0{i}T00:00:00Z │\n" for i, q in enumerate(rows, 1)) + "└────┘\n"
            case ("queues", "create", name):
                self.queues.append(name)
            case ("secret", "list", "--format", "json", "-c", config):
                out = json.dumps([{"name": n, "type": "secret_text"} for n in sorted(self.secrets.get(config, ()))])
            case ("secret", "put", name, "-c", config):
                assert input and input.endswith("\n")
                self.secrets.setdefault(config, set()).add(name)
            case ("deploy", "-c", config):
                pass
            case _:
                raise AssertionError(f"unexpected wrangler call {args}")
        return deploy.subprocess.CompletedProcess(args, 0, out, "")

    def creations(self):
        return [c for c in self.calls if c[1] == "create" or c[:3] == ("r2", "bucket", "create")]


def test_resources_are_read_and_only_the_missing_ones_created(monkeypatch):
    names = deploy.resource_names()
    assert names["queues"] == sorted(["archive-jobs", "backup-jobs", "backup-jobs-dlq", "offsite-jobs", "restore-jobs"])
    assert (names["meta"], names["scratch"], names["bucket"]) == ("d1-backup-meta", "d1-backup-verify", "d1-backups")
    # Some of it exists already (and other things of the account's own).
    account = FakeAccount(databases=["d1-backup-meta", "shop"], queues=["app-events", "backup-jobs", "other"])
    monkeypatch.setattr(deploy, "wrangler", account)
    first = deploy.ensure_resources(names)
    assert sorted(account.creations()) == sorted([("d1", "create", "d1-backup-verify"), ("r2", "bucket", "create", "d1-backups")]
                                                 + [("queues", "create", q) for q in names["queues"] if q != "backup-jobs"])
    assert (first.meta_id, first.scratch_id) == (account.d1["d1-backup-meta"], account.d1["d1-backup-verify"])
    # The second run reads everything (queues over several pages) and creates nothing.
    account.calls.clear()
    second = deploy.ensure_resources(names)
    assert account.creations() == [] and second == first
    assert ("queues", "list", "--page", "2") in account.calls


def test_unchanged_workers_are_not_deployed_again_and_secrets_set_once(tmp_path, monkeypatch):
    account = FakeAccount()
    monkeypatch.setattr(deploy, "wrangler", account)
    paths, bundles = {}, {}
    for worker in deploy.WORKERS:
        paths[worker] = tmp_path / worker / "wrangler.jsonc"
        bundles[worker] = tmp_path / worker / "bundle"
        bundles[worker].mkdir(parents=True)
        paths[worker].write_text("{}")
        (bundles[worker] / "shim.js").write_text(f"// {worker}")
    deploy.deploy_workers(paths, bundles, tmp_path, force=False)
    assert [c for c in account.calls if c[0] == "deploy"] == [("deploy", "-c", str(paths[w])) for w in ("consumer", "archiver", "producer")]
    account.calls.clear()
    deploy.deploy_workers(paths, bundles, tmp_path, force=False)
    assert account.calls == []
    (bundles["archiver"] / "shim.js").write_text("// archiver, changed")
    deploy.deploy_workers(paths, bundles, tmp_path, force=False)
    assert account.calls == [("deploy", "-c", str(paths["archiver"]))]
    # Secrets: the missing ones are put, the present ones left alone; without a terminal a
    # missing one is an error that says how to set it.
    parsed = deploy.read_deploy_file(EXAMPLE, PLANS)
    wanted = deploy.required_secrets(parsed)
    assert wanted == {"producer": ["ADMIN_TOKEN", "READ_TOKEN", "WEBHOOK_URL"], "consumer": ["WEBHOOK_URL", "AGE_IDENTITY"],
                      "archiver": ["WEBHOOK_URL"]}
    values = {"ADMIN_TOKEN": "a" * 32, "READ_TOKEN": "r" * 32, "WEBHOOK_URL": "https://hooks.example/x", "AGE_IDENTITY": ""}
    for worker, names in wanted.items():
        deploy.ensure_secrets(worker, paths[worker], names, values)
    assert account.secrets[str(paths["producer"])] == {"ADMIN_TOKEN", "READ_TOKEN", "WEBHOOK_URL"}
    assert account.secrets[str(paths["consumer"])] == {"WEBHOOK_URL"}, "an empty answer skips an optional secret"
    account.calls.clear()
    for worker, names in wanted.items():
        if worker != "consumer":
            deploy.ensure_secrets(worker, paths[worker], names, {})
    assert [c[0:2] for c in account.calls] == [("secret", "list")] * 2
    monkeypatch.setattr(deploy.sys, "stdin", io.StringIO())
    with pytest.raises(deploy.DeployError, match="consumer has no secret AGE_IDENTITY.*wrangler secret put AGE_IDENTITY"):
        deploy.ensure_secrets("consumer", paths["consumer"], wanted["consumer"], {})


def test_a_bundle_over_the_plan_limit_fails_the_check(tmp_path):
    """The real bundles (wrangler deploy --dry-run over the built Workers), against a limit
    they exceed: the check names the Worker and its size."""
    parsed = deploy.read_deploy_file(EXAMPLE, PLANS)
    paths = deploy.write_configs(parsed, PLANS, PLACEHOLDERS, tmp_path)
    tiny = {"limits": {"bundle_gzip_mib": 0.25}}
    with pytest.raises(deploy.DeployError) as failed:
        deploy.check_all(paths, tiny)
    assert re.search(r"consumer: the bundle is \d+ bytes gzip-compressed, over the plan's 0.25 MiB", str(failed.value))
    raw, packed = deploy.gzip_size(paths["consumer"].parent / "bundle")
    assert 0 < packed < raw and packed > 0.25 * 1024 * 1024
